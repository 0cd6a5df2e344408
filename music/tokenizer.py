"""MIDI <-> token ids for the music model: a performance-style event vocabulary, built on mido.

Vocabulary, in id order (default config: 2,501 ids, so every id fits in uint16):

    0        <sep>     document separator and padding (the shared shard format separates documents with 0)
    1, 2     <start>, <end>
    shift:k  advance time by k steps (k = 1..max_shift_steps); longer gaps chain several shifts
    tempo:b  tempo bin b (log-spaced, 20..320 BPM), emitted at the start and when the bin changes
    inst:i   the instrument of the note events that follow: GM program 0..127, or 128 = drums
             (everything on MIDI channel 10, whatever its program); a "program change" in the stream
    skip:k   the next note-off closes the (k+1)-th oldest open note of its key, not the oldest (chains)
    on:p:v   note-on of pitch p with velocity bin v, for the current instrument
    off:p    note-off of pitch p, for the current instrument

With `conditioning`, ids after those (old ids keep their meaning) name what a piece is, in a
header right after `<start>`: `cond:inst:i` for each instrument that plays (sorted), `cond:tempo:b`
(the bin the piece spends the most time in), `cond:key:k` (estimated, see `estimate_key`), then
`cond:end`. A field may be missing (`prepare` leaves some out of training copies, so a request
may name any of them); the header carries no events and the decoder skips it.

Time is absolute (steps of `time_step_ms`) or, with `beat_relative`, counted in 1/`steps_per_beat`
of a quarter note, in which case the tempo tokens carry the seconds.

Reading a MIDI file (`midi_to_notes`): types 0 and 1; every track and channel; the tempo map; a
channel's program at each note-on decides the note's instrument; note-offs pair with note-ons of
the same track, channel and key, oldest first. The sustain pedal (CC 64) is applied, not
tokenized: a key released while the pedal is down sounds until the pedal is lifted or the key is
struck again, and that sounding end is the note's end (`sustain=False` keeps the key-up time).
Dropped: pitch bend, other controllers, key and time signatures, track names, lyrics.

Time limits (a few bytes of MIDI can hold hours of time, which would be millions of time
shifts): a silence longer than `max_silence` (4 s; 4 beats when beat-relative) is shortened to
it, whether before the first note, between notes or after the last; a stretch in which a note
sounds is never shortened. A piece still longer than `max_length` (an hour) is refused (MidiError).
Files with a tempo of 0 are refused too.

Round trip: decode(encode(f)) holds every note of `shorten_silences(f)` with its instrument and
pitch, its onset and offset within one time step, and its velocity in the same bin. Overlapping
notes of the same instrument and key survive exactly thanks to `skip`; a note shorter than a step
comes back one step long, and the decoded file rounds ticks toward the inside of each note, so
that this stays within one step too.
"""

from __future__ import annotations

import io
import json
import math
import os
from bisect import bisect_right
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mido

from eaglefinch.rwkv_core.files import atomic_path, write_json_atomic

DRUMS = 128  # instrument id of MIDI channel 10
DRUM_CHANNEL = 9
N_INSTRUMENTS = 129
DEFAULT_TEMPO = 500_000  # microseconds per quarter note: MIDI's default, 120 BPM
MIN_BPM, MAX_BPM = 20.0, 320.0
MAX_SKIP = 4
ABSOLUTE_TICKS_PER_BEAT = 3840  # decoded files: a tick is at most 0.8 ms, even at 20 BPM
FORMAT_NAME = "eaglefinch-midi-events"
FORMAT_VERSION = 1
# keys of the conditioning header: 0-11 major on C..B, 12-23 minor
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B",
             "Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm")
# Krumhansl and Kessler's probe-tone ratings of the 12 degrees above the tonic (1982), as music21 has them
MAJOR_PROFILE = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
MINOR_PROFILE = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


class MidiError(ValueError):
    """A file or object that is not usable MIDI (unreadable, truncated, unsupported type)."""


@dataclass(frozen=True)
class Note:
    """One sounding note. Times are in seconds (or beats where a function says so).

    `instrument` is a General MIDI program 0..127, or `DRUMS` (128) for channel 10.
    """

    instrument: int
    pitch: int
    start: float
    end: float
    velocity: int


@dataclass(frozen=True)
class Header:
    """What a piece is conditioned on: the conditioning header's fields; empty or None = not given.

    `instruments`: sorted instrument ids (GM program 0..127, `DRUMS`); `tempo_bin`: a tempo bin of
    the tokenizer (`MidiTokenizer.tempo_bin`); `key`: an index into `KEY_NAMES`.
    """

    instruments: tuple[int, ...] = ()
    tempo_bin: int | None = None
    key: int | None = None


def estimate_key(durations) -> int | None:
    """The key of a piece from how long each pitch class sounds (12 numbers, C first): Krumhansl-Schmuckler.

    Each of the 24 keys scores the Pearson correlation between the durations and its profile
    (`MAJOR_PROFILE` or `MINOR_PROFILE` rotated to the tonic); the best wins, the first in
    `KEY_NAMES` order among equals. None when all 12 are equal (no pitched note, say): no key to tell.
    """
    mean = sum(durations) / 12
    spread = [d - mean for d in durations]
    norm = math.sqrt(sum(x * x for x in spread))
    if norm == 0:
        return None
    best_key, best_score = None, -math.inf
    for mode, profile in enumerate((MAJOR_PROFILE, MINOR_PROFILE)):
        profile_mean = sum(profile) / 12
        profile_spread = [w - profile_mean for w in profile]
        profile_norm = math.sqrt(sum(x * x for x in profile_spread))
        for tonic in range(12):
            score = sum(spread[(tonic + degree) % 12] * profile_spread[degree] for degree in range(12)) / (norm * profile_norm)
            if score > best_score:
                best_key, best_score = 12 * mode + tonic, score
    return best_key


@dataclass(frozen=True)
class TokenizerConfig:
    """Settings that fix the vocabulary; saved with the model (see `MidiTokenizer.to_dict`)."""

    time_step_ms: float = 8.0  # absolute-time step
    beat_relative: bool = False  # count time in beats instead of milliseconds
    steps_per_beat: int = 12  # beat-relative step: 1/12 quarter note covers 16ths and triplets
    max_shift_steps: int = 125  # largest single time shift (125 x 8 ms = 1 s)
    velocity_bins: int = 16
    tempo_bins: int = 64  # 4.5 % apart between 20 and 320 BPM
    sustain: bool = True  # apply the sustain pedal to note ends
    # time limits, in seconds (beats when beat_relative): a few bytes of MIDI can hold hours of time
    max_silence: float = 4.0  # longer stretches without a sounding note are shortened to this
    max_length: float = 3600.0  # a longer piece (after shortening silences) is refused
    conditioning: bool = False  # a header of instruments, tempo and key opens every piece (ids after the events')

    def __post_init__(self):
        for name in ("time_step_ms", "max_silence", "max_length"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("steps_per_beat", "max_shift_steps", "tempo_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.velocity_bins <= 127:
            raise ValueError(f"velocity_bins must be in 1..127, got {self.velocity_bins}")

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerConfig:
        """Build a config from `to_dict` output; unknown keys are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown tokenizer config keys: {sorted(unknown)}")
        return cls(**data)


class MidiTokenizer:
    """Encodes MIDI files to token ids and decodes ids to `mido.MidiFile` (see the module docstring).

    Attributes:
        config: the TokenizerConfig.
        vocab_size: number of ids; every id is below it.
        ranges: token kind ("special", "shift", "tempo", "inst", "skip", "on", "off", and with
            conditioning "cond_inst", "cond_tempo", "cond_key", "cond_end") -> its ids, e.g. to mask
            kinds while sampling.
    """

    SEP = 0
    START = 1
    END = 2

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()
        cfg = self.config
        sizes = {
            "special": 3,
            "shift": cfg.max_shift_steps,
            "tempo": cfg.tempo_bins,
            "inst": N_INSTRUMENTS,
            "skip": MAX_SKIP,
            "on": 128 * cfg.velocity_bins,
            "off": 128,
        }
        if cfg.conditioning:
            sizes |= {"cond_inst": N_INSTRUMENTS, "cond_tempo": cfg.tempo_bins, "cond_key": len(KEY_NAMES), "cond_end": 1}
        self.ranges: dict[str, range] = {}
        start = 0
        for kind, size in sizes.items():
            self.ranges[kind] = range(start, start + size)
            start += size
        self.vocab_size = start
        if self.vocab_size > 65536:
            raise ValueError(f"vocabulary of {self.vocab_size} ids does not fit in uint16; use fewer bins or shifts")
        # velocity bins of equal width over 1..127; a bin decodes to its middle velocity
        self._velocity_bin = [0] + [(v - 1) * cfg.velocity_bins // 127 for v in range(1, 128)]
        members = defaultdict(list)
        for v in range(1, 128):
            members[self._velocity_bin[v]].append(v)
        self._bin_velocity = [members[b][len(members[b]) // 2] for b in range(cfg.velocity_bins)]
        if cfg.beat_relative:
            self._step = 1.0 / cfg.steps_per_beat  # beats
            self._ticks_per_beat = cfg.steps_per_beat * max(1, 480 // cfg.steps_per_beat)
        else:
            self._step = cfg.time_step_ms / 1000.0  # seconds
            self._ticks_per_beat = ABSOLUTE_TICKS_PER_BEAT

    # -- bins ---------------------------------------------------------------------------------

    def velocity_bin(self, velocity: int) -> int:
        """The velocity bin (0..velocity_bins-1) of a MIDI velocity 1..127."""
        return self._velocity_bin[velocity]

    def bin_velocity(self, bin_index: int) -> int:
        """The velocity a bin decodes to: the middle of the bin."""
        return self._bin_velocity[bin_index]

    def tempo_bin(self, bpm: float) -> int:
        """The tempo bin of a tempo in beats per minute (clamped to 20..320 BPM)."""
        n = self.config.tempo_bins
        if n == 1:
            return 0
        x = (math.log(bpm) - math.log(MIN_BPM)) / (math.log(MAX_BPM) - math.log(MIN_BPM))
        return min(n - 1, max(0, round(x * (n - 1))))

    def bin_tempo(self, bin_index: int) -> float:
        """The tempo in BPM a tempo bin decodes to."""
        n = self.config.tempo_bins
        if n == 1:
            return 60e6 / DEFAULT_TEMPO
        return math.exp(math.log(MIN_BPM) + bin_index / (n - 1) * (math.log(MAX_BPM) - math.log(MIN_BPM)))

    # -- encode -------------------------------------------------------------------------------

    def encode(self, source, *, transpose: int = 0, tempo_factor: float = 1.0) -> list[int]:
        """Token ids of a MIDI file (path or `mido.MidiFile`), from `<start>` to `<end>`.

        `transpose` shifts every non-drum pitch by that many semitones (a ValueError if a pitch
        would leave 0..127); `tempo_factor` plays the piece that many times faster. With
        `conditioning`, the header after `<start>` is that of the piece so changed (`header_of`).
        Raises MidiError when the source is not readable MIDI of type 0 or 1.
        """
        if not tempo_factor > 0:
            raise ValueError(f"tempo_factor must be positive, got {tempo_factor}")
        midi = read_midi(source)
        notes, tempos = _parse(midi, self.config.sustain)
        # beat-relative time is tempo-free: the tempo factor only changes the tempo tokens
        time_of = _tick_clock(tempos, midi.ticks_per_beat, self.config.beat_relative, tempo_factor)

        # silences are shortened before anything is quantized: the count of time shifts stays bounded
        shorten = _silence_shortener([(time_of(start), time_of(end)) for _, _, start, end, _ in notes],
                                     self.config.max_silence)

        def shortened_time(tick):
            return shorten(time_of(tick))

        quantized = []  # (instrument, pitch, start_step, end_step, velocity)
        for inst, pitch, start, end, velocity in notes:
            if inst != DRUMS:
                pitch += transpose
                if not 0 <= pitch <= 127:
                    raise ValueError(f"transposing by {transpose} moves a pitch out of 0..127")
            quantized.append((inst, pitch, *self._quantize_note(shortened_time(start), shortened_time(end)), velocity))
        tempo_at = {}
        for tick, tempo in tempos:
            tempo_at[self._quantize(shortened_time(tick))] = self.tempo_bin(60e6 / tempo * tempo_factor)
        self._check_length(max([end for *_, end, _ in quantized] + list(tempo_at)), midi.filename or "MidiFile")
        ids = self._events_to_ids(quantized, tempo_at)
        if self.config.conditioning:
            ids[1:1] = self.header_ids(self._header(notes, tempos, midi.ticks_per_beat, transpose, tempo_factor))
        return ids

    # -- the conditioning header ----------------------------------------------------------------

    def header_of(self, source, *, transpose: int = 0, tempo_factor: float = 1.0) -> Header:
        """The header of a MIDI file (path or MidiFile) as `encode` writes it, with the same arguments:
        its instruments, the tempo bin it spends the most time in, its key (`estimate_key` over the
        durations in beats; None without a pitched note). Any tokenizer config computes it.
        """
        midi = read_midi(source)
        notes, tempos = _parse(midi, self.config.sustain)
        return self._header(notes, tempos, midi.ticks_per_beat, transpose, tempo_factor)

    def _header(self, notes, tempos, ticks_per_beat, transpose, tempo_factor) -> Header:
        """The Header of parsed notes (instrument, pitch, start tick, end tick, velocity) and tempo map."""
        end = max((note[3] for note in notes), default=0)
        # time in each bin, as ticks x microseconds per beat (in proportion to seconds); in order of
        # first use, so that ties go to the earlier tempo
        time_in_bin = defaultdict(float)
        for (tick, tempo), next_tick in zip(tempos, [t for t, _ in tempos[1:]] + [end]):
            time_in_bin[self.tempo_bin(60e6 / tempo * tempo_factor)] += max(0, min(next_tick, end) - tick) * tempo
        main_bin = max(time_in_bin, key=time_in_bin.get)  # the tempo at tick 0 when nothing sounds
        durations = [0.0] * 12
        for inst, pitch, start, stop, _ in notes:
            if inst != DRUMS:
                durations[(pitch + transpose) % 12] += (stop - start) / ticks_per_beat
        return Header(tuple(sorted({note[0] for note in notes})), main_bin, estimate_key(durations))

    def header_ids(self, header: Header) -> list[int]:
        """The ids of a header, `cond:end` included (a conditioning tokenizer's; ValueError otherwise)."""
        if not self.config.conditioning:
            raise ValueError("this tokenizer has no conditioning tokens (TokenizerConfig.conditioning is off)")
        ids = [self.ranges["cond_inst"][i] for i in sorted(set(header.instruments))]
        if header.tempo_bin is not None:
            ids.append(self.ranges["cond_tempo"][header.tempo_bin])
        if header.key is not None:
            ids.append(self.ranges["cond_key"][header.key])
        return ids + [self.ranges["cond_end"][0]]

    def _header_span(self, ids: list[int]) -> tuple[int, int | None]:
        """(start, stop) of the header in ids: it starts right after `<start>` (leading `<sep>`s
        skipped); stop is past its `cond:end`, or None when no complete header is there.

        Raises ValueError when ids (after leading `<sep>`s) do not begin with `<start>`."""
        first = next((i for i, t in enumerate(ids) if t != self.SEP), len(ids))
        if first == len(ids) or ids[first] != self.START:
            raise ValueError("a header follows <start>, and these ids do not begin with it")
        if not self.config.conditioning:
            return first + 1, None
        cond = range(self.ranges["cond_inst"].start, self.ranges["cond_end"].stop)
        stop = first + 1
        while stop < len(ids) and ids[stop] in cond and ids[stop] != self.ranges["cond_end"][0]:
            stop += 1
        return first + 1, (stop + 1 if stop < len(ids) and ids[stop] == self.ranges["cond_end"][0] else None)

    def read_header(self, ids) -> Header | None:
        """The header of a token sequence (leading `<sep>`s, `<start>`, the header), or None when it has
        none (no `cond:end` closes it). Raises ValueError when the ids do not begin with `<start>`."""
        ids = [int(t) for t in ids]
        start, stop = self._header_span(ids)
        if stop is None:
            return None
        instruments, tempo_bin, key = [], None, None
        for token in ids[start:stop - 1]:
            kind, value = self._kind(token)
            if kind == "cond_inst":
                instruments.append(value)
            elif kind == "cond_tempo":
                tempo_bin = value
            else:
                key = value
        return Header(tuple(sorted(set(instruments))), tempo_bin, key)

    def with_header(self, ids, header: Header) -> list[int]:
        """`ids` with their header replaced by `header` (or, with none, `header` inserted after `<start>`)."""
        ids = [int(t) for t in ids]
        start, stop = self._header_span(ids)
        return ids[:start] + self.header_ids(header) + ids[stop or start:]

    def _check_length(self, last_step: int, name: str) -> None:
        """Raise MidiError when a piece ending at `last_step` is longer than `max_length`."""
        cfg = self.config
        if last_step * self._step > cfg.max_length:
            unit = "beats" if cfg.beat_relative else "s"
            raise MidiError(f"{name}: {last_step * self._step:.0f} {unit} of music (silences shortened to "
                            f"{cfg.max_silence:g} {unit}) is longer than the {cfg.max_length:g} {unit} a piece may last")

    def _quantize(self, t: float) -> int:
        # the same monotone rounding for onsets and offsets, so abutting notes stay abutting
        return math.floor(t / self._step + 0.5)

    def _quantize_note(self, start: float, end: float) -> tuple[int, int]:
        """(start, end) in steps, each within one step of the input, and at least one step apart."""
        s, e = self._quantize(start), self._quantize(end)
        if s == e:
            if end / self._step >= s:
                e += 1
            else:
                s -= 1
        return s, e

    def _events_to_ids(self, notes: list[tuple], tempo_at: dict[int, int]) -> list[int]:
        offs_at, ons_at = defaultdict(list), defaultdict(list)
        for index, (_, _, start, end, _) in enumerate(notes):
            ons_at[start].append(index)
            offs_at[end].append(index)
        ids = [self.START]
        now, instrument, tempo = 0, None, None
        open_notes = defaultdict(list)  # (instrument, pitch) -> note indices, oldest first
        for step in sorted(set(offs_at) | set(ons_at) | set(tempo_at)):
            ids += self._shift_ids(step - now)
            now = step
            if step in tempo_at and tempo_at[step] != tempo:
                tempo = tempo_at[step]
                ids.append(self.ranges["tempo"][tempo])
            by_instrument = defaultdict(lambda: ([], []))
            for index in offs_at[step]:
                by_instrument[notes[index][0]][0].append(index)
            for index in ons_at[step]:
                by_instrument[notes[index][0]][1].append(index)
            for inst in sorted(by_instrument):
                offs, ons = by_instrument[inst]
                if inst != instrument:
                    instrument = inst
                    ids.append(self.ranges["inst"][inst])
                # offs before ons: a key released and struck again in the same step
                offs.sort(key=lambda i: (notes[i][1], open_notes[inst, notes[i][1]].index(i)))
                for index in offs:
                    pitch = notes[index][1]
                    queue = open_notes[inst, pitch]
                    ids += _chain(queue.index(index), MAX_SKIP, self.ranges["skip"])
                    ids.append(self.ranges["off"][pitch])
                    queue.remove(index)
                # among notes struck together, the one ending first is the oldest: no skip needed
                ons.sort(key=lambda i: (notes[i][1], notes[i][3], notes[i][4]))
                for index in ons:
                    _, pitch, _, _, velocity = notes[index]
                    ids.append(self.ranges["on"][pitch * self.config.velocity_bins + self.velocity_bin(velocity)])
                    open_notes[inst, pitch].append(index)
        ids.append(self.END)
        return ids

    def _shift_ids(self, steps: int) -> list[int]:
        return _chain(steps, self.config.max_shift_steps, self.ranges["shift"])

    # -- decode -------------------------------------------------------------------------------

    def decode(self, ids) -> mido.MidiFile:
        """A type-1 `mido.MidiFile` from token ids (any iterable of ints).

        Lenient, so that sampled sequences always give valid MIDI: decoding stops at `<end>` or
        at a `<sep>` after the first token (leading ones, as in a prompt, are skipped), `<start>`
        and the conditioning header are ignored, a note-off with no open note is ignored, notes still
        open at the end close at the last time reached (at least one step after their onset).
        Raises ValueError for an id outside the vocabulary.
        """
        cfg = self.config
        now, instrument, skip = 0, 0, 0
        tempo_steps = [(0, 60e6 / DEFAULT_TEMPO)]  # (step, bpm)
        open_notes = defaultdict(deque)  # (instrument, pitch) -> deque of (start step, velocity)
        notes = []  # (instrument, pitch, start step, end step, velocity)
        started = False
        for token in ids:
            token = int(token)
            kind, value = self._kind(token)
            if token == self.SEP and not started:
                continue  # separators before the piece, as in a prompt cut from the shard stream
            started = True
            if kind != "skip" and kind != "off":
                skip = 0
            if kind == "special":
                if token in (self.END, self.SEP):
                    break
            elif kind == "shift":
                now += value + 1
            elif kind == "tempo":
                if tempo_steps[-1][0] == now:
                    tempo_steps.pop()
                tempo_steps.append((now, self.bin_tempo(value)))
            elif kind == "inst":
                instrument = value
            elif kind.startswith("cond_"):
                pass  # the header: what the piece was asked to be, not an event
            elif kind == "skip":
                skip += value + 1
            elif kind == "on":
                pitch, velocity_bin = divmod(value, cfg.velocity_bins)
                open_notes[instrument, pitch].append((now, self.bin_velocity(velocity_bin)))
            else:
                queue = open_notes[instrument, value]
                if queue:
                    start, velocity = queue[min(skip, len(queue) - 1)]
                    del queue[min(skip, len(queue) - 1)]
                    notes.append((instrument, value, start, max(now, start + 1), velocity))
                skip = 0
        for (inst, pitch), queue in open_notes.items():
            notes += [(inst, pitch, start, max(now, start + 1), velocity) for start, velocity in queue]
        return self._write(notes, tempo_steps)

    def _kind(self, token: int) -> tuple[str, int]:
        for kind, ids in self.ranges.items():
            if token in ids:
                return kind, token - ids.start
        raise ValueError(f"token id {token} is outside the vocabulary 0..{self.vocab_size - 1}")

    def _write(self, notes: list[tuple], tempo_steps: list[tuple[int, float]]) -> mido.MidiFile:
        """Steps -> ticks through the decoded tempo map, then a MIDI file."""
        tpb = self._ticks_per_beat
        tempos = [round(60e6 / bpm) for _, bpm in tempo_steps]
        if self.config.beat_relative:
            ticks_per_step = tpb // self.config.steps_per_beat

            def tick_of(step, rounding=round):
                return step * ticks_per_step  # exact: no rounding needed

            tempo_ticks = [(tick_of(step), tempo) for (step, _), tempo in zip(tempo_steps, tempos)]
        else:
            # place each tempo change where a reader of this file will put it, so errors never add up
            tempo_map = _TempoMap([(0, tempos[0])], tpb)
            for (step, _), tempo in zip(tempo_steps[1:], tempos[1:]):
                tempo_map.append(tempo_map.tick(step * self._step), tempo)
            tempo_ticks = list(zip(tempo_map.ticks, tempo_map.tempos))

            def tick_of(step, rounding=round):
                return tempo_map.tick(step * self._step, rounding)

        # a note's ticks are rounded toward its inside, never outward: a note that encoding had to
        # lengthen to one step (a shorter one) then stays within one step of the original
        tick_notes = []
        for inst, pitch, start, end, velocity in notes:
            start_tick = tick_of(start, _round_up)
            tick_notes.append((inst, pitch, start_tick, max(tick_of(end, _round_down), start_tick + 1), velocity))
        return _notes_to_midi(tick_notes, tempo_ticks, tpb)

    # -- helpers for training and evaluation ----------------------------------------------------

    def count_notes(self, ids) -> int:
        """How many notes a token sequence holds (its note-on tokens): the denominator of loss per note."""
        on = self.ranges["on"]
        return sum(1 for token in ids if int(token) in on)

    def token_name(self, token: int) -> str:
        """A readable name of a token id, e.g. 'shift:3', 'inst:40', 'on:60:v9', 'off:60'."""
        kind, value = self._kind(int(token))
        if kind == "special":
            return ("<sep>", "<start>", "<end>")[value]
        if kind in ("shift", "skip"):
            return f"{kind}:{value + 1}"
        if kind == "inst":
            return "inst:drums" if value == DRUMS else f"inst:{value}"
        if kind == "on":
            return f"on:{value // self.config.velocity_bins}:v{value % self.config.velocity_bins}"
        if kind == "cond_inst":
            return "cond:inst:drums" if value == DRUMS else f"cond:inst:{value}"
        if kind == "cond_tempo":
            return f"cond:tempo:{value}"
        if kind == "cond_key":
            return f"cond:key:{KEY_NAMES[value]}"
        if kind == "cond_end":
            return "cond:end"
        return f"{kind}:{value}"

    def to_dict(self) -> dict:
        """Everything needed to rebuild this tokenizer; store it in the model checkpoint."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> MidiTokenizer:
        """Rebuild a tokenizer from `to_dict` output, checking that the vocabulary is the same."""
        if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT_NAME} v{FORMAT_VERSION} tokenizer: {data.get('format')} v{data.get('version')}")
        tokenizer = cls(TokenizerConfig.from_dict(data["config"]))
        if tokenizer.vocab_size != data["vocab_size"]:
            raise ValueError(f"vocab size {tokenizer.vocab_size} differs from the saved {data['vocab_size']}")
        return tokenizer

    def save(self, path: Path | str) -> None:
        """Write `to_dict()` as JSON, atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> MidiTokenizer:
        """Read a tokenizer written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


# -- reading MIDI ----------------------------------------------------------------------------------


def read_midi(source) -> mido.MidiFile:
    """A `mido.MidiFile` from a path, the bytes of a file or a MidiFile, checked to be of type 0 or 1 with a metrical clock
    and no tempo of 0.

    Raises MidiError naming the file and the problem for a missing, unreadable, truncated or unusable file.
    """
    if isinstance(source, mido.MidiFile):
        midi, name = source, source.filename or "MidiFile"
    else:
        is_bytes = isinstance(source, (bytes, bytearray))
        name = "the MIDI data" if is_bytes else str(source)
        if not is_bytes and not os.path.isfile(name):
            raise MidiError(f"{name}: no such file")
        try:
            midi = mido.MidiFile(file=io.BytesIO(source)) if is_bytes else mido.MidiFile(name)
        except Exception as exc:  # mido raises OSError, EOFError, ValueError, KeyError, ... for bad bytes
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, EOFError):
                reason = "file ends in the middle of a chunk (truncated?)"
            raise MidiError(f"{name}: not a readable MIDI file: {reason}") from exc
    if midi.type not in (0, 1):
        raise MidiError(f"{name}: MIDI type {midi.type} is not supported (only types 0 and 1)")
    if not 0 < midi.ticks_per_beat < 0x8000:
        raise MidiError(f"{name}: time division {midi.ticks_per_beat} is SMPTE or invalid; need ticks per beat")
    for track_index, track in enumerate(midi.tracks):
        if any(message.type == "set_tempo" and message.tempo == 0 for message in track):
            raise MidiError(f"{name}: tempo 0 in track {track_index} (a quarter note of 0 microseconds): "
                            f"no time can be computed")
    return midi


def midi_to_notes(source, sustain: bool = True, beats: bool = False) -> list[Note]:
    """The notes of a MIDI file (path or MidiFile), times in seconds (quarter notes if `beats`), sorted by onset.

    Reading rules as in the module docstring; raises MidiError for unusable input.
    """
    midi = read_midi(source)
    notes, tempos = _parse(midi, sustain)
    time_of = _tick_clock(tempos, midi.ticks_per_beat, beats)
    result = [Note(i, p, time_of(s), time_of(e), v) for i, p, s, e, v in notes]
    return sorted(result, key=lambda n: (n.start, n.instrument, n.pitch, n.end, n.velocity))


def match_notes(expected: list[Note], actual: list[Note], time_tolerance: float, velocity_bin=None):
    """Pair up the notes of two lists: the round-trip check.

    Two notes may pair when instrument and pitch are equal, onsets and offsets each differ by at
    most `time_tolerance`, and, if `velocity_bin` (a function velocity -> bin) is given, their
    velocities fall in the same bin. The pairing is a maximum matching, so doubled and
    overlapping notes pair correctly. Returns (pairs, unmatched expected, unmatched actual).
    """

    def compatible(a: Note, b: Note) -> bool:
        if abs(a.start - b.start) > time_tolerance or abs(a.end - b.end) > time_tolerance:
            return False
        return velocity_bin is None or velocity_bin(a.velocity) == velocity_bin(b.velocity)

    groups = defaultdict(lambda: ([], []))
    for note in expected:
        groups[note.instrument, note.pitch][0].append(note)
    for note in actual:
        groups[note.instrument, note.pitch][1].append(note)
    pairs, missing, extra = [], [], []
    for wanted, found in groups.values():
        found.sort(key=lambda n: n.start)
        found_starts = [n.start for n in found]
        candidates = []
        for note in wanted:
            lo = bisect_right(found_starts, note.start - time_tolerance - 1e-12)
            hi = bisect_right(found_starts, note.start + time_tolerance)
            candidates.append([j for j in range(lo, hi) if compatible(note, found[j])])
        owner = {}  # index in found -> index in wanted

        def augment(i: int, seen: set) -> bool:
            # Kuhn's augmenting path: take a free candidate, or move its owner to another one
            for j in candidates[i]:
                if j not in seen:
                    seen.add(j)
                    if j not in owner or augment(owner[j], seen):
                        owner[j] = i
                        return True
            return False

        for i in range(len(wanted)):
            augment(i, set())
        pairs += [(wanted[i], found[j]) for j, i in owner.items()]
        matched = set(owner.values())
        missing += [note for i, note in enumerate(wanted) if i not in matched]
        extra += [note for j, note in enumerate(found) if j not in owner]
    return pairs, missing, extra


def write_midi(midi: mido.MidiFile, path: Path | str) -> Path:
    """Save a MidiFile atomically (a temporary file in the same folder, then a rename). Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        midi.save(filename=str(tmp))
    return path


def _parse(midi: mido.MidiFile, sustain: bool) -> tuple[list[tuple], list[tuple[int, int]]]:
    """Notes as (instrument, pitch, start tick, end tick, velocity) and the tempo map [(tick, tempo)]."""
    events = []
    for track_index, track in enumerate(midi.tracks):
        tick = 0
        for message in track:
            tick += message.time
            events.append((tick, track_index, message))
    # stable sort: same-tick events keep track order, then file order, as mido.merge_tracks does
    events.sort(key=lambda e: (e[0], e[1]))
    end_tick = events[-1][0] if events else 0

    tempos = [(0, DEFAULT_TEMPO)]
    program = [0] * 16
    pedal_down = [False] * 16
    held = defaultdict(deque)  # (track, channel, pitch) -> keys down: (start, velocity, instrument)
    sustained = defaultdict(list)  # channel -> released keys the pedal keeps sounding
    notes = []

    def release_sustained(channel, tick, pitch=None):
        keep = []
        for note in sustained[channel]:
            if pitch is None or note[1] == pitch:
                notes.append((note[0], note[1], note[2], tick, note[3]))
            else:
                keep.append(note)
        sustained[channel] = keep

    for tick, track_index, message in events:
        kind = message.type
        if kind == "set_tempo":
            if tempos[-1][0] == tick:
                tempos.pop()
            tempos.append((tick, message.tempo))
        elif kind == "program_change":
            program[message.channel] = message.program
        elif kind == "control_change" and message.control == 64 and sustain:
            down = message.value >= 64
            if pedal_down[message.channel] and not down:
                release_sustained(message.channel, tick)
            pedal_down[message.channel] = down
        elif kind == "note_on" and message.velocity > 0:
            channel = message.channel
            release_sustained(channel, tick, message.note)  # striking a key again ends its pedalled note
            instrument = DRUMS if channel == DRUM_CHANNEL else program[channel]
            held[track_index, channel, message.note].append((tick, message.velocity, instrument))
        elif kind in ("note_on", "note_off"):
            queue = held[track_index, message.channel, message.note]
            if not queue:
                continue  # a note-off with no note-on: nothing to end
            start, velocity, instrument = queue.popleft()
            if pedal_down[message.channel]:
                sustained[message.channel].append((instrument, message.note, start, velocity))
            else:
                notes.append((instrument, message.note, start, tick, velocity))
    # notes never switched off end with the file
    for (_, _, pitch), queue in held.items():
        notes += [(instrument, pitch, start, end_tick, velocity) for start, velocity, instrument in queue]
    for channel in list(sustained):
        release_sustained(channel, end_tick)
    return notes, tempos


def _tick_clock(tempos: list[tuple[int, int]], ticks_per_beat: int, beats: bool, speed: float = 1.0):
    """A function tick -> time: quarter notes if `beats`, else seconds of the piece played `speed` times faster."""
    if beats:
        return lambda tick: tick / ticks_per_beat
    tempo_map = _TempoMap(tempos, ticks_per_beat)
    return lambda tick: tempo_map.seconds(tick) / speed


class _TempoMap:
    """Ticks <-> seconds for a tempo map [(tick, microseconds per quarter note)] that starts at tick 0."""

    def __init__(self, changes: list[tuple[int, int]], ticks_per_beat: int):
        self.ticks_per_beat = ticks_per_beat
        self.ticks, self.tempos, self.starts = [], [], []
        for tick, tempo in changes:
            self.append(tick, tempo)

    def append(self, tick: int, tempo: int) -> None:
        """Add a tempo change at `tick` (not before the last one); replaces a change at the same tick."""
        if self.ticks and self.ticks[-1] == tick:
            self.tempos[-1] = tempo
            return
        self.starts.append(self.seconds(tick) if self.ticks else 0.0)
        self.ticks.append(tick)
        self.tempos.append(tempo)

    def seconds(self, tick: int) -> float:
        i = bisect_right(self.ticks, tick) - 1
        return self.starts[i] + (tick - self.ticks[i]) * self.tempos[i] / (1e6 * self.ticks_per_beat)

    def tick(self, seconds: float, rounding=round) -> int:
        """The tick of a time in seconds: the nearest one, or as `rounding` (a function float -> int) says."""
        i = max(0, bisect_right(self.starts, seconds) - 1)
        return self.ticks[i] + rounding((seconds - self.starts[i]) * 1e6 * self.ticks_per_beat / self.tempos[i])


def _round_up(ticks: float) -> int:
    """The next tick up, unless `ticks` is a whole tick up to float error."""
    return math.ceil(ticks - 1e-6)


def _round_down(ticks: float) -> int:
    """The next tick down, unless `ticks` is a whole tick up to float error."""
    return math.floor(ticks + 1e-6)


# -- writing MIDI ----------------------------------------------------------------------------------


def _notes_to_midi(notes: list[tuple], tempo_ticks: list[tuple[int, int]], ticks_per_beat: int) -> mido.MidiFile:
    """A type-1 file: a tempo track, then one track per (channel, layer).

    Each melodic instrument gets a channel and a program change. With more than 15 of them,
    channels are reprogrammed, idle ones first; a program change only affects later note-ons, so
    this loses nothing unless more than 15 melodic instruments strike at the very same tick (a
    channel holds one program per tick). Overlapping notes of the same channel and key go to
    separate layer tracks, so that every reader pairs note-offs with the right note-ons.
    """
    melodic_channels = [c for c in range(16) if c != DRUM_CHANNEL]
    channel_program = {c: None for c in melodic_channels}
    channel_busy_until = {c: 0 for c in melodic_channels}
    channel_last_onset = {c: -1 for c in melodic_channels}
    layer_ends = defaultdict(list)  # (channel, pitch) -> end tick of the last note of each layer
    track_events = defaultdict(list)  # (channel, layer) -> (tick, order, message type, fields)
    for inst, pitch, start, end, velocity in sorted(notes, key=lambda n: (n[2], n[0], n[1], n[3])):
        if inst == DRUMS:
            channel = DRUM_CHANNEL
        else:
            channel = _pick_channel(inst, start, channel_program, channel_busy_until, channel_last_onset)
            if channel_program[channel] != inst:
                channel_program[channel] = inst
                track_events[channel, 0].append((start, 1, "program_change", dict(channel=channel, program=inst)))
            channel_busy_until[channel] = max(channel_busy_until[channel], end)
            channel_last_onset[channel] = start
        ends = layer_ends[channel, pitch]
        layer = next((i for i, e in enumerate(ends) if e <= start), len(ends))
        if layer == len(ends):
            ends.append(end)
        ends[layer] = end
        # at one tick: note-offs, then program changes, then note-ons
        track_events[channel, layer].append((end, 0, "note_off", dict(channel=channel, note=pitch)))
        track_events[channel, layer].append((start, 2, "note_on", dict(channel=channel, note=pitch, velocity=velocity)))

    midi = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    tempo_events = [(tick, 0, "set_tempo", dict(tempo=tempo)) for tick, tempo in tempo_ticks]
    midi.tracks.append(_to_track(tempo_events))
    for key in sorted(track_events):
        midi.tracks.append(_to_track(track_events[key]))
    return midi


def _pick_channel(inst: int, start: int, program: dict, busy_until: dict, last_onset: dict) -> int:
    """A channel for a note starting at `start`: one set to its program, else an unused one,
    else one with no note-on at `start` (idle longest, or freeing up first)."""
    for channel, current in program.items():
        if current == inst:
            return channel
    for channel, current in program.items():
        if current is None:
            return channel
    free_now = [c for c in busy_until if last_onset[c] < start] or list(busy_until)
    return min(free_now, key=lambda c: (busy_until[c], c))


def _to_track(events: list[tuple]) -> mido.MidiTrack:
    """A track from (tick, order at that tick, message type, message fields)."""
    track = mido.MidiTrack()
    now = 0
    for tick, _, kind, values in sorted(events, key=lambda e: (e[0], e[1])):
        message = mido.MetaMessage if kind == "set_tempo" else mido.Message
        track.append(message(kind, time=tick - now, **values))
        now = tick
    return track


def shorten_silences(notes: list[Note], longest: float) -> list[Note]:
    """The notes with every silence longer than `longest` shortened to `longest`, as `encode` does
    (with `TokenizerConfig.max_silence`): a silence is a stretch where no note sounds, from time 0
    to the first onset or between notes. Times in any unit (seconds, or beats)."""
    shorten = _silence_shortener([(n.start, n.end) for n in notes], longest)
    return [Note(n.instrument, n.pitch, shorten(n.start), shorten(n.end), n.velocity) for n in notes]


def _silence_shortener(spans: list[tuple[float, float]], longest: float):
    """A function time -> time that shortens every silent stretch longer than `longest` to
    `longest`: a stretch where none of the (start, end) spans sounds, from time 0 to the first
    start, between spans, or after the last end. Times inside a cut stretch go to its new end."""
    cuts = []  # (silence start, silence end, steps removed before it), in time order
    removed, sounding_until = 0, 0
    for start, end in sorted(spans):
        if start - sounding_until > longest:
            cuts.append((sounding_until, start, removed))
            removed += start - sounding_until - longest
        sounding_until = max(sounding_until, end)
    cuts.append((sounding_until, math.inf, removed))
    cut_starts = [cut[0] for cut in cuts]

    def shorten(time: float) -> float:
        i = bisect_right(cut_starts, time) - 1
        if i < 0:
            return time
        silence_start, silence_end, removed_before = cuts[i]
        if time < silence_end:
            return min(time, silence_start + longest) - removed_before
        return time - removed_before - (silence_end - silence_start - longest)

    return shorten


def _chain(value: int, largest: int, ids: range) -> list[int]:
    """Token ids for a count split into chunks of at most `largest` (ids[k - 1] means k)."""
    full, rest = divmod(value, largest)
    return [ids[largest - 1]] * full + ([ids[rest - 1]] if rest else [])
