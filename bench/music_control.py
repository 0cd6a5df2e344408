"""Music control (issue 22): does a tiny conditioned Finch play the instruments, tempo and key asked for?

    python bench/music_control.py --out runs/music-control [--steps 1000] [--pieces 41] [--seconds 10]

Data: music21's Bach chorales as MIDI (converted once and cached, as `make demo` does), each
re-orchestrated once, because as converted nearly every chorale is one piano: each voice
(track) gets a channel of its own and an instrument drawn for its register (soprano: violin, flute,
oboe, trumpet, clarinet or piano; ... ; bass: cello, contrabass, bassoon, trombone, tuba or piano),
and the chorale a tempo drawn log-uniformly in 60-160 BPM, both seeded by the file name. Prepared
with --conditioning (transpositions -2..2, one tempo; a tenth of the chorales held out by the hash
of their name), `music-tiny` trained for --steps (its cosine schedule that long), then
`music.evaluate.evaluate_control` on the held-out chorales: each asks for its own header and a
piece of --seconds is generated from `<start>` alone, from the header, and from the header with
other instruments banned. Writes <out>/midi, <out>/data, <out>/run-<steps> (with music-tiny.json, its config)
and <out>/control-<steps>.json; prints a Markdown table. Data and a trained run are reused.
"""
import argparse
import json
import math
import random
import time
from pathlib import Path

import mido

from eaglefinch.music.conditioning import GM_PROGRAMS
from eaglefinch.music.corpus import default_midi_folder
from eaglefinch.music.evaluate import evaluate_control
from eaglefinch.music.prepare import prepare
from eaglefinch.music.run import MusicRun
from eaglefinch.music.tokenizer import DRUM_CHANNEL, MidiTokenizer, TokenizerConfig
from eaglefinch.music.train import train_music
from eaglefinch.rwkv_core.config import read_config
from eaglefinch.rwkv_core.sampling import SamplerConfig

# GM programs by voice, highest first: instruments that can play that register
VOICE_INSTRUMENTS = (
    ("Violin", "Flute", "Oboe", "Trumpet", "Clarinet", "Acoustic Grand Piano"),
    ("Violin", "Viola", "Clarinet", "French Horn", "Oboe", "Acoustic Grand Piano"),
    ("Viola", "Cello", "French Horn", "Bassoon", "Trombone", "Acoustic Grand Piano"),
    ("Cello", "Contrabass", "Bassoon", "Trombone", "Tuba", "Acoustic Grand Piano"),
)
TEMPO_RANGE = (60.0, 160.0)  # BPM


def reorchestrate(source: Path, target: Path) -> None:
    """Write `source` with each note track on its own channel and instrument, at a new tempo (module docstring)."""
    rng = random.Random(source.name)
    midi = mido.MidiFile(source)
    first_tempo = next((m.tempo for t in midi.tracks for m in t if m.type == "set_tempo"), 500_000)
    bpm = math.exp(rng.uniform(*map(math.log, TEMPO_RANGE)))
    speed = bpm / (60e6 / first_tempo)
    channels = iter(c for c in range(16) if c != DRUM_CHANNEL)
    voice = 0
    for track in midi.tracks:
        for i, message in enumerate(track):
            if message.type == "set_tempo":
                track[i] = message.copy(tempo=round(message.tempo / speed))
        if not any(m.type == "note_on" for m in track):
            continue
        channel = next(channels)
        program = GM_PROGRAMS.index(rng.choice(VOICE_INSTRUMENTS[min(voice, 3)]))
        voice += 1
        kept = [m.copy(channel=channel) if hasattr(m, "channel") else m for m in track if m.type != "program_change"]
        track[:] = [mido.Message("program_change", channel=channel, program=program, time=0)] + kept
    target.parent.mkdir(parents=True, exist_ok=True)
    midi.save(target)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=1000, help="training steps of music-tiny")
    ap.add_argument("--pieces", type=int, default=41, help="held-out chorales to ask for")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each generated piece")
    ap.add_argument("--temperature", type=float, default=0.9)
    args = ap.parse_args()

    t0 = time.time()
    midi_dir, data, run = args.out / "midi", args.out / "data", args.out / f"run-{args.steps}"
    if not data.exists():
        for path in sorted(default_midi_folder().glob("*.mid")):
            reorchestrate(path, midi_dir / path.name)
        prepare(midi_dir, data, MidiTokenizer(TokenizerConfig(conditioning=True)), transpositions=range(-2, 3),
                tempo_factors=(1.0,))
    t1 = time.time()
    if not (run / "model.safetensors").exists():
        config = read_config("music-tiny")
        config["train"]["max_steps"] = args.steps
        run.mkdir(parents=True, exist_ok=True)
        (run / "music-tiny.json").write_text(json.dumps(config, indent=1))
        train_music(run / "music-tiny.json", data, run)
    t2 = time.time()
    model, tokenizer = MusicRun.open(run).load()
    results = evaluate_control(model, tokenizer, data, pieces=args.pieces, seconds=args.seconds,
                               sampler=SamplerConfig(temperature=args.temperature))
    t3 = time.time()
    results |= {"steps": args.steps, "temperature": args.temperature,
                "minutes": {"data": (t1 - t0) / 60, "training": (t2 - t1) / 60, "evaluation": (t3 - t2) / 60}}
    (args.out / f"control-{args.steps}.json").write_text(json.dumps(results, indent=1))

    print(f"{results['pieces']} held-out chorales, {args.seconds:g} s each, temperature {args.temperature:g}; "
          f"minutes: data {(t1 - t0) / 60:.1f}, training {(t2 - t1) / 60:.1f}, evaluation {(t3 - t2) / 60:.1f}")
    print("| prompt | notes | on the requested instruments | tempo off (bins) | tempo off (BPM) | "
          "tempo bin exact | key as asked |")
    print("|---|---|---|---|---|---|---|")
    for mode, m in results["modes"].items():
        print(f"| {mode} | {m['notes']:,} | {m['on_requested']:.1%} | {m['tempo_bins_off']:.2f} | "
              f"{m['tempo_bpm_off']:.1f} | {m['tempo_exact']:.0%} | {m['key_match']:.0%} |")


if __name__ == "__main__":
    main()
