import io
import os
from collections import Counter

import mido
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eaglefinch.music import corpus
from eaglefinch.music.tokenizer import (
    DRUM_CHANNEL,
    DRUMS,
    MidiError,
    MidiTokenizer,
    Note,
    TokenizerConfig,
    match_notes,
    midi_to_notes,
    read_midi,
    shorten_silences,
    write_midi,
)

TOKENIZER = MidiTokenizer()
TOLERANCE = TOKENIZER.config.time_step_ms / 1000 + 1e-9  # the claim: onsets and offsets within one time step


def reread(midi: mido.MidiFile) -> mido.MidiFile:
    """The file as another program would see it: saved to bytes and parsed again by mido."""
    buffer = io.BytesIO()
    midi.save(file=buffer)
    buffer.seek(0)
    return mido.MidiFile(file=buffer)


def assert_same_notes(expected, actual, tolerance, velocity_bin):
    pairs, missing, extra = match_notes(expected, actual, tolerance, velocity_bin)
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert len(pairs) == len(expected)


def round_trip(source, tokenizer=TOKENIZER, expected=None) -> list[int]:
    """Encode, decode, write and read back; every note must come back (in beats when beat-relative)."""
    source = read_midi(source)  # parse a file once (mido is slow)
    beats = tokenizer.config.beat_relative
    original = midi_to_notes(source, tokenizer.config.sustain, beats=beats)
    if expected is not None:  # the reader itself against notes written out by hand
        assert_same_notes(expected, original, 1e-9, lambda v: v)
    original = shorten_silences(original, tokenizer.config.max_silence)  # as encoding does
    ids = tokenizer.encode(source)
    back = midi_to_notes(reread(tokenizer.decode(ids)), tokenizer.config.sustain, beats=beats)
    tolerance = 1 / tokenizer.config.steps_per_beat + 1e-9 if beats else TOLERANCE
    assert_same_notes(original, back, tolerance, tokenizer.velocity_bin)
    return ids


def names(ids, tokenizer=TOKENIZER):
    return [tokenizer.token_name(i) for i in ids]


# -- vocabulary and config -------------------------------------------------------------------


def test_vocabulary_layout():
    tok = TOKENIZER
    assert tok.SEP == 0 and tok.token_name(0) == "<sep>"
    spans = sorted(tok.ranges.values(), key=lambda r: r.start)
    assert spans[0].start == 0 and spans[-1].stop == tok.vocab_size
    assert all(a.stop == b.start for a, b in zip(spans, spans[1:]))
    assert len({tok.token_name(i) for i in range(tok.vocab_size)}) == tok.vocab_size
    assert tok.vocab_size == 3 + 125 + 64 + 129 + 4 + 128 * 16 + 128
    with pytest.raises(ValueError, match="uint16"):
        MidiTokenizer(TokenizerConfig(max_shift_steps=70_000))


def test_velocity_bins_partition_the_midi_range():
    tok = TOKENIZER
    bins = [tok.velocity_bin(v) for v in range(1, 128)]
    assert bins == sorted(bins) and set(bins) == set(range(16))
    assert max(Counter(bins).values()) - min(Counter(bins).values()) <= 1  # equal widths
    for b in range(16):
        assert tok.velocity_bin(tok.bin_velocity(b)) == b


def test_tempo_bins_are_within_half_a_bin():
    tok = TOKENIZER
    ratio = (320 / 20) ** (1 / 63)
    for bpm in (20, 37.5, 60, 100, 120, 133.3, 200, 320):
        decoded = tok.bin_tempo(tok.tempo_bin(bpm))
        assert 1 / ratio**0.5 - 1e-9 <= decoded / bpm <= ratio**0.5 + 1e-9


def test_config_saves_and_loads(tmp_path, kit):
    config = TokenizerConfig(time_step_ms=10, beat_relative=True, steps_per_beat=8, velocity_bins=8)
    tok = MidiTokenizer(config)
    tok.save(tmp_path / "tok.json")
    loaded = MidiTokenizer.load(tmp_path / "tok.json")
    assert loaded.config == config and loaded.vocab_size == tok.vocab_size
    midi = kit.build([[kit.on(0, 60), kit.off(480, 60), kit.on(500, 61, 20), kit.off(900, 61)]])
    assert loaded.encode(midi) == tok.encode(midi)
    with pytest.raises(ValueError, match="unknown"):
        TokenizerConfig.from_dict({**config.to_dict(), "colour": "blue"})
    with pytest.raises(ValueError, match="vocab size"):
        MidiTokenizer.from_dict({**tok.to_dict(), "vocab_size": tok.vocab_size + 1})


# -- edge cases built with mido ----------------------------------------------------------------


def test_type0_with_tempo_change(kit):
    # 120 BPM (a tick is 1/960 s) until tick 960, then 240 BPM (1/1920 s)
    events = [kit.tempo(0, 120), kit.tempo(960, 240)]
    events += [kit.on(0, 60, 100), kit.off(480, 60), kit.on(480, 64, 30), kit.off(1440, 64)]
    events += [kit.on(960, 67, 127), kit.off(1920, 67), kit.on(1920, 72, 1), kit.off(1921, 72)]
    midi = kit.build([events], midi_type=0)
    expected = [
        Note(0, 60, 0.0, 0.5, 100),
        Note(0, 64, 0.5, 1.25, 30),
        Note(0, 67, 1.0, 1.5, 127),
        Note(0, 72, 1.5, 1.5 + 1 / 1920, 1),  # shorter than a step: comes back one step long
    ]
    ids = round_trip(midi, expected=expected)
    assert names(ids)[:3] == ["<start>", f"tempo:{TOKENIZER.tempo_bin(120)}", "inst:0"]
    assert f"tempo:{TOKENIZER.tempo_bin(240)}" in names(ids) and names(ids)[-1] == "<end>"


def test_tracks_channels_programs_and_drums(kit):
    tracks = [
        [kit.tempo(0, 100)],  # a beat is 0.6 s
        [kit.program(0, 0, 0), kit.on(0, 48), kit.off(960, 48)],
        [kit.program(0, 40, 1), kit.on(0, 76, 90, 1), kit.off(480, 76, 1), kit.on(480, 79, 60, 1), kit.off(960, 79, 1)],
        # channel 10 is drums, whatever its program
        [kit.program(0, 5, 9), kit.on(0, 36, 120, 9), kit.off(10, 36, 9), kit.on(240, 42, 70, 9), kit.off(250, 42, 9)],
        # a program change in the middle of a track changes the instrument of later notes
        [kit.program(0, 73, 2), kit.on(0, 72, 80, 2), kit.off(480, 72, 2), kit.program(960, 56, 2)]
        + [kit.on(960, 72, 80, 2), kit.off(1440, 72, 2)],
    ]
    expected = [
        Note(0, 48, 0.0, 1.2, 80),
        Note(40, 76, 0.0, 0.6, 90),
        Note(40, 79, 0.6, 1.2, 60),
        Note(DRUMS, 36, 0.0, 0.0125, 120),
        Note(DRUMS, 42, 0.3, 0.3125, 70),
        Note(73, 72, 0.0, 0.6, 80),
        Note(56, 72, 1.2, 1.8, 80),
    ]
    ids = round_trip(kit.build(tracks), expected=expected)
    assert {"inst:0", "inst:40", "inst:drums", "inst:73", "inst:56"} <= set(names(ids))


def test_overlapping_notes_of_one_key(kit):
    # all on channel 1 with one program: the tracks overlap on the same keys
    tracks = [
        # 60: a long note with a short one inside it (other track); 62: struck twice before release
        [kit.on(0, 60), kit.off(1920, 60), kit.on(0, 62), kit.on(240, 62, 30), kit.off(480, 62), kit.off(720, 62)]
        + [kit.on(0, 64), kit.off(2400, 64), kit.on(0, 67, 40), kit.off(960, 67)],
        [kit.on(480, 60, 110), kit.off(960, 60), kit.on(240, 64), kit.off(1920, 64), kit.on(0, 67, 110), kit.off(960, 67)],
        [kit.on(480, 64, 50), kit.off(960, 64)],
    ]
    s = 1 / 960  # seconds per tick at the default 120 BPM
    expected = [
        Note(0, 60, 0.0, 1920 * s, 80),
        Note(0, 60, 480 * s, 960 * s, 110),
        Note(0, 62, 0.0, 480 * s, 80),  # note-offs pair with the oldest note-on of their track
        Note(0, 62, 240 * s, 720 * s, 30),
        Note(0, 64, 0.0, 2400 * s, 80),
        Note(0, 64, 240 * s, 1920 * s, 80),
        Note(0, 64, 480 * s, 960 * s, 50),  # the innermost of three nested notes
        Note(0, 67, 0.0, 960 * s, 40),
        Note(0, 67, 0.0, 960 * s, 110),
    ]
    ids = round_trip(kit.build(tracks), expected=expected)
    assert "skip:2" in names(ids) and "skip:1" in names(ids)


def test_long_notes_and_silences(kit):
    # 120 BPM: 2.5 s of silence, a 3.7 s note, 3.5 s of silence; the largest shift is 1 s
    events = [kit.on(2400, 60), kit.off(5952, 60), kit.on(9312, 62), kit.off(9408, 62)]
    expected = [Note(0, 60, 2.5, 6.2, 80), Note(0, 62, 9.7, 9.8, 80)]
    ids = round_trip(kit.build([events]), expected=expected)
    assert names(ids).count("shift:125") >= 2 + 3 + 3


HOUR = 3600 * 960  # ticks at 120 BPM and 480 ticks a beat


def shift_total(ids, tokenizer=TOKENIZER) -> int:
    """The time steps the shift tokens of `ids` add up to."""
    return sum(i - tokenizer.ranges["shift"].start + 1 for i in ids if i in tokenizer.ranges["shift"])


def test_long_silences_are_shortened(kit):
    # 10 s of silence, a note, an hour of silence, a note held 6 s alone, a tempo change an hour later
    events = [kit.on(10 * 960, 60), kit.off(11 * 960, 60), kit.on(11 * 960 + HOUR, 62), kit.off(17 * 960 + HOUR, 62)]
    midi = kit.build([events + [kit.tempo(2 * HOUR, 60)]])
    ids = TOKENIZER.encode(midi)
    # every silence is cut to max_silence (4 s); a held note is not a silence
    assert TOKENIZER.config.max_silence == 4.0 and len(ids) < 40
    assert_same_notes([Note(0, 60, 4.0, 5.0, 80), Note(0, 62, 9.0, 15.0, 80)],
                      midi_to_notes(reread(TOKENIZER.decode(ids))), TOLERANCE, TOKENIZER.velocity_bin)
    assert shift_total(ids) * 0.008 == pytest.approx(19.0) and f"tempo:{TOKENIZER.tempo_bin(60)}" in names(ids)
    # beat-relative: 4 beats of silence at most (10 s at 120 BPM is 20 beats)
    beats = MidiTokenizer(TokenizerConfig(beat_relative=True))
    expected = [Note(0, 60, 4.0, 6.0, 80), Note(0, 62, 10.0, 22.0, 80)]
    assert_same_notes(expected, midi_to_notes(reread(beats.decode(beats.encode(midi))), beats=True), 1e-9, None)


def test_the_largest_gaps_a_midi_file_holds_give_few_tokens_or_an_error(kit, tmp_path):
    # delta times of 0x0FFFFFFF ticks (the largest a file can hold), one tick a beat, the slowest tempo:
    # 4.5e9 s between two events, which would be billions of time shifts
    longest, slowest = 0x0FFFFFFF, mido.MetaMessage("set_tempo", tempo=0xFFFFFF)
    silent = [(0, slowest), kit.on(0, 60), kit.off(1, 60), kit.on(1 + longest, 62), kit.off(2 + longest, 62)]
    held = [(0, slowest), kit.on(0, 60), kit.off(longest, 60)]
    for tokenizer in (TOKENIZER, MidiTokenizer(TokenizerConfig(beat_relative=True))):
        kit.build([silent], ticks_per_beat=1).save(tmp_path / "silent.mid")
        assert (tmp_path / "silent.mid").stat().st_size < 60
        assert len(tokenizer.encode(tmp_path / "silent.mid")) < 100
        kit.build([held], ticks_per_beat=1).save(tmp_path / "held.mid")
        with pytest.raises(MidiError, match="held.mid: .*longer than"):
            tokenizer.encode(tmp_path / "held.mid")


@pytest.mark.parametrize("sustain", [True, False])
def test_sustain_pedal(kit, sustain):
    events = [kit.pedal(0, True), kit.on(0, 60), kit.off(480, 60), kit.on(192, 62), kit.off(384, 62)]
    events += [kit.on(960, 62), kit.off(1152, 62), kit.pedal(1920, False), kit.on(2400, 64), kit.off(2880, 64)]
    if sustain:  # released keys sound until the pedal lifts, or until struck again
        expected = [Note(0, 60, 0, 2.0, 80), Note(0, 62, 0.2, 1.0, 80), Note(0, 62, 1.0, 2.0, 80)]
    else:
        expected = [Note(0, 60, 0, 0.5, 80), Note(0, 62, 0.2, 0.4, 80), Note(0, 62, 1.0, 1.2, 80)]
    expected.append(Note(0, 64, 2.5, 3.0, 80))
    round_trip(kit.build([events]), MidiTokenizer(TokenizerConfig(sustain=sustain)), expected=expected)


def test_more_instruments_than_channels(kit):
    # 20 programs sounding together on one channel, entering 10 ticks apart: the decoder must
    # reprogram busy channels (MIDI itself allows only 15 melodic programs per tick)
    events = []
    for program in range(20):
        events += [kit.program(10 * program, program), kit.on(10 * program, 40 + program), kit.off(960, 40 + program)]
    expected = [Note(p, 40 + p, 10 * p / 960, 1.0, 80) for p in range(20)]
    round_trip(kit.build([events]), expected=expected)


def test_beat_relative_mode(kit, shipped_midi):
    tok = MidiTokenizer(TokenizerConfig(beat_relative=True))
    events = [kit.tempo(0, 90), kit.tempo(960, 150), kit.on(0, 60), kit.off(320, 60), kit.on(320, 62, 20)]
    events += [kit.off(1100, 62), kit.on(960, 67, 127), kit.off(4000, 67)]
    midi = kit.build([events], midi_type=0)
    expected = [Note(0, 60, 0, 2 / 3, 80), Note(0, 62, 2 / 3, 1100 / 480, 20), Note(0, 67, 2, 4000 / 480, 127)]
    round_trip(midi, tok, expected=expected)
    decoded_tempos = [m.tempo for track in tok.decode(tok.encode(midi)).tracks for m in track if m.type == "set_tempo"]
    assert [tok.tempo_bin(60e6 / t) for t in decoded_tempos] == [tok.tempo_bin(90), tok.tempo_bin(150)]
    # a real file with 5 tempo changes
    assert shipped_midi[-1].name == "k525short.mid"
    round_trip(shipped_midi[-1], tok)


@st.composite
def random_piece(draw):
    """A type-1 file with one note per track, and the notes it holds, in seconds (computed here)."""
    ticks_per_beat = draw(st.sampled_from([96, 480, 1024]))
    tempo = st.integers(240_000, 2_000_000)  # microseconds per beat: 30..250 BPM
    tempos = [(0, draw(tempo))] + sorted((draw(st.integers(1, 20_000)), draw(tempo)) for _ in range(draw(st.integers(0, 3))))

    def seconds(tick):
        total = 0.0
        for (t0, us), (t1, _) in zip(tempos, tempos[1:] + [(float("inf"), 0)]):
            total += max(0, min(tick, t1) - t0) * us / 1e6 / ticks_per_beat
        return total

    channel_of = {0: 0, 40: 1, 73: 2, DRUMS: 9}
    tracks = [[(t, mido.MetaMessage("set_tempo", tempo=us)) for t, us in tempos]]
    expected = []
    for _ in range(draw(st.integers(1, 30))):
        inst = draw(st.sampled_from(sorted(channel_of)))
        pitch, velocity = draw(st.integers(0, 127)), draw(st.integers(1, 127))
        start = draw(st.integers(0, 20_000))
        end = start + draw(st.integers(1, 5000))
        ch = channel_of[inst]
        track = [] if inst == DRUMS else [(0, mido.Message("program_change", program=inst, channel=ch))]
        track += [
            (start, mido.Message("note_on", note=pitch, velocity=velocity, channel=ch)),
            (end, mido.Message("note_off", note=pitch, channel=ch)),
        ]
        tracks.append(track)
        expected.append(Note(inst, pitch, seconds(start), seconds(end), velocity))
    return tracks, ticks_per_beat, expected


@settings(max_examples=40, deadline=None)
@given(random_piece())
def test_round_trip_random_pieces(kit, piece):
    tracks, ticks_per_beat, expected = piece
    midi = kit.build(tracks, ticks_per_beat=ticks_per_beat)
    round_trip(midi, expected=expected)


@st.composite
def crowded_piece(draw):
    """Tracks of events crowded on a few ticks, in any order within a tick: notes of two keys on two
    channels and the drum channel, program changes, zero-length and one-tick notes, note-offs written
    as note-ons of velocity 0, the sustain pedal. Returns (tracks, ticks per beat)."""
    ticks_per_beat = draw(st.sampled_from([96, 480, 1000]))
    grid = ticks_per_beat // 4
    tracks = [[(0, mido.MetaMessage("set_tempo", tempo=draw(st.integers(240_000, 2_000_000))))]]
    for _ in range(draw(st.integers(1, 3))):
        events = []
        for _ in range(draw(st.integers(1, 12))):
            channel = draw(st.sampled_from([0, 1, DRUM_CHANNEL]))
            tick = draw(st.integers(0, 12)) * grid + draw(st.sampled_from([0, 0, 1]))
            kind = draw(st.sampled_from(["note"] * 6 + ["program", "pedal"]))
            if kind == "program":
                events.append((tick, mido.Message("program_change", program=draw(st.sampled_from([0, 40])), channel=channel)))
            elif kind == "pedal":
                value = draw(st.sampled_from([0, 127]))
                events.append((tick, mido.Message("control_change", control=64, value=value, channel=channel)))
            else:
                pitch, length = draw(st.sampled_from([60, 62])), draw(st.sampled_from([0, 1, grid, 2 * grid, 5 * grid]))
                off = draw(st.sampled_from([mido.Message("note_off", note=pitch, channel=channel),
                                            mido.Message("note_on", note=pitch, velocity=0, channel=channel)]))
                velocity = draw(st.integers(1, 127))
                events += [(tick, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)),
                           (tick + length, off)]
        tracks.append(draw(st.permutations(events)))  # MidiKit.build keeps this order within a tick
    return tracks, ticks_per_beat


@settings(max_examples=150, deadline=None)
@given(crowded_piece(), st.booleans())
def test_round_trip_crowded_ticks(kit, piece, sustain):
    tracks, ticks_per_beat = piece
    round_trip(kit.build(tracks, ticks_per_beat=ticks_per_beat), MidiTokenizer(TokenizerConfig(sustain=sustain)))


# notes shorter than a step come back one step long: within one step only if the decoded file's
# ticks never lengthen them (at 60 BPM and 480 ticks a beat, a tick is 1/480 s)
SAME_TICK_CASES = {
    "a key ends as it starts again across a program change, note-off first": lambda kit: [
        [kit.tempo(0, 60), kit.on(0, 60), kit.off(500, 60), kit.program(500, 40), kit.on(500, 60, 30),
         kit.off(1000, 60)]],
    "a key ends as it starts again across a program change, note-on first": lambda kit: [
        [kit.tempo(0, 60), kit.on(0, 60), kit.program(500, 40), kit.on(500, 60, 30), kit.off(500, 60),
         kit.off(1000, 60)]],
    "a key ends as it starts again across a program change, in two tracks": lambda kit: [
        [kit.tempo(0, 60), kit.on(0, 60), kit.off(500, 60)],
        [kit.program(500, 40), kit.on(500, 60, 30), kit.off(1000, 60)]],
    "two note-ons of a key on one tick": lambda kit: [
        [kit.tempo(0, 60), kit.on(0, 60, 100), kit.on(0, 60, 20), kit.off(500, 60), kit.off(1000, 60)]],
    "two note-ons and a note-off of a key on one tick": lambda kit: [
        [kit.tempo(0, 60), kit.on(0, 60, 100), kit.on(0, 60, 20), kit.off(0, 60), kit.off(1000, 60)]],
    "drum notes of no length, of one tick, without a note-off": lambda kit: [
        [kit.tempo(0, 60), kit.on(0, 36, 100, 9), kit.off(0, 36, 9), kit.on(503, 38, 90, 9), kit.off(504, 38, 9),
         kit.on(750, 42, 70, 9), kit.on(1000, 60), kit.off(2000, 60)]],
}


@pytest.mark.parametrize("case", SAME_TICK_CASES)
def test_round_trip_same_tick_events(kit, case):
    round_trip(kit.build(SAME_TICK_CASES[case](kit)))


# -- real files ----------------------------------------------------------------------------------


def test_round_trip_real_files(shipped_midi, music21_midi, capsys):
    files = shipped_midi + music21_midi.files
    notes = 0
    for path in files:
        ids = round_trip(path)
        notes += TOKENIZER.count_notes(ids)
    with capsys.disabled():
        print(f"\nround trip: {len(files)} real MIDI files, {notes} notes, all kept")
    assert len(files) == 22 + len(music21_midi.scores) and notes > 10_000


@pytest.mark.skipif(os.environ.get("EAGLEFINCH_FULL_CORPUS") != "1",
                    reason="converts the whole corpus (minutes the first time); set EAGLEFINCH_FULL_CORPUS=1")
def test_round_trip_whole_corpus(capsys):
    """Every Bach chorale and string-quartet movement of music21 that converts to MIDI (cached in
    ~/.cache/eaglefinch, as `make demo` leaves it). The everyday suite takes a sample (above).

    Measured: all 410 chorales and 39 of the 46 quartet movements convert (music21 fails on 7);
    the 449 files hold 334,253 notes and every one comes back. 19 minutes on 2 busy cores with the
    chorales already cached, almost all of it music21 converting the quartets (once).
    """
    scores = corpus.bach_chorales() + corpus.string_quartets()
    report = corpus.convert_scores(scores, workers=2, progress=False)
    notes = sum(TOKENIZER.count_notes(round_trip(path)) for path in report.midi_files)
    with capsys.disabled():
        print(f"\nround trip: {len(report.midi_files)} of {len(scores)} scores ({len(report.failed)} music21 "
              f"cannot convert), {notes} notes, all kept")
    assert len(report.midi_files) + len(report.failed) == len(scores) and len(report.midi_files) >= 400


# -- invalid input and generated sequences ---------------------------------------------------------


@pytest.mark.parametrize(
    "content, reason",
    [
        (os.urandom(2000), "not a readable MIDI file"),
        (b"this is a text file, not MIDI\n" * 20, "MThd not found"),
        (b"", "truncated"),
        ("truncated", "truncated"),
    ],
    ids=["random-bytes", "text-named-mid", "empty", "truncated"],
)
def test_invalid_files_raise_midi_error(tmp_path, shipped_midi, content, reason):
    if content == "truncated":
        data = shipped_midi[2].read_bytes()
        content = data[: len(data) // 2]
    path = tmp_path / "bad.mid"
    path.write_bytes(content)
    with pytest.raises(MidiError, match=reason) as error:
        TOKENIZER.encode(path)
    assert "bad.mid" in str(error.value)


def test_tempo_zero_raises_midi_error(kit):
    # FF 51 03 00 00 00: a quarter note of 0 microseconds; no time can be computed from it
    midi = kit.build([[(0, mido.MetaMessage("set_tempo", tempo=0)), kit.on(0, 60), kit.off(480, 60)]])
    for read in (TOKENIZER.encode, midi_to_notes, MidiTokenizer(TokenizerConfig(beat_relative=True)).encode):
        with pytest.raises(MidiError, match="tempo 0"):
            read(midi)


def test_unsupported_midi_raises_midi_error(tmp_path):
    with pytest.raises(MidiError, match="no such file"):
        TOKENIZER.encode(tmp_path / "missing.mid")
    with pytest.raises(MidiError, match="type 2"):
        TOKENIZER.encode(mido.MidiFile(type=2))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOKENIZER.decode([1, TOKENIZER.vocab_size])


def test_write_midi_is_atomic(tmp_path, kit):
    midi = kit.build([[kit.on(0, 60), kit.off(480, 60)]])
    path = write_midi(midi, tmp_path / "out.mid")
    assert midi_to_notes(path) == [Note(0, 60, 0.0, 0.5, 80)]

    class Exploding(mido.MidiFile):
        def save(self, filename=None, file=None):
            with open(filename, "wb") as f:
                f.write(b"MThd partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_midi(Exploding(), tmp_path / "broken.mid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mid"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, TOKENIZER.vocab_size - 1), max_size=300))
def test_any_token_sequence_decodes_to_valid_midi(ids):
    midi = reread(TOKENIZER.decode(ids))
    for track in midi.tracks:
        sounding = Counter()
        for message in track:
            key = (getattr(message, "channel", None), getattr(message, "note", None))
            if message.type == "note_on" and message.velocity > 0:
                sounding[key] += 1
                assert sounding[key] == 1  # overlapping notes of one key never share a track
            elif message.type in ("note_on", "note_off"):
                sounding[key] -= 1
                assert sounding[key] == 0  # every note-off ends a note that is on
        assert not +sounding  # every note-on is matched
    # decoding is a fixed point: what it wrote encodes and decodes to the same notes (silences shortened)
    notes = midi_to_notes(midi)
    again = midi_to_notes(reread(TOKENIZER.decode(TOKENIZER.encode(midi))))
    assert_same_notes(shorten_silences(notes, TOKENIZER.config.max_silence), again, 1e-3, TOKENIZER.velocity_bin)
    # a leading separator (a prompt cut from the shard stream) changes nothing; a later one ends the piece
    assert midi_to_notes(TOKENIZER.decode([0, 0, *ids])) == notes
    assert midi_to_notes(TOKENIZER.decode([TOKENIZER.START, 0, *ids])) == []


def test_match_notes_pairs_doubled_notes_and_reports_strays():
    a = [Note(0, 60, 0.0, 1.0, 80), Note(0, 60, 0.004, 2.0, 80), Note(0, 61, 0.0, 1.0, 80)]
    b = [Note(0, 60, 0.0, 2.004, 80), Note(0, 60, 0.0, 0.996, 80), Note(0, 61, 0.5, 1.0, 80)]
    pairs, missing, extra = match_notes(a, b, 0.005)
    assert sorted((x.end, y.end) for x, y in pairs) == [(1.0, 0.996), (2.0, 2.004)]
    assert missing == [a[2]] and extra == [b[2]]
