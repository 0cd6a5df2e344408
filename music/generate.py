"""Music generation on top of the shared loop: a time limit in seconds, decoded to MIDI.

    model, tokenizer = MusicRun.open("runs/music").load()
    pieces = generate_music(model, tokenizer, [prompt_ids(tokenizer)], seconds=30, seed=0)
    midi = tokenizer.decode(pieces[0])

A sequence ends just before the time shift that would take it more than `seconds` past the end
of its prompt (notes still sounding there are closed by the decoder, at least one time step after
their onset), or after `max_tokens`. The model's own `<end>` is never sampled unless
`stop_at_end=True`, which ends a sequence there: a piece is as long as asked for. `<sep>` and
`<start>` are never sampled: inside a piece they are not valid continuations.
"""
import dataclasses

from tqdm import tqdm

from eaglefinch.rwkv_core.generate import Generation
from eaglefinch.rwkv_core.sampling import SamplerConfig

from .tokenizer import MidiTokenizer

TOKENS_PER_SECOND_CAP = 200  # default max_tokens per second of music: a chorale needs about 25


class MusicClock:
    """Seconds of music a token stream has reached, read token by token.

    Absolute-time tokenizers advance a fixed time per shift step; beat-relative ones convert
    beats to seconds at the latest tempo token (120 BPM before the first, as the decoder does).
    The clock starts at 0 after `prompt`, whose tempo tokens it reads.
    """

    def __init__(self, tokenizer: MidiTokenizer, prompt=()):
        self.tokenizer = tokenizer
        self.seconds, self.bpm = 0.0, 120.0
        for token in prompt:
            self.feed(token)
        self.seconds = 0.0

    def after(self, token: int) -> float:
        """The time the stream would reach with `token` appended (the clock itself is unchanged)."""
        shifts = self.tokenizer.ranges["shift"]
        if token not in shifts:
            return self.seconds
        steps = token - shifts.start + 1
        cfg = self.tokenizer.config
        if cfg.beat_relative:
            return self.seconds + steps / cfg.steps_per_beat * 60.0 / self.bpm
        return self.seconds + steps * cfg.time_step_ms / 1000.0

    def feed(self, token: int) -> None:
        """Advance the clock past `token`."""
        self.seconds = self.after(token)
        tempos = self.tokenizer.ranges["tempo"]
        if token in tempos:
            self.bpm = self.tokenizer.bin_tempo(token - tempos.start)


def prompt_ids(tokenizer: MidiTokenizer, midi=None) -> list[int]:
    """The prompt for a piece: `<start>`, or a MIDI file (path or MidiFile) encoded without its `<end>`.

    Raises MidiError for a file that is not readable MIDI.
    """
    if midi is None:
        return [tokenizer.START]
    ids = tokenizer.encode(midi)
    return ids[:-1] if ids[-1] == tokenizer.END else ids


def music_sampler(tokenizer: MidiTokenizer, sampler: SamplerConfig, stop_at_end: bool = False) -> SamplerConfig:
    """`sampler` with the ids that never continue a piece banned: `<sep>`, `<start>`, and `<end>`
    unless the model may end the piece."""
    banned = {tokenizer.SEP, tokenizer.START} | ({tokenizer.END} if not stop_at_end else set())
    return dataclasses.replace(sampler, banned_tokens=tuple(sorted(set(sampler.banned_tokens) | banned)))


def token_budget(seconds: float) -> int:
    """The default max_tokens for `seconds` of music: bounds a model that never advances time."""
    return int(seconds * TOKENS_PER_SECOND_CAP) + 1


def generate_music(model, tokenizer: MidiTokenizer, prompts, seconds: float = 30.0, sampler=SamplerConfig(), *,
                   seed=None, max_tokens=None, stop_at_end=False, progress=False) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by `seconds` of music after it.

    Returns, for each prompt, the prompt followed by its continuation and `<end>`: ready for
    `tokenizer.decode`. `stop_at_end` lets the model end a piece earlier with its `<end>`.
    `max_tokens` (default 200 per second) bounds a model that never advances time. `sampler` may be
    a list, one SamplerConfig per prompt.
    `progress` shows bars while long prompts are read and over the seconds of music generated.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.cfg.vocab_size} outputs but the tokenizer {tokenizer.vocab_size} ids")
    samplers = [music_sampler(tokenizer, s, stop_at_end) for s in (sampler if isinstance(sampler, list) else [sampler] * len(prompts))]
    gen = Generation(model, prompts, max_tokens or token_budget(seconds), samplers, stop_ids=(tokenizer.END,), seed=seed, progress=progress)
    clocks = [MusicClock(tokenizer, prompt) for prompt in prompts]
    pieces = [[] for _ in prompts]
    with tqdm(total=seconds * len(prompts), unit="s", desc="generating", disable=not progress, leave=False,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of music [{elapsed}]") as bar:
        for step in gen:
            for row, token in enumerate(step):
                if token is None:
                    continue
                if clocks[row].after(token) > seconds:
                    gen.finish(row)
                    continue
                bar.update(clocks[row].after(token) - clocks[row].seconds)
                clocks[row].feed(token)
                pieces[row].append(token)
    return [list(prompt) + piece + [tokenizer.END] for prompt, piece in zip(prompts, pieces)]
