"""The music part of `make demo`: Bach chorales -> a tiny Finch trained on the CPU -> a generated piece.

Writes under runs/demo/: music-data/ (shards, kept between runs), music/ (the run folder, with
loss.png) and music/sample.mid with its piano roll sample.png, and sample.wav where FluidSynth and a
General MIDI SoundFont are installed (`music.audio`; otherwise the demo says what to install).
"""
import shutil
import time
from pathlib import Path

RUNS = Path("runs/demo")
TRANSPOSITIONS = (-2, -1, 0, 1, 2)  # fewer copies than the CLI default keep tokenizing to seconds
SECONDS = 25


def music_demo():
    """Prepare the chorales, train the shipped music-tiny config (a few minutes on 2 cores), generate, compare."""
    from eaglefinch.rwkv_core.data import TokenDataset
    from eaglefinch.rwkv_core.heldout import heldout_nats
    from eaglefinch.rwkv_core.sampling import SamplerConfig

    from .audio import AudioError, render_wav
    from .corpus import default_midi_folder
    from .evaluate import split_pieces, unigram_entropy
    from .generate import generate_music
    from .metrics import density_range, piece_report
    from .pianoroll import save_midi_and_pianoroll
    from .prepare import prepare
    from .run import MusicRun
    from .tokenizer import midi_to_notes
    from .train import train_music

    data, run = RUNS / "music-data", RUNS / "music"
    if not data.exists():
        prepare(default_midi_folder(), data, transpositions=TRANSPOSITIONS, tempo_factors=(1.0,))
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.time()
    train_music("music-tiny", data, run)
    print(f"trained a tiny music Finch in {time.time() - t0:.0f} s; curve: {run / 'loss.png'}")

    music_run = MusicRun.open(run)
    model, tokenizer = music_run.load()
    nats, counts = heldout_nats(model, TokenDataset(data, "val"), music_run.ctx_len)
    print(f"held-out loss {nats / counts.sum().item():.3f} nats/token; "
          f"unigram baseline (entropy of the same tokens) {unigram_entropy(counts.numpy()):.3f}")
    ids = generate_music(model, tokenizer, [[tokenizer.START]], SECONDS, SamplerConfig(temperature=0.9), seed=0,
                         progress=True)[0]
    midi_path, png_path = save_midi_and_pianoroll(tokenizer.decode(ids), run / "sample.mid", title="tiny Finch, Bach chorales")
    train = TokenDataset(data, "train")
    training_range = density_range(split_pieces(tokenizer, train, max_tokens=len(train), progress=True))
    # measured on the file as written, as a listener gets it
    print(f"generated a piece of {SECONDS} s asked for: {piece_report(midi_to_notes(midi_path), training_range)}; "
          f"{midi_path} and {png_path}")
    try:
        print(f"listen to it: {render_wav(midi_path, run / 'sample.wav')}")
    except AudioError as e:  # audio is a bonus: the demo goes on without it
        print(f"no sample.wav: {e}")
