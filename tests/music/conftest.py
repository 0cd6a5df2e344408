from pathlib import Path
from types import SimpleNamespace

import mido
import pytest

from eaglefinch.music import corpus

# every 200th chorale and the shortest quartet movement keep the conversion to a few seconds
CHORALE_STEP = 200
QUARTET_MOVEMENT = "mozart/k80/movement3.mxl"


@pytest.fixture(scope="session")
def music21_midi(tmp_path_factory) -> SimpleNamespace:
    """A few real multi-part scores from music21's corpus, converted to MIDI with two processes.

    Fields: scores (sources), cache (folder), report (ConversionReport), files (the MIDI files).
    """
    quartet = corpus.corpus_root() / QUARTET_MOVEMENT
    assert quartet in corpus.string_quartets()
    scores = corpus.bach_chorales()[::CHORALE_STEP] + [quartet]
    cache = tmp_path_factory.mktemp("music21-midi")
    report = corpus.convert_scores(scores, cache, workers=2, progress=False)
    assert not report.failed, report.failed
    return SimpleNamespace(scores=scores, cache=cache, report=report, files=report.midi_files)


@pytest.fixture(scope="session")
def shipped_midi() -> list[Path]:
    """The real MIDI files inside the music21 wheel: 21 test files and the opening of a Mozart serenade.

    (The serenade's whole first movement, omr/k525MIDIMvt1.mid, is left out to save time.)
    """
    package = corpus.corpus_root().parent
    files = sorted((package / "midi" / "testPrimitive").glob("*.mid")) + [package / "omr" / "k525short.mid"]
    assert len(files) == 22 and all(f.is_file() for f in files)
    return files


class MidiKit:
    """Builds small MIDI files in tests (a fixture, so that it works under any pytest import mode)."""

    @staticmethod
    def build(tracks: list[list[tuple[int, mido.Message]]], midi_type: int = 1, ticks_per_beat: int = 480):
        """A MidiFile from tracks given as (absolute tick, message) lists; same-tick events keep list order."""
        midi = mido.MidiFile(type=midi_type, ticks_per_beat=ticks_per_beat)
        for events in tracks:
            track = mido.MidiTrack()
            now = 0
            for tick, message in sorted(events, key=lambda e: e[0]):
                track.append(message.copy(time=tick - now))
                now = tick
            midi.tracks.append(track)
        return midi

    @staticmethod
    def on(tick, note, velocity=80, channel=0):
        return tick, mido.Message("note_on", note=note, velocity=velocity, channel=channel)

    @staticmethod
    def off(tick, note, channel=0):
        return tick, mido.Message("note_off", note=note, channel=channel)

    @staticmethod
    def program(tick, program, channel=0):
        return tick, mido.Message("program_change", program=program, channel=channel)

    @staticmethod
    def tempo(tick, bpm):
        return tick, mido.MetaMessage("set_tempo", tempo=round(60e6 / bpm))

    @staticmethod
    def pedal(tick, down, channel=0):
        return tick, mido.Message("control_change", control=64, value=127 if down else 0, channel=channel)

    @staticmethod
    def scale(notes: int, seconds_per_note: float = 0.25, first_pitch: int = 48):
        """A one-track piano piece at 120 BPM: `notes` notes going up and down two octaves, one after another."""
        ticks = round(seconds_per_note * 960)
        events = []
        for i in range(notes):
            pitch = first_pitch + abs(i % 48 - 24)
            events += [MidiKit.on(i * ticks, pitch), MidiKit.off((i + 1) * ticks, pitch)]
        return MidiKit.build([events])


@pytest.fixture(scope="session")
def kit() -> type[MidiKit]:
    return MidiKit



TINY_MODEL = {"n_layer": 1, "n_embd": 32, "head_size": 16, "mix_lora_dim": 4, "decay_lora_dim": 8, "ctx_len": 64}


def write_music_run(folder: Path, favourite_tokens=None, tokenizer=None) -> Path:
    """A music run folder without training: a tiny model, `tokenizer` (default config if None) and a config.json
    with ctx_len 64. The model has random weights or, given `favourite_tokens`, is rigged so that
    its next token is always one of those ids, each as likely (its last LayerNorm puts out a
    constant vector, and only the head rows of those ids see it). Opens with `MusicRun.open`."""
    import torch

    from eaglefinch.music.tokenizer import MidiTokenizer
    from eaglefinch.rwkv_core import RWKV, RWKVConfig, RunConfig, save_model
    from eaglefinch.rwkv_core.config import TrainConfig
    from eaglefinch.rwkv_core.run import Run

    tokenizer = tokenizer or MidiTokenizer()
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(**TINY_MODEL, vocab_size=tokenizer.vocab_size))
    if favourite_tokens is not None:
        with torch.no_grad():
            model.ln_out.weight.zero_()
            model.ln_out.bias.zero_()
            model.ln_out.bias[0] = 1.0
            model.head.weight.zero_()
            model.head.weight[list(favourite_tokens), 0] = 30.0
    folder.mkdir(parents=True)
    save_model(model, folder / "model.safetensors")
    tokenizer.save(folder / "tokenizer.json")
    Run(folder).save_config(RunConfig("music", model=TINY_MODEL, train=TrainConfig(ctx_len=64)))
    return folder


@pytest.fixture(scope="session")
def make_music_run():
    """`write_music_run(folder, favourite_tokens=None, tokenizer=None)`: an untrained (or rigged) tiny music run."""
    return write_music_run


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory) -> Path:
    """A music run folder with an untrained tiny model (see `write_music_run`)."""
    return write_music_run(tmp_path_factory.mktemp("untrained") / "run")


@pytest.fixture(scope="session")
def scale_data(tmp_path_factory) -> Path:
    """Prepared data from six short scale pieces of different speeds, both splits filled."""
    from eaglefinch.music.prepare import prepare

    tmp = tmp_path_factory.mktemp("scales")
    (tmp / "midi").mkdir()
    for i in range(6):
        MidiKit.scale(40 + 10 * i, seconds_per_note=0.2 + 0.05 * i, first_pitch=40 + i).save(tmp / "midi" / f"scale{i}.mid")
    stats = prepare(tmp / "midi", tmp / "data", transpositions=(0,), tempo_factors=(1.0,), val_fraction=0.5,
                    progress=False)
    assert stats["splits"]["train"]["docs"] and stats["splits"]["val"]["docs"]
    return tmp / "data"
