"""The DeepSpeed path of the shared trainer, on the CPU (gloo, fp32).

DeepSpeed runs in subprocesses (it initialises torch.distributed from RANK/WORLD_SIZE/MASTER_*), started
by one module fixture in two phases (the second resumes what the first wrote): this file is also the
worker (`python -m tests.core.test_deepspeed KIND DATA OUT`).

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
from eaglefinch.rwkv_core.sampling import SamplerConfig
from eaglefinch.rwkv_core.train import (NextTokenTask, TrainConfig, complete_deepspeed_config, latest_deepspeed_checkpoint,
                                        rank_batch, train)
from tests.core.test_checkpoint_errors import RunsCode
from tests.core.test_train import patterned_docs, tiny_model, write_dataset

ROOT = Path(__file__).resolve().parents[2]
DS_CONFIGS = ROOT / "configs" / "deepspeed"
CFG = TrainConfig(max_steps=6, decay_steps=6, batch_size=4, ctx_len=16, log_every=1, val_every=3, save_every=3,
                  warmup_steps=2, lr_init=1e-2, grad_clip=0.3, weight_decay=0.1)  # all three parameter groups in use
PAIR_CFG = dataclasses.replace(CFG, batch_size=2 * CFG.batch_size)   # one process with two ranks' global batch
HALF = {"max_steps": 3}                                             # stopped at the first checkpoint
TEXT_CONFIG = {"train": dataclasses.asdict(CFG)}
# a new text model with a trimmed vocabulary: what `text generate` opens by itself
NEW_TEXT_CONFIG = {"model": {"arch": "finch", "n_layer": 2, "n_embd": 32, "head_size": 16, "mix_lora_dim": 4,
                             "decay_lora_dim": 8}, "train": dataclasses.asdict(CFG), "text": {"trim_vocab": True}}
PROMPT = "5"   # a byte token of the patterned documents' alphabet
LOSS_RTOL = 1e-5
WEIGHT_RTOL = 1e-4
LORA = {"train_mode": "lora", "lora_rank": 4}   # frozen base weights: ZeRO-3 keeps them in fragments too
# what a GPU runs: bf16 weights, and DeepSpeed's optimizer files named "bf16_zero_pp_rank_..."
BF16_ZERO3 = {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}
BF16_LOSS_RTOL = 2e-3   # 1 and 2 ranks sum bf16 gradients in another order (measured: 1.2e-4)
# the resumes of the second phase, by the kind of process that resumes: (run, resumed from, DeepSpeed config
# or None: the plain trainer)
RESUMES = {"single": [("z1_to_plain", "pair_z1_half", None), ("z2_to_one_rank", "pair_z2_half", "zero2"),
                      ("z3_to_one_rank_z1", "pair_z3_half", "zero1"), ("lora_z3_to_plain", "pair_lora_z3_half", None),
                      ("bf16_z3_to_one_rank", "pair_bf16_z3_half", BF16_ZERO3)],
           "pair": [("plain_to_two_ranks_z3", "plain_half", "zero3")]}


def ds_config(ds):
    """A shipped DeepSpeed config's name, or a config dict, as `train` takes it; None stays None."""
    return DS_CONFIGS / f"{ds}.json" if isinstance(ds, str) else ds


def start_model(seed=0):
    """The tiny model, perturbed like a pretrained one: the official init zeroes att.output, which
    would leave time_decay (the 2x lr group) without gradient in the first steps."""
    model = tiny_model()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def worker(kind, data_dir, out):
    """The runs the tests inspect. Phase 1: `single` is one process (world size 1), `pair` one of two
    ranks. Phase 2: `resume_single` and `resume_pair` continue phase 1's stopped runs on the other
    number of processes."""
    from eaglefinch.text.train import train_text

    data_dir, out = Path(data_dir), Path(out)
    train_data, val_data = TokenDataset(data_dir, "train"), TokenDataset(data_dir, "val")
    rank = int(os.environ["RANK"])
    if kind.startswith("resume_"):   # the fixture copied each stopped run into the resumed run's folder
        for name, _, ds in RESUMES[kind.removeprefix("resume_")]:
            cfg = PAIR_CFG if kind == "resume_single" else CFG   # the same global batch
            cfg = dataclasses.replace(cfg, **LORA) if name.startswith("lora") else cfg
            train(NextTokenTask(start_model(seed=5)), cfg, train_data, out / name, val_data=val_data, resume=True,
                  progress=False, deepspeed_config=ds_config(ds))
        return
    if kind == "pair":
        # rank 1 starts from other weights: DeepSpeed must broadcast rank 0's
        train(NextTokenTask(start_model(seed=rank)), CFG, train_data, out / "pair", val_data=val_data, progress=False,
              deepspeed_config=DS_CONFIGS / "zero2.json")
        for stage in (1, 2, 3):
            train(NextTokenTask(start_model(seed=rank)), dataclasses.replace(CFG, **HALF), train_data,
                  out / f"pair_z{stage}_half", val_data=val_data, progress=False,
                  deepspeed_config=DS_CONFIGS / f"zero{stage}.json")
        train(NextTokenTask(start_model()), dataclasses.replace(CFG, **HALF, **LORA), train_data,
              out / "pair_lora_z3_half", val_data=val_data, progress=False, deepspeed_config=DS_CONFIGS / "zero3.json")
        for name, cfg in (("pair_bf16_z3", CFG), ("pair_bf16_z3_half", dataclasses.replace(CFG, **HALF))):
            train(NextTokenTask(start_model()), cfg, train_data, out / name, val_data=val_data, progress=False,
                  deepspeed_config=BF16_ZERO3)
        return
    train(NextTokenTask(start_model()), CFG, train_data, out / "ref", val_data=val_data, progress=False)
    train(NextTokenTask(start_model()), PAIR_CFG, train_data, out / "ref_pair", val_data=val_data, progress=False)
    train(NextTokenTask(start_model()), dataclasses.replace(PAIR_CFG, **HALF), train_data, out / "plain_half",
          val_data=val_data, progress=False)
    train(NextTokenTask(start_model()), dataclasses.replace(PAIR_CFG, **LORA), train_data, out / "lora_ref_pair",
          val_data=val_data, progress=False)
    for stage in (1, 2, 3):
        train(NextTokenTask(start_model()), CFG, train_data, out / f"zero{stage}", val_data=val_data, progress=False,
              deepspeed_config=DS_CONFIGS / f"zero{stage}.json")
    for stage in (2, 3):  # stopped after 3 steps, resumed from other weights (the checkpoint's replace them)
        for cfg, model, resume in ((dataclasses.replace(CFG, **HALF), start_model(), False),
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
    # a new text model under ZeRO-3, and its twin in the plain trainer: `text generate` opens the first
    new_config = out / "new_text.json"
    new_config.write_text(json.dumps(NEW_TEXT_CONFIG))
    train_text(new_config, data_dir, out / "text_zero3", progress=False, deepspeed_config=DS_CONFIGS / "zero3.json")
    train_text(new_config, data_dir, out / "text_plain", progress=False)


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


def run_together(single, pair, out):
    """One process of kind `single` and two ranks of kind `pair`, side by side, to the end."""
    pair_port = free_port()
    procs = [start(single, out / "data", out, 0, 1, free_port()),
             start(pair, out / "data", out, 0, 2, pair_port), start(pair, out / "data", out, 1, 2, pair_port)]
    for proc, log in procs:
        proc.wait(timeout=300)
        log.close()
        if proc.returncode:
            pytest.fail(f"{log.name} failed:\n" + Path(log.name).read_text()[-4000:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepspeed")
    write_dataset(out / "data", {"train": patterned_docs(40, 0), "val": patterned_docs(5, 1)})
    run_together("single", "pair", out)
    for name, source, _ in [r for kind in RESUMES.values() for r in kind]:
        shutil.copytree(out / source, out / name)
    run_together("resume_single", "resume_pair", out)
    return out


def losses(run, key="loss"):
    return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if key in r]


def assert_same_weights(run, ref, rtol=WEIGHT_RTOL):
    """model.safetensors of `run` loads and holds `ref`'s weights, within rtol of each tensor's largest value."""
    ours = load_model(run / "model.safetensors").state_dict()
    for name, p in load_model(ref / "model.safetensors").state_dict().items():
        assert ours[name].shape == p.shape, name  # ZeRO-3 must have gathered the full tensors
        assert (ours[name] - p).abs().max() <= rtol * p.abs().max(), name


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
    # the run is ZeRO-1's: resumed under ZeRO-2, its shards are read by our conversion, not DeepSpeed
    for name, stage in (("mp_rank_00_model_states.pt", 1), ("zero_pp_rank_0_mp_rank_00_optim_states.pt", 1),
                        ("rng_rank0.pt", 1), ("zero_pp_rank_0_mp_rank_00_optim_states.pt", 2)):
        case = tmp_path / f"zero{stage}" / name
        run = Path(shutil.copytree(runs / "resumed", case / "run"))
        target = run / "deepspeed" / "step6" / name
        plant_payload(target, case / "PWNED")
        command = [sys.executable, "-m", "eaglefinch", "text", "train", "--config", str(runs / "text.json"),
                   "--data", str(runs / "data"), "--out", str(run), "--init", str(runs / "other.safetensors"),
                   "--resume", "--deepspeed", f"deepspeed/zero{stage}"]
        resumes.append((case, target, subprocess.Popen(command, cwd=ROOT, env=rank_env(0, 1, free_port()), text=True,
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    for case, target, proc in resumes:
        _, stderr = proc.communicate(timeout=300)
        assert not (case / "PWNED").exists(), f"the pickle's code in {target} ran"
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


def assert_same_run(run, ref, loss_rtol=LOSS_RTOL, weight_rtol=WEIGHT_RTOL):
    """`run` logged the losses of `ref` (each within loss_rtol) at the same steps, and ends with its
    weights (within weight_rtol; None: not compared)."""
    for key in ("loss", "val_loss"):
        ours, theirs = losses(run, key), losses(ref, key)
        assert [s for s, _ in ours] == [s for s, _ in theirs], key
        for (_, a), (_, b) in zip(theirs, ours):
            assert math.isclose(a, b, rel_tol=loss_rtol), (key, theirs, ours)
    if weight_rtol is not None:
        assert_same_weights(run, ref, weight_rtol)


def test_two_ranks_equal_one_process_with_the_global_batch(runs):
    """Two ranks (rank 1 initialised differently) train like one process on both ranks' windows: the
    global batch is drawn alike whatever the number of processes (`rank_batch`)."""
    assert [s for s, _ in losses(runs / "pair")] == list(range(1, 7))
    assert losses(runs / "pair")[0] != losses(runs / "zero1")[0]  # eight windows, not rank 0's four
    assert_same_run(runs / "pair", runs / "ref_pair")
    tokens_per_s = [r["tokens_per_s"] for r in read_metrics(runs / "pair" / "metrics.jsonl") if "loss" in r]
    assert len(tokens_per_s) == 6  # rank 0 alone logs


@pytest.mark.parametrize("name, source, ds", [r for kind in RESUMES.values() for r in kind])
def test_resume_on_another_number_of_processes_continues_the_run(runs, name, source, ds):
    """Stopped after 3 steps on two ranks (ZeRO-1, 2, 3) and resumed on one process (the plain
    trainer; DeepSpeed ZeRO-2; ZeRO-1), or stopped in the plain trainer and resumed on two ZeRO-3
    ranks, at the same global batch: steps 4 to 6 are the uninterrupted run's. A LoRA run's frozen
    base comes back from ZeRO-3's fragments; a bf16 run's files (a GPU's) convert too."""
    run = runs / name
    assert [s for s, _ in losses(run)] == list(range(1, 7))
    if name.startswith("bf16"):
        assert (runs / source / "deepspeed" / "step3" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()
        assert_same_run(run, runs / "pair_bf16_z3", loss_rtol=BF16_LOSS_RTOL, weight_rtol=None)
    elif name.startswith("lora"):
        assert_same_run(run, runs / "lora_ref_pair")
        assert (run / "adapters.safetensors").exists()
    else:
        assert_same_run(run, runs / "ref_pair")
        assert_same_run(run, runs / "pair")
    # one kind of checkpoint is left: the one the resuming process wrote
    assert (run / "checkpoint.pt").exists() == (ds is None)
    assert (run / "deepspeed").exists() == (ds is not None)


def test_resume_of_another_layout_refuses_another_model(runs, tmp_path):
    """A DeepSpeed checkpoint whose parameters are not the resuming model's: one error naming them."""
    run = Path(shutil.copytree(runs / "pair_z2_half", tmp_path / "run"))
    model = start_model()
    model.add_tuned_state()   # a parameter the checkpoint has no state for
    task = NextTokenTask(model)
    with pytest.raises(CheckpointError, match=r"deepspeed/step3: has no optimizer state for model\.blocks\.0\.att\.time_state"):
        train(task, PAIR_CFG, TokenDataset(runs / "data", "train"), run, resume=True, progress=False)


def test_a_zero3_text_run_opens_with_generate(runs):
    """The run folder a ZeRO-3 run writes (each weight gathered from its shards) is complete: `text
    generate` opens it and continues a prompt greedily as the plain trainer's twin run does."""
    from eaglefinch.text.generate import generate_text
    from eaglefinch.text.run import TextRun

    assert_same_weights(runs / "text_zero3", runs / "text_plain")
    model, tokenizer = TextRun.open(runs / "text_plain").load()
    texts, _ = generate_text(model, [PROMPT], 8, SamplerConfig(temperature=0.0), tokenizer=tokenizer)
    command = [sys.executable, "-m", "eaglefinch", "text", "generate", "--checkpoint", str(runs / "text_zero3"),
               "--prompt", PROMPT, "--max-tokens", "8", "--temperature", "0"]
    done = subprocess.run(command, cwd=ROOT, env=rank_env(0, 1, free_port()), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert done.stdout.decode() == PROMPT + texts[0] + "\n"
    assert len(tokenizer.encode(texts[0])) >= 4   # it generated, and no stop ended it at once


class SampleBatchOnly:
    """Data with `sample_batch` alone (as visual's): `rank_batch` draws the global batch and keeps its rows."""

    def __init__(self, data):
        self.data = data

    def sample_batch(self, batch_size, ctx_len, generator):
        batch = self.data.sample_batch(batch_size, ctx_len, generator)
        return SpansBatch(batch.inputs, batch.targets, spans=[(i, i + 1) for i in range(batch_size)])


@dataclasses.dataclass(frozen=True)
class SpansBatch(Batch):
    spans: list
    pixels: torch.Tensor | None = None


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_the_ranks_share_one_global_batch(tmp_path, world_size):
    """The windows of a step do not depend on the number of processes: the ranks' batches, in rank
    order, are one process's batch of all of them, step after step. Data with `sample_batch` alone
    gives each rank the same rows, every field cut."""
    data, _ = write_dataset(tmp_path, {"train": patterned_docs(40, 0), "val": patterned_docs(2, 1)})
    cfg = dataclasses.replace(CFG, batch_size=3)
    one = torch.Generator().manual_seed(7)
    ranks = [torch.Generator().manual_seed(7) for _ in range(world_size)]   # every rank seeds alike
    for _ in range(3):
        whole = rank_batch(data, dataclasses.replace(cfg, batch_size=3 * world_size), one)
        parts = [rank_batch(data, cfg, g, r, world_size) for r, g in enumerate(ranks)]
        assert torch.equal(torch.cat([p.inputs for p in parts]), whole.inputs)
        assert torch.equal(torch.cat([p.targets for p in parts]), whole.targets)
        assert all(not torch.equal(parts[0].inputs, p.inputs) for p in parts[1:])
    for rank in range(world_size):
        ours = rank_batch(data, cfg, torch.Generator().manual_seed(7), rank, world_size)
        rows = rank_batch(SampleBatchOnly(data), cfg, torch.Generator().manual_seed(7), rank, world_size)
        assert torch.equal(rows.inputs, ours.inputs) and torch.equal(rows.targets, ours.targets)
        assert rows.spans == [(i, i + 1) for i in range(3 * rank, 3 * rank + 3)] and rows.pixels is None


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
