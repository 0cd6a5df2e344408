"""One training loop for every domain: official RWKV optimizer recipe, resumable, logged.

A domain supplies a *task*: an nn.Module holding the model (`task.model`, an RWKV) whose
`forward(batch)` returns the scalar loss. `NextTokenTask` (language modelling over any token
vocabulary) serves text and music; visual brings its own.
"""
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import atomic_path


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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown train config keys {unknown}; known keys: {sorted(known)}")
        cfg = cls(**d)
        if cfg.train_mode not in ("full", "state"):
            raise ValueError(f"train_mode must be 'full' or 'state', got {cfg.train_mode!r}")
        return cfg


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


def param_groups(model, cfg: TrainConfig):
    """Official groups (rwkv-math.md §2.5): time_decay* at 2x lr; no weight decay on 1-D tensors,
    time_* and the LoRA matrices; weight decay (if any) on the other matrices and time_state."""
    groups = {"2x": [], "1x": [], "decay": []}
    for name, p in model.named_parameters():
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


def prepare_for_mode(model, mode):
    """'state' tuning: add a zero initial state if the model has none and train only that."""
    if mode == "state":
        model.add_tuned_state()
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("att.time_state"))


class Run:
    """The files of a training run folder."""

    def __init__(self, out_dir):
        self.dir = Path(out_dir)
        self.checkpoint = self.dir / "checkpoint.pt"       # everything needed to resume
        self.model = self.dir / "model.safetensors"        # weights + config, for inference
        self.metrics = self.dir / "metrics.jsonl"
        self.plot = self.dir / "loss.png"


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
    for i, (x, y) in enumerate(val_data.iter_batches(cfg.batch_size, cfg.ctx_len)):
        if i >= cfg.val_batches:
            break
        with autocast:
            losses.append(task((x.to(device), y.to(device))).item())
    task.train()
    return sum(losses) / len(losses)


def train(task, cfg: TrainConfig, train_data, out_dir, *, val_data=None, resume=False, extra=None,
          progress=True):
    """Train `task` on windows drawn from `train_data` (anything with `sample_batch(B, T, generator)`);
    `val_data` needs `iter_batches(B, T)`. Writes the run folder; returns the last step's loss.

    Resuming restores model, optimizer, step, data sampler and RNG: on the CPU the losses of the
    resumed steps are bit-identical to an uninterrupted run's.
    """
    from tqdm import tqdm

    run = Run(out_dir)
    run.dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(cfg.seed)
    prepare_for_mode(task.model, cfg.train_mode)
    task.model.grad_checkpointing = cfg.grad_checkpointing
    task.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(task.model, cfg), lr=cfg.lr_init, betas=(cfg.beta1, cfg.beta2),
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
        x, y = train_data.sample_batch(cfg.batch_size, cfg.ctx_len, data_rng)
        with autocast:
            loss_t = forward((x.to(device), y.to(device)))
        loss_t.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_t.item()
        tokens_per_s = x.numel() / (time.perf_counter() - t0)
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
