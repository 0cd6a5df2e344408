"""The DeepSpeed path of the shared trainer, on the CPU (gloo, fp32).

DeepSpeed runs in subprocesses (it initialises torch.distributed from RANK/WORLD_SIZE/MASTER_*), started
by one module fixture: this file is also the worker (`python -m tests.core.test_deepspeed KIND DATA OUT`).

Tolerances: in fp32 on the CPU a DeepSpeed step computes the same forward pass as the single-process
trainer on the same batch and weights, so the first loss is bit-identical. After that the weights differ
only by rounding: ZeRO steps AdamW on flattened copies and sums the gradient norm (and, with two
processes, the gradient average) in another order. Measured over 6 steps: losses within 1.4e-7
relative (tolerance 1e-5), weights within 2e-6 of each tensor's largest value (tolerance 1e-4; Adam's
normalised update amplifies rounding where a gradient is nearly 0). Real errors move the weights by
3e-3 or more (measured: the 2x lr group at 1x, or no gradient clipping).
"""
import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import deepspeed  # noqa: F401  the test extra: its absence fails the suite, never skips it
import pytest
import torch

from eaglefinch.rwkv_core import CheckpointError, load_model, save_model
from eaglefinch.rwkv_core.data import Batch, TokenDataset
from eaglefinch.rwkv_core.run import Run, read_metrics
from eaglefinch.rwkv_core.train import (NextTokenTask, TrainConfig, complete_deepspeed_config, latest_deepspeed_checkpoint,
                                        rank_seed, train)
from tests.core.test_checkpoint_errors import RunsCode
from tests.core.test_train import patterned_docs, tiny_model, write_dataset

ROOT = Path(__file__).resolve().parents[2]
DS_CONFIGS = ROOT / "configs" / "deepspeed"
CFG = TrainConfig(max_steps=6, decay_steps=6, batch_size=4, ctx_len=16, log_every=1, val_every=3, save_every=3,
                  warmup_steps=2, lr_init=1e-2, grad_clip=0.3, weight_decay=0.1)  # all three parameter groups in use
TEXT_CONFIG = {"train": dataclasses.asdict(CFG)}
LOSS_RTOL = 1e-5
WEIGHT_RTOL = 1e-4



def start_model(seed=0):
    """The tiny model, perturbed like a pretrained one: the official init zeroes att.output, which
    would leave time_decay (the 2x lr group) without gradient in the first steps."""
    model = tiny_model()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


class TwoRanks:
    """What two data-parallel ranks draw in one step, as one batch of twice the size: rank 0's windows
    from the trainer's generator, rank 1's from its own generator seeded as the trainer seeds rank 1."""

    def __init__(self, data, seed):
        self.data, self.rank1 = data, torch.Generator().manual_seed(rank_seed(seed, 1))

    def sample_batch(self, batch_size, ctx_len, generator):
        b0 = self.data.sample_batch(batch_size // 2, ctx_len, generator)
        b1 = self.data.sample_batch(batch_size // 2, ctx_len, self.rank1)
        return Batch(torch.cat([b0.inputs, b1.inputs]), torch.cat([b0.targets, b1.targets]))


def worker(kind, data_dir, out):
    """The runs the tests inspect; `single` is one process (world size 1), `pair` one of two ranks."""
    from eaglefinch.text.train import train_text

    data_dir, out = Path(data_dir), Path(out)
    train_data, val_data = TokenDataset(data_dir, "train"), TokenDataset(data_dir, "val")
    if kind == "pair":
        rank = int(os.environ["RANK"])
        # rank 1 starts from other weights: DeepSpeed must broadcast rank 0's
        train(NextTokenTask(start_model(seed=rank)), CFG, train_data, out / "pair", progress=False,
              deepspeed_config=DS_CONFIGS / "zero2.json")
        return
    train(NextTokenTask(start_model()), CFG, train_data, out / "ref", val_data=val_data, progress=False)
    train(NextTokenTask(start_model()), dataclasses.replace(CFG, batch_size=2 * CFG.batch_size),
          TwoRanks(train_data, CFG.seed), out / "ref_pair", progress=False)
    for stage in (1, 2, 3):
        train(NextTokenTask(start_model()), CFG, train_data, out / f"zero{stage}", val_data=val_data, progress=False,
              deepspeed_config=DS_CONFIGS / f"zero{stage}.json")
    for stage in (2, 3):  # stopped after 3 steps, resumed from other weights (the checkpoint's replace them)
        for cfg, model, resume in ((dataclasses.replace(CFG, max_steps=3), start_model(), False),
                                   (CFG, start_model(seed=5), True)):
            train(NextTokenTask(model), cfg, train_data, out / f"zero{stage}_resumed", val_data=val_data,
                  resume=resume, progress=False, deepspeed_config=DS_CONFIGS / f"zero{stage}.json")
    # the text glue, fine-tuning from a file: stopped after 3 steps, resumed (the init is then overwritten)
    config = out / "text.json"
    config.write_text(json.dumps(TEXT_CONFIG))
    save_model(start_model(), out / "init.safetensors")
    save_model(start_model(seed=5), out / "other.safetensors")
    train_text(config, data_dir, out / "resumed", max_steps=3, init=out / "init.safetensors", progress=False,
               deepspeed_config=DS_CONFIGS / "zero1.json")
    train_text(config, data_dir, out / "resumed", resume=True, init=out / "other.safetensors", progress=False,
               deepspeed_config=DS_CONFIGS / "zero1.json")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, world_size, port):
    """What the launcher gives each process (the CPU only, one thread each)."""
    return dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def start(kind, data_dir, out, rank, world_size, port):
    log = open(out / f"{kind}{rank}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "tests.core.test_deepspeed", kind, str(data_dir), str(out)],
                            cwd=ROOT, env=rank_env(rank, world_size, port), stdout=log, stderr=subprocess.STDOUT), log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepspeed")
    write_dataset(out / "data", {"train": patterned_docs(40, 0), "val": patterned_docs(5, 1)})
    pair_port = free_port()
    procs = [start("single", out / "data", out, 0, 1, free_port()),
             start("pair", out / "data", out, 0, 2, pair_port), start("pair", out / "data", out, 1, 2, pair_port)]
    for proc, log in procs:
        proc.wait(timeout=300)
        log.close()
        if proc.returncode:
            pytest.fail(f"{log.name} failed:\n" + Path(log.name).read_text()[-4000:])
    return out


def losses(run, key="loss"):
    return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if key in r]


def assert_same_weights(run, ref):
    """model.safetensors of `run` loads and holds `ref`'s weights, within WEIGHT_RTOL of each tensor's largest value."""
    ours = load_model(run / "model.safetensors").state_dict()
    for name, p in load_model(ref / "model.safetensors").state_dict().items():
        assert ours[name].shape == p.shape, name  # ZeRO-3 must have gathered the full tensors
        assert (ours[name] - p).abs().max() <= WEIGHT_RTOL * p.abs().max(), name


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_follow_the_single_process_trainer(runs, stage):
    run = runs / f"zero{stage}"
    ref, ds = losses(runs / "ref"), losses(run)
    assert [s for s, _ in ds] == list(range(1, 7))
    assert ds[0] == ref[0]  # the same batch through the same weights: bit-identical
    for (_, a), (_, b) in zip(ref, ds):
        assert math.isclose(a, b, rel_tol=LOSS_RTOL), (stage, ref, ds)
    assert ds[-1][1] < 0.8 * ds[0][1]  # and it learns
    for (_, a), (_, b) in zip(losses(runs / "ref", "val_loss"), losses(run, "val_loss")):
        assert math.isclose(a, b, rel_tol=LOSS_RTOL)
    assert_same_weights(run, runs / "ref")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_checkpoint_is_one_complete_tag_named_by_latest(runs, stage):
    ckpt = runs / f"zero{stage}" / "deepspeed"
    assert (ckpt / "latest").read_text() == "step6"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step6"]  # step3 removed
    assert (ckpt / "step6" / "rng_rank0.pt").exists()
    assert not [p for p in ckpt.iterdir() if p.name.endswith(".tmp")]
    assert (runs / f"zero{stage}" / "loss.png").exists()


def assert_resume_is_bit_identical(full, resumed):
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "val_loss", "lr"):
            assert ra.get(key) == rb.get(key), (ra, rb)
    a = load_model(full / "model.safetensors").state_dict()
    b = load_model(resumed / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_through_the_text_cli_glue_is_bit_identical(runs):
    assert_resume_is_bit_identical(runs / "zero1", runs / "resumed")
    assert (runs / "resumed" / "config.json").exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_is_bit_identical_under_zero_2_and_3(runs, stage):
    """What DeepSpeed's shards hold (loss scaler, ZeRO stage, fragment addresses) comes back through
    the weights-only loading."""
    assert_resume_is_bit_identical(runs / f"zero{stage}", runs / f"zero{stage}_resumed")


def plant_payload(path, marker):
    """Add to a checkpoint file of ours an object whose unpickling would create `marker`."""
    state = torch.load(path, weights_only=False)  # our own file, written by the fixture
    state["payload"] = RunsCode(marker)
    torch.save(state, path)


def test_resume_refuses_a_pickle_payload_in_any_checkpoint_file(runs, tmp_path):
    """`--deepspeed ... --resume` on a crafted run folder: the payload never runs, one line names the file.
    One copy of the run per planted file, resumed side by side."""
    resumes = []
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng_rank0.pt"):
        run = Path(shutil.copytree(runs / "resumed", tmp_path / name / "run"))
        target = run / "deepspeed" / "step6" / name
        plant_payload(target, tmp_path / name / "PWNED")
        command = [sys.executable, "-m", "eaglefinch", "text", "train", "--config", str(runs / "text.json"),
                   "--data", str(runs / "data"), "--out", str(run), "--init", str(runs / "other.safetensors"),
                   "--resume", "--deepspeed", "deepspeed/zero1"]
        resumes.append((name, target, subprocess.Popen(command, cwd=ROOT, env=rank_env(0, 1, free_port()), text=True,
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    for name, target, proc in resumes:
        _, stderr = proc.communicate(timeout=300)
        assert not (tmp_path / name / "PWNED").exists(), f"the pickle's code in {name} ran"
        errors = [line for line in stderr.splitlines() if line.startswith("eaglefinch: error:")]
        assert proc.returncode == 1 and errors == [
            f"eaglefinch: error: {target}: not a loadable PyTorch checkpoint: it contains pickled code or objects "
            f"other than tensors, which are refused"], stderr[-3000:]
        assert "Traceback" not in stderr and "weights_only" not in stderr


@pytest.mark.parametrize("tag", ["../../elsewhere", "step9", "", "\udcff"])
def test_latest_names_only_a_checkpoint_folder_of_the_run(tmp_path, tag):
    run = Run(tmp_path)
    (run.deepspeed / "step3").mkdir(parents=True)
    (run.deepspeed / "latest").write_text("step3")
    assert latest_deepspeed_checkpoint(run) == run.deepspeed / "step3"
    (run.deepspeed / "latest").write_bytes(tag.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=r"deepspeed/latest: names .*, which is not a checkpoint folder beside it"):
        latest_deepspeed_checkpoint(run)


def test_two_ranks_equal_one_process_with_the_global_batch(runs):
    """Two ranks (rank 1 initialised differently) train like one process on both ranks' windows."""
    ref, pair = losses(runs / "ref_pair"), losses(runs / "pair")
    assert [s for s, _ in pair] == list(range(1, 7))
    assert pair[0] != losses(runs / "zero1")[0]  # rank 1's windows are not rank 0's
    for (_, a), (_, b) in zip(ref, pair):
        assert math.isclose(a, b, rel_tol=LOSS_RTOL), (ref, pair)
    assert_same_weights(runs / "pair", runs / "ref_pair")
    assert (runs / "pair" / "deepspeed" / "step6" / "rng_rank1.pt").exists()
    tokens_per_s = [r["tokens_per_s"] for r in read_metrics(runs / "pair" / "metrics.jsonl")]
    assert len(tokens_per_s) == 6  # rank 0 alone logs


def test_each_rank_samples_its_own_windows():
    def first_starts(rank, seed):
        return torch.randint(0, 10**6, (4,), generator=torch.Generator().manual_seed(rank_seed(seed, rank)))

    assert rank_seed(7, 0) == 7  # rank 0 draws what the single-process trainer draws
    for seed in (0, 7, 2**32 - 1):
        starts = [first_starts(rank, seed).tolist() for rank in range(8)]
        assert len({tuple(s) for s in starts}) == 8, seed


def test_deepspeed_config_takes_batch_and_clipping_from_the_train_config():
    cfg = TrainConfig(batch_size=6, grad_clip=0.5)
    ds = complete_deepspeed_config(DS_CONFIGS / "zero2.json", cfg, world_size=2, on_gpu=False)
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"], ds["gradient_accumulation_steps"],
            ds["gradient_clipping"]) == (6, 12, 1, 0.5)
    assert ds["bf16"]["enabled"] is False and ds["zero_optimization"]["stage"] == 2
    assert complete_deepspeed_config(DS_CONFIGS / "zero2.json", cfg, 1, on_gpu=True)["bf16"]["enabled"] is True
    assert complete_deepspeed_config({"gradient_clipping": 0.5}, cfg, 1, False)["gradient_clipping"] == 0.5
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu"):
        complete_deepspeed_config({"train_micro_batch_size_per_gpu": 8}, cfg, 1, False)
    with pytest.raises(ValueError, match="optimizer"):
        complete_deepspeed_config({"optimizer": {"type": "Adam"}}, cfg, 1, False)


if __name__ == "__main__":
    worker(*sys.argv[1:])
