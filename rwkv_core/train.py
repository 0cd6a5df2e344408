"""One training loop for every domain: official RWKV optimizer recipe, resumable, logged.

A domain supplies a *task*: an nn.Module holding the model (`task.model`, an RWKV) whose
`forward(batch)` returns the scalar loss, and data whose `sample_batch(B, T, generator)` returns
a batch: a tuple whose first element is the [B, T] input ids (its size counts tokens/s); tensors in
it are moved to the device, other entries are passed as they are. `NextTokenTask` (language
modelling over any token vocabulary, batches (inputs, targets)) serves text and music; visual
brings its own task with image tensors and spans in the batch. Every trainable parameter of the
task is optimised (a visual projector too), in the official parameter groups.

Under the `deepspeed` (or torchrun) launcher, `train(..., deepspeed_config=...)` runs the same loop data
parallel with ZeRO stage 1/2/3 and bf16 (`configs/deepspeed/`); see `train_deepspeed`.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import atomic_path
from .config import dataclass_from_dict


@dataclass
class TrainConfig:
    max_steps: int = 1000
    decay_steps: int | None = None    # length of the cosine schedule; default max_steps (so a run can stop early and resume on the same schedule)
    batch_size: int = 8
    ctx_len: int = 512
    lr_init: float = 6e-4
    lr_final: float = 6e-5
    warmup_steps: int = 10
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    l2wrap: bool = True
    grad_checkpointing: bool = False
    compile: bool = False
    train_mode: str = "full"          # "full", or "state": train only the initial WKV state
    log_every: int = 10
    val_every: int = 100
    val_batches: int = 8
    save_every: int = 100
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        cfg = dataclass_from_dict(cls, d, "train config")
        if cfg.train_mode not in ("full", "state"):
            raise ValueError(f"train_mode must be 'full' or 'state', got {cfg.train_mode!r}")
        return cfg


def train_config_with(d: dict, max_steps=None, seed=None) -> TrainConfig:
    """The "train" section of a run config, with the command line's --max-steps / --seed on top.
    --max-steps stops the run early; the lr schedule keeps the config's length, so a run stopped
    there and resumed follows the same schedule as one that never stopped."""
    cfg = TrainConfig.from_dict(d)
    if max_steps is not None:
        cfg.decay_steps = cfg.decay_steps or cfg.max_steps
        cfg.max_steps = max_steps
    if seed is not None:
        cfg.seed = seed
    return cfg


def load_splits(data_dir, ctx_len):
    """(train, val) TokenDatasets of a prepared folder; val is None when absent or shorter than one window."""
    from .data import TokenDataset
    train_data = TokenDataset(data_dir, "train")
    val_data = TokenDataset(data_dir, "val") if (Path(data_dir) / "val").exists() else None
    if val_data is not None and len(val_data) < ctx_len + 1:
        val_data = None
    return train_data, val_data


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward, adds to each position's largest logit a gradient of
    1e-4 * max_logit / (B*T): the gradient of 1e-4 * mean(max logit^2) / 2, keeping logits near 0."""

    @staticmethod
    def forward(ctx, loss, logits):
        ctx.save_for_backward(logits)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (logits,) = ctx.saved_tensors
        factor = 1e-4 / (logits.shape[0] * logits.shape[1])
        max_vals, max_ids = logits.max(dim=-1, keepdim=True)
        grad_logits = torch.zeros_like(logits).scatter_(-1, max_ids, max_vals * factor)
        return grad_output, grad_logits


class NextTokenTask(nn.Module):
    """Cross-entropy of the next token (plus the official L2Wrap) for an RWKV over any vocabulary."""

    def __init__(self, model, l2wrap=True):
        super().__init__()
        self.model, self.l2wrap = model, l2wrap

    def forward(self, batch):
        x, y = batch
        logits, _ = self.model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        return L2Wrap.apply(loss, logits) if self.l2wrap and self.training else loss


def param_groups(module, cfg: TrainConfig):
    """Official groups (rwkv-math.md §2.5) over the trainable parameters of `module` (a task or a
    model): time_decay* at 2x lr; no weight decay on 1-D tensors, time_* and the LoRA matrices;
    weight decay (if any) on the other matrices and time_state."""
    groups = {"2x": [], "1x": [], "decay": []}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        short = name.rsplit(".", 1)[-1]
        if short.startswith("time_decay") and not short.endswith(("_w1", "_w2")):
            groups["2x"].append(p)
        elif cfg.weight_decay > 0 and (short == "time_state" or (p.dim() >= 2 and not short.startswith("time_"))):
            groups["decay"].append(p)
        else:
            groups["1x"].append(p)
    return [dict(params=groups["2x"], lr_scale=2.0, weight_decay=0.0),
            dict(params=groups["1x"], lr_scale=1.0, weight_decay=0.0),
            dict(params=groups["decay"], lr_scale=1.0, weight_decay=cfg.weight_decay)]


def lr_at(step, cfg: TrainConfig) -> float:
    """Cosine from lr_init to lr_final over decay_steps (default max_steps); the first warmup_steps
    scale it by 0.2 + 0.8 * step / warmup_steps, as the official trainer does."""
    progress = min(step / max((cfg.decay_steps or cfg.max_steps) - 1, 1), 1.0)
    lr = cfg.lr_final + 0.5 * (cfg.lr_init - cfg.lr_final) * (1 + math.cos(math.pi * progress))
    if step < cfg.warmup_steps:
        lr *= 0.2 + 0.8 * step / cfg.warmup_steps
    return lr


def prepare_for_mode(task, mode):
    """'state' tuning: add a zero initial state if the model has none and train only that."""
    if mode == "state":
        task.model.add_tuned_state()
        for name, p in task.named_parameters():
            p.requires_grad_(name.endswith("att.time_state"))


def batch_to(batch, device):
    """The batch tuple with its tensors on `device` (spans, lists and None pass through)."""
    return tuple(b.to(device) if isinstance(b, torch.Tensor) else b for b in batch)


class Run:
    """The files of a training run folder."""

    def __init__(self, out_dir):
        self.dir = Path(out_dir)
        self.checkpoint = self.dir / "checkpoint.pt"       # everything needed to resume
        self.model = self.dir / "model.safetensors"        # weights + config, for inference
        self.metrics = self.dir / "metrics.jsonl"
        self.plot = self.dir / "loss.png"
        self.deepspeed = self.dir / "deepspeed"            # DeepSpeed's sharded checkpoints (one folder per tag)


def save_checkpoint(run: Run, task, optimizer, step, data_rng, extra):
    state = {"task": task.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "data_rng": data_rng.get_state(), "torch_rng": torch.get_rng_state(), **extra}
    with atomic_path(run.checkpoint) as tmp:
        torch.save(state, tmp)
    task.model.save_pretrained(run.model)


def load_checkpoint(run: Run, task, optimizer, data_rng) -> int:
    if not run.checkpoint.exists():
        raise FileNotFoundError(f"cannot resume: {run.checkpoint} does not exist")
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    task.load_state_dict(state["task"])
    optimizer.load_state_dict(state["optimizer"])
    data_rng.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


def append_metrics(run: Run, record: dict):
    with open(run.metrics, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(run: Run):
    """loss.png: training and validation loss against step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = read_metrics(run.metrics)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label in ((train, "train"), (val, "validation")):
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if label == "validation" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(run.plot) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


@torch.no_grad()
def evaluate(task, val_data, cfg: TrainConfig, device, autocast) -> float:
    task.eval()
    losses = []
    for i, batch in enumerate(val_data.iter_batches(cfg.batch_size, cfg.ctx_len)):
        if i >= cfg.val_batches:
            break
        with autocast:
            losses.append(task(batch_to(batch, device)).item())
    task.train()
    return sum(losses) / len(losses)


def train(task, cfg: TrainConfig, train_data, out_dir, *, val_data=None, resume=False, extra=None,
          progress=True, deepspeed_config=None):
    """Train `task` on windows drawn from `train_data` (anything with `sample_batch(B, T, generator)`);
    `val_data` needs `iter_batches(B, T)`. Writes the run folder; returns the last step's loss.

    Resuming restores model, optimizer, step, data sampler and RNG: on the CPU the losses of the
    resumed steps are bit-identical to an uninterrupted run's.

    With `deepspeed_config` (a dict or a JSON path) the run goes through `train_deepspeed`.
    """
    if deepspeed_config is not None:
        return train_deepspeed(task, cfg, train_data, out_dir, deepspeed_config, val_data=val_data,
                               resume=resume, extra=extra, progress=progress)
    from tqdm import tqdm

    run = Run(out_dir)
    run.dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(cfg.seed)
    prepare_for_mode(task, cfg.train_mode)
    task.model.grad_checkpointing = cfg.grad_checkpointing
    task.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(task, cfg), lr=cfg.lr_init, betas=(cfg.beta1, cfg.beta2),
                                  eps=cfg.adam_eps)
    step = 0
    if resume:
        step = load_checkpoint(run, task, optimizer, data_rng)
        if run.metrics.exists():  # forget what was logged after the checkpoint
            kept = [r for r in read_metrics(run.metrics) if r["step"] <= step]
            run.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
    elif run.metrics.exists():
        run.metrics.unlink()
    forward = torch.compile(task) if cfg.compile else task
    extra = {"train_config": dataclasses.asdict(cfg), **(extra or {})}
    loss = float("nan")
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        batch = train_data.sample_batch(cfg.batch_size, cfg.ctx_len, data_rng)
        with autocast:
            loss_t = forward(batch_to(batch, device))
        loss_t.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_t.item()
        tokens_per_s = batch[0].numel() / (time.perf_counter() - t0)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        if step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps:
            append_metrics(run, {"step": step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s})
        if val_data is not None and (step % cfg.val_every == 0 or step == cfg.max_steps):
            val_loss = evaluate(task, val_data, cfg, device, autocast)
            append_metrics(run, {"step": step, "val_loss": val_loss})
            bar.write(f"step {step}: val_loss {val_loss:.4f}")
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_checkpoint(run, task, optimizer, step, data_rng, extra)
    bar.close()
    if run.metrics.exists():
        plot_losses(run)
    return loss


# ---------------------------------------------------------------------------------------------
# DeepSpeed: the same loop, data parallel over the processes of the `deepspeed` (or torchrun) launcher


def is_main_process() -> bool:
    """True on rank 0, and in a plain single-process run (the launchers give every process its RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank `rank`'s data sampler: rank 0 draws exactly the single-process trainer's batches,
    every other rank a stream of its own. A CPU generator keeps only the low 32 bits of its seed, so
    the ranks are spread by an odd multiplier modulo 2**32 (distinct for every rank)."""
    return (seed + rank * 0x9E3779B9) % 2**32


def complete_deepspeed_config(ds_config, cfg: TrainConfig, world_size: int, on_gpu: bool) -> dict:
    """The DeepSpeed config of a run: `ds_config` (dict or JSON path) with the keys TrainConfig owns filled in.

    Batch size (per process), clipping and the lr schedule have one source of truth, the training
    config: those DeepSpeed keys may be left out or "auto", and an explicit value must agree.
    `"bf16": {"enabled": "auto"}` means bf16 on the GPU and fp32 on the CPU.
    """
    if isinstance(ds_config, dict):
        ds = json.loads(json.dumps(ds_config))  # a deep copy
    else:
        try:
            ds = json.loads(Path(ds_config).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{ds_config}: cannot read the DeepSpeed config ({e})") from None
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ValueError(f"DeepSpeed config: remove {key!r}; the trainer brings its own AdamW and lr schedule")
    owned = {"train_batch_size": cfg.batch_size * world_size, "train_micro_batch_size_per_gpu": cfg.batch_size,
             "gradient_accumulation_steps": 1, "gradient_clipping": cfg.grad_clip}
    for key, value in owned.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            raise ValueError(f"DeepSpeed config: {key} = {given!r} disagrees with the training config ({value}); "
                             f"leave it out or set it to \"auto\"")
        ds[key] = value
    bf16 = ds.get("bf16", {})
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = on_gpu
    return ds


def save_deepspeed_checkpoint(run: Run, engine, task, step, data_rng, extra, rank):
    """Every rank: its part of DeepSpeed's checkpoint (folder `deepspeed/step<N>`) and its RNG states.
    Rank 0: the `latest` pointer, then model.safetensors (the weights the run computes with)."""
    import deepspeed
    import torch.distributed as dist

    tag = f"step{step}"
    engine.save_checkpoint(run.deepspeed, tag=tag, client_state={"step": step, **extra}, save_latest=False)
    # each rank samples its own batches, so each keeps its own sampler state
    torch.save({"data_rng": data_rng.get_state(), "torch_rng": torch.get_rng_state()},
               run.deepspeed / tag / f"rng_rank{rank}.pt")
    # DeepSpeed writes `latest` in place and without waiting for the other ranks' shards. A resume
    # must only ever see complete tags: wait for every rank, then switch `latest` with one rename.
    dist.barrier()
    if rank == 0:
        with atomic_path(run.deepspeed / "latest") as tmp:
            tmp.write_text(tag)
        for old in run.deepspeed.iterdir():  # only the newest checkpoint is kept, as in the plain trainer
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old)
    # ZeRO-3 keeps a shard of each weight per rank: gather them (a collective, so on every rank)
    with deepspeed.zero.GatheredParameters(list(task.model.parameters())):
        if rank == 0:
            task.model.save_pretrained(run.model)


def load_deepspeed_checkpoint(run: Run, engine, data_rng, rank, world_size) -> int:
    """Restore weights, optimizer, step and this rank's RNG states from the tag `latest` names."""
    latest = run.deepspeed / "latest"
    if not latest.exists():
        raise FileNotFoundError(f"cannot resume: {latest} does not exist")
    tag = latest.read_text().strip()
    saved_ranks = len(list((run.deepspeed / tag).glob("rng_rank*.pt")))
    if saved_ranks != world_size:  # each rank needs its own sampler state
        raise ValueError(f"cannot resume: {run.deepspeed / tag} was written by {saved_ranks} processes, "
                         f"this run has {world_size}; launch the same number")
    _, client_state = engine.load_checkpoint(run.deepspeed, tag=tag)
    rng = torch.load(run.deepspeed / tag / f"rng_rank{rank}.pt", weights_only=True)
    data_rng.set_state(rng["data_rng"])
    torch.set_rng_state(rng["torch_rng"])
    return client_state["step"]


def train_deepspeed(task, cfg: TrainConfig, train_data, out_dir, ds_config, *, val_data=None, resume=False,
                    extra=None, progress=True):
    """`train` under DeepSpeed, one process per GPU (or one CPU process, gloo): data parallel, the ZeRO
    stage and bf16 from `ds_config` (see `complete_deepspeed_config`).

    Each rank draws `cfg.batch_size` windows a step from its own sampler (`rank_seed`); the logged loss
    is the mean over ranks, tokens/s counts all ranks. Rank 0 alone logs, plots and writes
    model.safetensors. `resume` needs the same number of processes as the run it continues.
    """
    import deepspeed
    import torch.distributed as dist
    from tqdm import tqdm

    if cfg.compile:
        raise ValueError("compile is not supported under DeepSpeed; set \"compile\": false")
    # on the CPU DeepSpeed would otherwise compile (g++, minutes) a shared-memory all-reduce; gloo does
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    ds = complete_deepspeed_config(ds_config, cfg, world_size, device.type == "cuda")
    run = Run(out_dir)
    run.dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(rank_seed(cfg.seed, rank))
    prepare_for_mode(task, cfg.train_mode)
    task.model.grad_checkpointing = cfg.grad_checkpointing
    task.to(device).train()
    groups = [g for g in param_groups(task, cfg) if g["params"]]  # ZeRO cannot partition an empty group
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr_init, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    # DeepSpeed broadcasts rank 0's weights, so every rank starts from the same model; ZeRO then
    # steps our AdamW on its own flat fp32 copies, group by group (each keeps its lr_scale)
    engine, *_ = deepspeed.initialize(model=task, optimizer=optimizer, config=ds)
    step = 0
    if resume:
        step = load_deepspeed_checkpoint(run, engine, data_rng, rank, world_size)
        if rank == 0 and run.metrics.exists():  # forget what was logged after the checkpoint
            kept = [r for r in read_metrics(run.metrics) if r["step"] <= step]
            run.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
    elif rank == 0 and run.metrics.exists():
        run.metrics.unlink()
    extra = {"train_config": dataclasses.asdict(cfg), "deepspeed_config": ds, **(extra or {})}
    no_autocast = contextlib.nullcontext()  # bf16 mode casts the weights themselves
    loss = float("nan")
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not progress or rank != 0, unit="step",
               dynamic_ncols=True)
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:  # looked up each step: loading a checkpoint replaces the list
            group["lr"] = lr * group["lr_scale"]
        batch = train_data.sample_batch(cfg.batch_size, cfg.ctx_len, data_rng)
        loss_t = engine(batch_to(batch, device))
        engine.backward(loss_t)
        engine.step()  # averages the gradients over ranks, clips them (gradient_clipping), steps AdamW
        loss_sum = loss_t.detach().clone()
        dist.all_reduce(loss_sum)  # every rank has the same batch size: the global batch's loss is the mean
        loss = loss_sum.item() / world_size
        tokens_per_s = batch[0].numel() * world_size / (time.perf_counter() - t0)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        if rank == 0 and (step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps):
            append_metrics(run, {"step": step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s})
        if val_data is not None and (step % cfg.val_every == 0 or step == cfg.max_steps):
            # every rank evaluates the same batches: under ZeRO-3 a forward pass is a collective
            val_loss = evaluate(task, val_data, cfg, device, no_autocast)
            if rank == 0:
                append_metrics(run, {"step": step, "val_loss": val_loss})
                bar.write(f"step {step}: val_loss {val_loss:.4f}")
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_deepspeed_checkpoint(run, engine, task, step, data_rng, extra, rank)
    bar.close()
    if rank == 0 and run.metrics.exists():
        plot_losses(run)
    return loss
