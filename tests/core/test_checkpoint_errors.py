"""Bad checkpoints: one clear error line, exit code != 0, and a pickle's code never runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eaglefinch.cli import main
from .official_ckpt import random_official_state_dict
from eaglefinch.rwkv_core import RWKV, CheckpointError, load_model, save_model

ROOT = Path(__file__).resolve().parents[2]


class RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def small_sd(**kw):
    return random_official_state_dict("finch", 2, 64, 100, head_size=16, mix_lora=8, decay_lora=16, **kw)


def bad_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(small_sd(), good)
    data = good.read_bytes()
    files = {}
    files["truncated"] = tmp_path / "truncated.pth"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["random bytes"] = tmp_path / "random.pth"
    files["random bytes"].write_bytes(os.urandom(4096))
    files["empty"] = tmp_path / "empty.pth"
    files["empty"].write_bytes(b"")
    sd = small_sd()
    del sd["blocks.1.att.time_decay_w2"]
    files["missing key"] = tmp_path / "missing.pth"
    torch.save(sd, files["missing key"])
    sd = small_sd()
    sd["blocks.1.ffn.key.weight"] = torch.zeros(3, 64)
    files["wrong shape"] = tmp_path / "shape.pth"
    torch.save(sd, files["wrong shape"])
    files["pickle code"] = tmp_path / "evil.pth"
    torch.save({"emb.weight": RunsCode(tmp_path / "PWNED")}, files["pickle code"])
    files["not a model"] = tmp_path / "other.pth"
    torch.save({"foo": torch.zeros(3)}, files["not a model"])
    files["missing file"] = tmp_path / "nope.pth"
    files["bad safetensors"] = tmp_path / "bad.safetensors"
    files["bad safetensors"].write_bytes(os.urandom(100))
    return files


EXPECTED = {
    "truncated": "not a loadable PyTorch checkpoint",
    "random bytes": "not a loadable PyTorch checkpoint",
    "empty": "the file is empty",
    "missing key": "missing key 'blocks.1.att.time_decay_w2' (expected shape [16, 64])",
    "wrong shape": "key 'blocks.1.ffn.key.weight' has shape [3, 64], expected [224, 64]",
    "pickle code": "contains pickled code",
    "not a model": "not an Eagle/Finch checkpoint",
    "missing file": "no such checkpoint file",
    "bad safetensors": "not a readable safetensors file",
}


def test_each_bad_checkpoint_gives_one_clear_error(tmp_path, capsys):
    for case, path in bad_files(tmp_path).items():
        with pytest.raises(CheckpointError, match=None) as e:
            load_model(path)
        assert EXPECTED[case] in str(e.value), case
        code = main(["text", "generate", "--checkpoint", str(path), "--prompt", "hi", "--max-tokens", "2"])
        err = capsys.readouterr().err
        assert code != 0, case
        assert err.count("\n") == 1 and EXPECTED[case] in err, (case, err)
    assert not (tmp_path / "PWNED").exists(), "the pickle's code ran"


def test_cli_exit_code_and_no_traceback(tmp_path):
    path = bad_files(tmp_path)["pickle code"]
    proc = subprocess.run([sys.executable, "-m", "eaglefinch", "text", "generate", "--checkpoint", str(path),
                           "--prompt", "hi"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "contains pickled code" in proc.stderr
    assert not (tmp_path / "PWNED").exists()


def test_safetensors_round_trip_keeps_config(tmp_path):
    torch.manual_seed(0)
    from eaglefinch.rwkv_core import RWKVConfig
    model = RWKV(RWKVConfig(arch="eagle", n_layer=2, n_embd=64, head_size=16, vocab_size=90, ctx_len=77))
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.cfg == model.cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("error, line", [(EOFError(), "EOFError"),
                                         (RuntimeError("Error(s) in loading:\n\tsize mismatch for x"),
                                          "Error(s) in loading: size mismatch for x")])
def test_cli_prints_any_error_on_one_line(monkeypatch, capsys, error, line):
    """A message that is empty or spans lines still gives one line that says something."""
    def failing(args):
        raise error

    monkeypatch.setattr("eaglefinch.text.cli.cmd_train", failing)
    assert main(["text", "train", "--config", "c", "--data", "d", "--out", "o"]) == 1
    assert capsys.readouterr().err == f"eaglefinch: error: {line}\n"
