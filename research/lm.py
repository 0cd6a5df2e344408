"""Byte-level language models on the standard library's source: the training and scoring that
ablation, lora-rank and longctx share.

An experiment's setting (one entry of its SCALES) has a "model" section (RWKVConfig fields), a
"train" section (TrainConfig fields), "data_mb" (how much of the corpus) and "eval_tokens" (held-out
targets scored). Every model of an experiment is trained on the same data for the same steps; the
seed sets the order of the training windows (the same for every model) and the initial weights
(torch.manual_seed(seed) before each model is built: models whose parameters are drawn alike start
alike, such as the ablation's Finch variants; a model of other shapes draws other numbers).
"""
import statistics
import tempfile
import time

import torch
from tqdm import tqdm

from eaglefinch.rwkv_core import RWKVConfig
from eaglefinch.rwkv_core.config import TrainConfig
from eaglefinch.rwkv_core.heldout import heldout_nats
from eaglefinch.rwkv_core.run import Run
from eaglefinch.rwkv_core.train import NextTokenTask, train

from .data import VOCAB_SIZE, stdlib_splits

EVAL_BATCH = 16


def model_config(setting: dict, **changes) -> RWKVConfig:
    """The setting's model (byte vocabulary, its training ctx_len), with `changes` on top."""
    return RWKVConfig(**{**setting["model"], "vocab_size": VOCAB_SIZE, "ctx_len": setting["train"]["ctx_len"],
                         **changes})


def train_config(setting: dict, seed: int, steps: int | None = None) -> TrainConfig:
    """The setting's training config for one seed; `steps` replaces its max_steps (a quick check).
    One checkpoint at the end, about 50 logged losses, no validation during training."""
    section = {**setting["train"], **({"max_steps": steps} if steps else {})}
    n = section["max_steps"]
    return TrainConfig(**section, seed=seed, log_every=max(1, n // 50), save_every=n, val_every=n)


def corpus(setting: dict) -> dict:
    """(train, val) streams of the setting's corpus and a description of it for results.json."""
    train_data, val_data = stdlib_splits(setting["data_mb"])
    about = {"corpus": "Python standard library source, bytes", "train_bytes": len(train_data),
             "val_bytes": len(val_data)}
    return {"train": train_data, "val": val_data, "about": about}


def train_model(build, setting: dict, seed: int, data: dict, device, steps: int | None = None):
    """Train the model `build()` makes (called under torch.manual_seed(seed)) on data["train"].

    Returns (the trained model, {"params", "train_loss": mean of the last tenth of logged losses,
    "curve": [[step, loss], ...], "seconds"}). The run folder is temporary: the results keep the curve."""
    cfg = train_config(setting, seed, steps)
    torch.manual_seed(seed)
    model = build()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eaglefinch-research-") as work:
        train(NextTokenTask(model, cfg.l2wrap), cfg, data["train"], work, progress=False, device=device)
        curve = [[r["step"], r["loss"]] for r in Run(work).read_metrics() if "loss" in r]
    tail = [loss for _, loss in curve[-max(1, len(curve) // 10):]]
    return model, {"params": model.num_params(), "train_loss": statistics.fmean(tail), "curve": curve,
                   "seconds": time.perf_counter() - start}


def heldout_loss(model, setting: dict, data: dict) -> float:
    """Mean nats per byte on the held-out stream, in windows of the training ctx_len from a fresh state."""
    nats, counts = heldout_nats(model, data["val"], setting["train"]["ctx_len"], EVAL_BATCH,
                                max_tokens=setting["eval_tokens"])
    return nats / int(counts.sum())


def runs_bar(total: int, desc: str):
    """The progress bar of an experiment: one step per trained model."""
    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)


def seeds_of(args) -> list[int]:
    return list(range(args.seeds))


def mean_curve(curves) -> list:
    """[[step, mean loss over seeds], ...] of curves logged at the same steps."""
    return [[points[0][0], statistics.fmean(p[1] for p in points)] for points in zip(*curves)]
