"""The README's examples, run as written: every ```sh block through bash (so the quoting is the
shell's, as a user would type it), then every ```python block, in one folder holding the small
inputs the examples name (corpus/, midi/, and a stand-in for the official checkpoint file).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import mido
import pytest
import torch

from eaglefinch.rwkv_core import RWKV, RWKVConfig, save_model

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
OFFICIAL_NAME = "RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth"   # what the Python API example loads


def readme_blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall((ROOT / "README.md").read_text()) if lang == language]


def write_inputs(folder: Path) -> None:
    """The inputs the examples name: a text corpus, a folder of MIDI files, an official-layout .pth."""
    (folder / "corpus").mkdir()
    for i in range(200):
        (folder / "corpus" / f"dialogue{i:03d}.txt").write_text(
            f"User: What is {i} plus {i}?\n\nAssistant: It is {2 * i}.\n\nUser: Thank you!\n\nAssistant: You are welcome.\n")
    (folder / "midi").mkdir()
    for piece in range(10):
        midi = mido.MidiFile(ticks_per_beat=480)
        track = mido.MidiTrack()
        midi.tracks.append(track)
        track.append(mido.MetaMessage("set_tempo", tempo=500_000))
        for step in range(100):  # a melody of quarter-beat notes, a different one per file
            pitch = 48 + (piece * 5 + step * (piece % 4 + 2)) % 36
            track.append(mido.Message("note_on", note=pitch, velocity=64 + step % 32, time=0))
            track.append(mido.Message("note_off", note=pitch, velocity=0, time=240))
        midi.save(folder / "midi" / f"piece{piece}.mid")
    torch.manual_seed(0)
    save_model(RWKV(RWKVConfig(n_layer=1, n_embd=32, head_size=16, mix_lora_dim=4, decay_lora_dim=8)),
               folder / OFFICIAL_NAME)   # a stand-in: no weights can be downloaded here


ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The example folder after every ```sh block of the README ran in it: (folder, failures)."""
    folder = tmp_path_factory.mktemp("readme")
    write_inputs(folder)
    failures = []
    for block in readme_blocks("sh"):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=folder, env=ENV,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            failures.append(f"this README block failed:\n{block}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return folder, failures


def test_the_readme_has_runnable_examples():
    assert len(readme_blocks("sh")) >= 3 and len(readme_blocks("python")) >= 3


def test_shell_examples_run_as_written(session):
    folder, failures = session
    assert failures == []
    # what the examples promise: the escapes in --prompt and --stop are real newlines
    reply = subprocess.run(["eaglefinch", "text", "generate", "--checkpoint", "run", "--prompt", "User: Hi\\n\\nAssistant:",
                            "--max-tokens", "3"], cwd=folder, env=ENV, capture_output=True, text=True, timeout=300)
    assert reply.stdout.startswith("User: Hi\n\nAssistant:"), reply
    for made in ("run/model.safetensors", "chat.safetensors", "run/eval.json", "song.mid", "longer.mid", "music-run/eval.json",
                 "clip.pt", "visual-run/model.safetensors", "visual-run/captions.png", "lora-run/adapters.safetensors",
                 "merged.pth", "state-run/model.safetensors"):
        assert (folder / made).is_file(), made


def test_python_examples_run_as_written(session, monkeypatch):
    folder, _ = session
    monkeypatch.chdir(folder)
    for block in readme_blocks("python"):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert (folder / "out.pth").is_file() and (folder / "state.pth").is_file()
