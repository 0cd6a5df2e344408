"""What a run folder and a data folder meet: a kill at any moment (torn metrics, leftover temporaries),
a damaged or crafted checkpoint.pt on --resume, and any umask."""
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eaglefinch.rwkv_core import CheckpointError
from eaglefinch.rwkv_core.data import ShardWriter, TokenDataset, folder_written_whole
from eaglefinch.rwkv_core.files import write_json_atomic
from eaglefinch.rwkv_core.run import read_metrics
from eaglefinch.rwkv_core.train import NextTokenTask, TrainConfig, train
from eaglefinch.text.train import train_text
from tests.core.test_checkpoint_errors import RunsCode
from tests.core.test_train import patterned_docs, tiny_model, write_dataset

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig(max_steps=2, batch_size=2, ctx_len=8, log_every=1, save_every=2, warmup_steps=0)
TEXT_CONFIG = {"domain": "text", "train": dataclasses.asdict(CFG), "text": {"trim_vocab": True},
               "model": {"arch": "finch", "n_layer": 2, "n_embd": 32, "head_size": 16, "vocab_size": 65536,
                         "mix_lora_dim": 4, "decay_lora_dim": 8}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "data"
    write_dataset(folder, {"train": patterned_docs(10, 0), "val": patterned_docs(3, 1)})
    return folder


@pytest.fixture(scope="module")
def text_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "text.json"
    path.write_text(json.dumps(TEXT_CONFIG))
    return path


def run_steps(data, run, steps, resume=False, model=None):
    """Train the tiny model on `data` into `run` up to `steps` (the same lr schedule for any `steps`)."""
    cfg = dataclasses.replace(CFG, max_steps=steps, decay_steps=8)
    train(NextTokenTask(model or tiny_model()), cfg, TokenDataset(data, "train"), run, resume=resume, progress=False)
    return run


@pytest.fixture(scope="module")
def two_steps(data, tmp_path_factory):
    """A run stopped at its checkpoint of step 2; tests copy it before damaging it."""
    return run_steps(data, tmp_path_factory.mktemp("run") / "run", 2)


def copy_of(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / "run"))


# -- a kill at any moment ----------------------------------------------------------------------


def test_resume_drops_a_torn_last_metrics_line(two_steps, data, tmp_path):
    run = copy_of(two_steps, tmp_path)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "loss": 4.1')  # killed in the middle of a line
    run_steps(data, run, 4, resume=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_a_torn_line_inside_metrics_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        read_metrics(path)


def test_every_file_of_a_text_run_is_written_whole(data, text_config, tmp_path, monkeypatch):
    """Each file of the run (vocab_subset.json too) appears by one rename of a complete temporary
    file; metrics.jsonl alone grows by appended lines (a torn last one is dropped, above)."""
    renamed = []
    replace = os.replace

    def recording_replace(src, dst):
        renamed.append(Path(dst).name)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    train_text(text_config, data, tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"vocab_subset.json", "config.json", "model.safetensors", "checkpoint.pt"} <= files
    assert files - {"metrics.jsonl"} <= set(renamed)


def test_a_run_removes_the_temporaries_killed_runs_left(two_steps, data, tmp_path):
    run = copy_of(two_steps, tmp_path)
    (run / "deepspeed").mkdir()
    left = [run / ".checkpoint.pt.k3j4h5g6.tmp", run / ".model.safetensors.0a1b2c3d.tmp",
            run / "deepspeed" / ".latest.x1y2z3w4.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    others = [run / ".notes", run / "notes.tmp"]  # not names our writers use: left alone
    for path in others:
        path.write_text("mine")
    run_steps(data, run, 3, resume=True)
    assert [p for p in left if p.exists()] == []
    assert all(p.read_text() == "mine" for p in others)


def test_data_writers_remove_the_temporaries_killed_writers_left(tmp_path):
    beside = tmp_path / ".data.0123456789ab.tmp"  # folder_written_whole's, for tmp_path/data
    (beside / "train").mkdir(parents=True)
    (beside / "train" / "shard_000000.bin").write_bytes(b"\1\0" * 10)
    with folder_written_whole(tmp_path / "data") as tmp:
        (tmp / "stats.json").write_text("{}")
    assert not beside.exists() and (tmp_path / "data" / "stats.json").exists()

    split = tmp_path / "data" / ".train.0123456789ab.tmp"  # ShardWriter's, for the split "train"
    split.mkdir()
    (split / "shard_000000.bin").write_bytes(b"\1\0" * 10)
    other = tmp_path / "data" / ".val.0123456789ab.tmp"  # another split's: not this writer's business
    other.mkdir()
    with ShardWriter(tmp_path / "data", "train") as w:
        w.add([1, 2, 3])
    assert not split.exists() and other.exists()
    assert len(TokenDataset(tmp_path / "data", "train")) == 4


# -- a damaged or crafted checkpoint.pt ----------------------------------------------------------


REFUSED = "not a loadable PyTorch checkpoint: it contains pickled code or objects other than tensors, which are refused"
DAMAGED = "not a loadable PyTorch checkpoint: truncated, corrupt or not a PyTorch file"


def damage(path, case, marker):
    """Turn the good checkpoint at `path` into `case`."""
    good = path.read_bytes()
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif case == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "text":
        path.write_text("hello\n")
    elif case == "pickled code":
        torch.save({"task": RunsCode(marker)}, path)
    elif case == "missing entry":
        state = torch.load(path, weights_only=True)
        del state["optimizer"]
        torch.save(state, path)
    elif case == "another model's":
        state = torch.load(path, weights_only=True)
        state["task"]["model.emb.weight"] = torch.zeros(3, 32)
        torch.save(state, path)
    elif case == "not a dict":
        torch.save(torch.zeros(3), path)


PROBLEMS = {
    "empty": "the file is empty",
    "random bytes": DAMAGED,
    "truncated": DAMAGED,
    "text": DAMAGED,
    "pickled code": REFUSED,
    "missing entry": "cannot resume from it: it has no 'optimizer' entry",
    "another model's": "cannot resume from it: Error(s) in loading state_dict for NextTokenTask: size mismatch "
                       "for model.emb.weight: copying a param with shape torch.Size([3, 32])",
    "not a dict": "cannot resume from it: it holds a Tensor, not the trainer's dict",
}


@pytest.mark.parametrize("case", PROBLEMS)
def test_resume_errors_name_the_file_and_the_problem(two_steps, data, tmp_path, case):
    run = copy_of(two_steps, tmp_path)
    damage(run / "checkpoint.pt", case, tmp_path / "PWNED")
    with pytest.raises(CheckpointError) as e:
        run_steps(data, run, 4, resume=True)
    message = str(e.value)
    assert message.startswith(f"{run / 'checkpoint.pt'}: {PROBLEMS[case]}"), message
    assert "\n" not in message and "weights_only" not in message and len(message) < 400, message
    assert not (tmp_path / "PWNED").exists(), "the pickle's code ran"


def test_the_command_prints_one_line_for_a_broken_checkpoint(data, text_config, tmp_path):
    train_text(text_config, data, tmp_path / "run", progress=False)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "eaglefinch", "text", "train", "--config", str(text_config),
                           "--data", str(data), "--out", str(tmp_path / "run"), "--resume"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == f"eaglefinch: error: {tmp_path / 'run' / 'checkpoint.pt'}: the file is empty\n"


# -- permissions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_get_the_usual_permissions_under_any_umask(data, text_config, tmp_path, umask):
    """Every file we write gets 0666 less the umask, every folder 0777 less the umask, as with
    open() and mkdir(): never the 0600 of a temporary file."""
    previous = os.umask(umask)
    try:
        with folder_written_whole(tmp_path / "data") as tmp:
            for split, seed in (("train", 0), ("val", 1)):
                with ShardWriter(tmp, split, shard_tokens=100) as w:
                    for doc in patterned_docs(5, seed):
                        w.add(doc)
        train_text(text_config, tmp_path / "data", tmp_path / "run", progress=False)
        write_json_atomic(tmp_path / "out.json", {"an": "output"})
    finally:
        os.umask(previous)
    written = [tmp_path / "out.json"]
    for folder in (tmp_path / "data", tmp_path / "run"):
        written += [folder, *folder.rglob("*")]
    assert len(written) > 10
    for path in written:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, (path, oct(path.stat().st_mode))
