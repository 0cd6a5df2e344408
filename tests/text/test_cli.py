"""`eaglefinch text generate/chat` end to end on a small random World-vocabulary model."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eaglefinch.cli import main
from eaglefinch.rwkv_core import RWKV, RWKVConfig, save_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(arch="finch", n_layer=2, n_embd=32, head_size=16, mix_lora_dim=4, decay_lora_dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_model(model, path)
    return path


def test_generate_streams_and_seed_reproduces(checkpoint, capsys, tmp_path):
    args = ["text", "generate", "--checkpoint", str(checkpoint), "--prompt", "Hello 你好", "--max-tokens", "12",
            "--seed", "7", "--top-p", "1.0"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args + ["--save-state", str(tmp_path / "s.safetensors")]) == 0
    assert capsys.readouterr().out == first and first.startswith("Hello 你好")
    assert main(["text", "generate", "--checkpoint", str(checkpoint), "--prompt", "x", "--max-tokens", "3",
                 "--load-state", str(tmp_path / "s.safetensors")]) == 0


def test_chat_reads_turns_from_stdin(checkpoint):
    proc = subprocess.run([sys.executable, "-m", "eaglefinch", "text", "chat", "--checkpoint", str(checkpoint),
                           "--max-tokens", "5", "--seed", "1"], input="Hi\nHow are you?\n", capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Assistant:") == 2


def test_bad_arguments_give_one_line(checkpoint, capsys, tmp_path):
    code = main(["text", "generate", "--checkpoint", str(checkpoint), "--prompt", "x",
                 "--load-state", str(tmp_path / "missing.safetensors")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "not a saved RWKV state" in err
