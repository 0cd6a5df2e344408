"""One training loop for every domain: the official RWKV optimizer recipe, resumable, logged.

A domain supplies a *task* (a `Task`: an nn.Module holding the RWKV as `task.model`, whose
`forward(batch)` returns the scalar loss) and data whose `sample_batch(B, T, generator)` returns a
`Batch` (`rwkv_core.data`; visual adds images to it). `NextTokenTask` (language modelling over
any token vocabulary) serves text and music; visual brings its own task. Every trainable
parameter of the task is optimised (a visual projector too), in the official parameter groups.

With `segment_len` in the config, a NextTokenTask backpropagates each window segment by segment, the
state carried (`NextTokenTask.backward_segments`): the gradients of one pass, one segment's memory.
A NaN or infinite loss stops training before it reaches the weights (`NonFiniteLoss`).

The loop is the same on one device and under DeepSpeed; what differs (set-up, backward, step,
saving and loading a checkpoint) sits behind a small seam, `LocalProcess` and `DeepSpeedProcess`.
Under the `deepspeed` (or torchrun) launcher, `train(..., deepspeed_config=...)` runs data parallel
with ZeRO stage 1/2/3 and bf16 (`configs/deepspeed/`). The data order does not depend on the number
of processes (`rank_batch`), and a run resumes on any number of processes, with or without DeepSpeed
(`rwkv_core.full_state`).
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, read_torch_file, restoring_from, save_model
from .config import TrainConfig
from .files import atomic_path, remove_stale_temporaries, write_text_atomic
from .lora import add_adapters, has_adapters, is_adapter_key, is_small, merge_adapters, save_adapters
from .loss import head_loss
from .run import MetricsLog, Run
from .state import RWKVState


class NonFiniteLoss(RuntimeError):
    """A step's training loss is NaN or infinite: training stops before that step changes the weights,
    and the run folder keeps its last checkpoint (`saved_step`; None when none was written yet)."""

    def __init__(self, step: int, loss: float, checkpoint: Path, saved_step: int | None):
        self.step, self.loss, self.checkpoint, self.saved_step = step, loss, checkpoint, saved_step
        if saved_step is None:
            kept = "no checkpoint was written yet: start the run again"
        else:
            kept = f"the last good checkpoint, {checkpoint} at step {saved_step}, is kept: continue from it with --resume"
        super().__init__(f"step {step}: the training loss is {loss} (not finite), so training stopped before "
                         f"this step changed the weights; {kept} after lowering lr_init in the config")


def load_splits(data_dir, ctx_len):
    """(train, val) TokenDatasets of a prepared folder; val is None when absent or shorter than one window."""
    from .data import TokenDataset
    train_data = TokenDataset(data_dir, "train")
    val_data = TokenDataset(data_dir, "val") if (Path(data_dir) / "val").exists() else None
    if val_data is not None and len(val_data) < ctx_len + 1:
        val_data = None
    return train_data, val_data


class Task(nn.Module):
    """What the trainer trains: `self.model` (an RWKV), `forward(batch)` -> scalar loss, and
    `save_pretrained(run)`, which writes the files inference needs (at every checkpoint).

    The model goes to model.safetensors. With LoRA adapters, that file is the frozen base, written
    at the first checkpoint of the process only, and the adapters go to adapters.safetensors at
    every one, with the per-channel parameters if they train (lora_train_small; those in the base
    file are then the first checkpoint's, and the adapters file's replace them on loading): the run
    folder opens as base plus adapters, unmerged."""

    base_saved = False

    def save_pretrained(self, run: Run) -> None:
        lora = has_adapters(self.model)
        if not (lora and self.base_saved):
            # adapters in the folder go first: never for a moment beside a base they were not trained on
            run.adapters.unlink(missing_ok=True)
            save_model(self.model, run.model_file)   # with adapters: the base weights only
            self.base_saved = True
        if lora:
            trains_small = any(p.requires_grad and is_small(name) for name, p in self.model.named_parameters())
            save_adapters(self.model, run.adapters, small=trains_small)


class NextTokenTask(Task):
    """Cross-entropy of the next token (plus the official L2Wrap) for an RWKV over any vocabulary.

    `chunked_loss` computes head and loss in chunks of tokens, never holding the whole logits
    (`rwkv_core.loss`); False: the plain twin, all logits at once."""

    def __init__(self, model, l2wrap=True, chunked_loss=True):
        super().__init__()
        self.model, self.l2wrap, self.chunked_loss = model, l2wrap, chunked_loss

    def forward(self, batch):
        return self.sequence_loss(batch.inputs, batch.targets, None, batch.num_tokens)[0]

    def sequence_loss(self, inputs, targets, state, num_tokens):
        """(loss, new state) of inputs [B, T] from `state` (None: the model's initial state): the summed
        cross-entropy of targets [B, T] divided by `num_tokens` (and L2Wrap's factor too), so
        that the losses of the parts of a longer batch add up to the whole batch's mean."""
        hidden, state = self.model.forward_hidden(inputs, state)
        loss = head_loss(hidden.flatten(0, 1), self.model.head.weight, targets.flatten(), num_tokens,
                         l2wrap=self.l2wrap and self.training, chunked=self.chunked_loss,
                         compile=self.model.compiled)
        return loss, state

    def loss_in_segments(self, batch, segment_len):
        """The batch's loss read in segments of `segment_len` tokens, the state carried (no graph:
        for evaluation; training takes `backward_segments`)."""
        loss, state = 0.0, None
        with torch.no_grad():
            for a in range(0, batch.inputs.shape[1], segment_len):
                part, state = self.sequence_loss(batch.inputs[:, a:a + segment_len], batch.targets[:, a:a + segment_len],
                                                 state, batch.num_tokens)
                loss = loss + part
        return loss

    def backward_segments(self, batch, segment_len, autocast=contextlib.nullcontext()):
        """Backpropagate the batch's loss through its windows read as segments of `segment_len`
        tokens (the last may be shorter), the state carried from one to the next; returns the loss.

        The gradients are those of one pass over the whole windows (full backpropagation through
        time), but only one segment's activations are ever held: a forward without a graph keeps
        the state at each segment's start; then, from the last segment back, each segment is run
        again from its start state with a graph, and its loss and the gradient that reached its end
        state (from the segments after it) are backpropagated together. The gradient reaching its
        start state goes on to the segment before. Costs one more forward than a single pass."""
        T = batch.inputs.shape[1]
        bounds = [(a, min(a + segment_len, T)) for a in range(0, T, segment_len)]
        starts = [None]   # None: segment 0 starts from the model's initial state (a tuned one gets its gradient)
        with torch.no_grad(), autocast:
            for a, b in bounds[:-1]:
                starts.append(self.model.forward_hidden(batch.inputs[:, a:b], starts[-1])[1])
        losses, end_grads = [], None
        for (a, b), start in zip(reversed(bounds), reversed(starts)):
            if start is not None:
                start = RWKVState(*(t.detach().requires_grad_() for t in start.tensors))
            with autocast:
                loss, end = self.sequence_loss(batch.inputs[:, a:b], batch.targets[:, a:b], start, batch.num_tokens)
            outputs, grads = [loss], [None]
            for t, g in zip(end.tensors, end_grads or ()):
                if g is not None and t.requires_grad:
                    outputs.append(t)
                    grads.append(g)
            torch.autograd.backward(outputs, grads)
            end_grads = None if start is None else [t.grad for t in start.tensors]
            losses.append(loss.detach())
        return sum(losses)


def param_groups(module, cfg: TrainConfig):
    """Official groups (rwkv-math.md §2.5) over the trainable parameters of `module` (a task or a
    model): time_decay* at 2x lr; no weight decay on 1-D tensors, time_*, the Finch LoRA matrices
    and the adapters (lora_A, lora_B); weight decay (if any) on the other matrices and time_state.
    Empty groups are left out."""
    groups = {"2x": [], "1x": [], "decay": []}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        short = name.rsplit(".", 1)[-1]
        if short.startswith("time_decay") and not short.endswith(("_w1", "_w2")):
            groups["2x"].append(p)
        elif cfg.weight_decay > 0 and (short == "time_state" or (p.dim() >= 2 and not short.startswith("time_")
                                                                  and not is_adapter_key(name))):
            groups["decay"].append(p)
        else:
            groups["1x"].append(p)
    return [g for g in (dict(params=groups["2x"], lr_scale=2.0, weight_decay=0.0),
                        dict(params=groups["1x"], lr_scale=1.0, weight_decay=0.0),
                        dict(params=groups["decay"], lr_scale=1.0, weight_decay=cfg.weight_decay))
            if g["params"]]


def lr_at(step, cfg: TrainConfig) -> float:
    """Cosine from lr_init to lr_final over decay_steps (default max_steps); the first warmup_steps
    scale it by 0.2 + 0.8 * step / warmup_steps, as the official trainer does."""
    progress = min(step / max((cfg.decay_steps or cfg.max_steps) - 1, 1), 1.0)
    lr = cfg.lr_final + 0.5 * (cfg.lr_init - cfg.lr_final) * (1 + math.cos(math.pi * progress))
    if step < cfg.warmup_steps:
        lr *= 0.2 + 0.8 * step / cfg.warmup_steps
    return lr


def prepare_for_mode(task, cfg: TrainConfig):
    """Training starts from a plain model: adapters it was loaded with are merged into its weights.
    "state" tuning: add a zero initial state if the model has none and train only that.
    "lora": add adapters to cfg.lora_targets and train only them (with lora_train_small, also the
    per-channel parameters); the base weights get no gradient and no optimizer state."""
    merge_adapters(task.model)
    if cfg.train_mode == "state":
        task.model.add_tuned_state()
        for name, p in task.named_parameters():
            p.requires_grad_(name.endswith("att.time_state"))
    elif cfg.train_mode == "lora":
        add_adapters(task.model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_init)
        for name, p in task.named_parameters():
            p.requires_grad_(is_adapter_key(name) or (cfg.lora_train_small and is_small(name)))


def plot_losses(run: Run):
    """loss.png: training and validation loss against step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = run.read_metrics()
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
def evaluate(task, val_data, cfg: TrainConfig, proc) -> float:
    """The mean loss of the first `cfg.val_batches` batches of the validation windows in order, each
    of the global batch size (batch_size x world_size): the same windows whatever the number of
    processes. Process `proc` reads and scores its rows of each batch (`iter_indices`, `batch_at`),
    as `rank_batch` splits a training batch, and `proc.mean` averages the ranks' equal shares; a
    smaller last batch every rank scores whole (every rank runs every forward: under ZeRO-3 a
    forward is a collective)."""
    task.eval()
    B, W = cfg.batch_size, proc.world_size
    losses = []
    for i, indices in enumerate(val_data.iter_indices(B * W, cfg.ctx_len)):
        if i >= cfg.val_batches:
            break
        shared = W > 1 and len(indices) == B * W
        if shared:
            indices = indices[proc.rank * B:(proc.rank + 1) * B]
        batch = val_data.batch_at(indices, cfg.ctx_len).to(proc.device)
        with proc.autocast:  # in segments, as training reads them: memory grows with the segment there too
            loss = task(batch) if cfg.segment_len is None else task.loss_in_segments(batch, cfg.segment_len)
        losses.append(proc.mean(loss) if shared else loss.item())
    task.train()
    return sum(losses) / len(losses)


def make_optimizer(task, cfg: TrainConfig, fused=False):
    """AdamW over the official parameter groups of `task`; `fused`: one kernel for all the tensors
    (else PyTorch's default: the foreach kernels on CUDA). The parameters stay fp32: they are the
    master weights that autocast casts for the bf16 matmuls."""
    return torch.optim.AdamW(param_groups(task, cfg), lr=cfg.lr_init, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.adam_eps, fused=fused or None)


def prepare(task, cfg: TrainConfig, proc):
    """Set `task` up for training in process `proc` (LocalProcess or DeepSpeedProcess): the training
    mode, the model's per-block options (grad_checkpointing, compile), the device, the optimizer.
    Returns (the callable that computes a batch's loss, the optimizer)."""
    task.to(proc.device).train()
    prepare_for_mode(task, cfg)   # on the device: PiSSA's SVDs run there
    task.model.grad_checkpointing = cfg.grad_checkpointing
    task.model.compiled = cfg.compile
    optimizer = make_optimizer(task, cfg, fused=proc.fused_optimizer)
    return proc.setup(task, optimizer), optimizer


def train_step(proc, task, forward, batch, segment_len=None) -> float:
    """One optimizer step on `batch`: the loss under the process's autocast (the windows read in
    segments of `segment_len` tokens when given: `NextTokenTask.backward_segments`), backward,
    clipping and the optimizer step. Returns the loss (the mean over ranks). A loss that is not
    finite returns before the optimizer step, so the weights stay as they were (the caller stops).

    Its parts are named for profiles (`STEP_PARTS`; bench/train.py, bench/deepspeed_scaling.py)."""
    record = torch.profiler.record_function
    if segment_len is None:
        with record("forward"), proc.autocast:
            loss = forward(batch)
        with record("backward"):
            proc.backward(loss)
    else:
        with record("forward + backward in segments"):
            loss = task.backward_segments(batch, segment_len, proc.autocast)
    with record("loss to host"):   # the step's one host sync, before the step: a bad loss never reaches the weights
        loss = proc.mean(loss)
    if math.isfinite(loss):
        with record("optimizer step"):
            proc.step()
    return loss


# the names of a step's parts in a profile: the training loop's "batch" (drawing and moving it), then train_step's
STEP_PARTS = ("batch", "forward", "backward", "forward + backward in segments", "loss to host", "optimizer step")


def train(task, cfg: TrainConfig, train_data, out_dir, *, val_data=None, resume=False, extra=None,
          progress=True, deepspeed_config=None, device=None):
    """Train `task` on windows drawn from `train_data` (anything with `sample_batch(B, T, generator)`);
    `val_data` needs `iter_indices(B, T)` and `batch_at(indices, T)`. Writes the run folder; returns the
    last step's loss.
    `device`: where to train (default: the GPU if there is one, else the CPU; not with DeepSpeed).
    `progress`: a progress bar and each validation loss on the terminal (False: quiet).

    Resuming restores model, optimizer, step, data sampler and RNG: on the CPU the losses of the
    resumed steps are bit-identical to an uninterrupted run's.

    With `deepspeed_config` (a dict, a JSON path or a shipped name such as "deepspeed/zero1") every
    process of the launcher runs this, data parallel; rank 0 alone logs and writes the run's files
    (`DeepSpeedProcess`).

    A step whose loss is not finite raises `NonFiniteLoss` before the optimizer applies it and
    without saving: the run folder keeps its last checkpoint.
    """
    from tqdm import tqdm

    if cfg.segment_len is not None and not isinstance(task, NextTokenTask):
        raise ValueError(f"train segment_len: {type(task).__name__} cannot read its samples in segments; remove it")
    if device is not None and deepspeed_config is not None:
        raise ValueError("DeepSpeed places each rank on its own GPU: give no device")
    if cfg.segment_len is not None and deepspeed_config is not None:
        raise ValueError("train segment_len is not supported under DeepSpeed; remove it or train without --deepspeed")
    run = Run(out_dir)
    run.folder.mkdir(parents=True, exist_ok=True)
    proc = DeepSpeedProcess(deepspeed_config, cfg) if deepspeed_config is not None else LocalProcess(cfg, device)
    if proc.is_main:  # what a run killed mid-write left: the folder is this run's alone
        remove_stale_temporaries(run.folder)
        remove_stale_temporaries(run.deepspeed)
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(cfg.seed)   # the same on every rank: see `rank_batch`
    forward, optimizer = prepare(task, cfg, proc)
    step = proc.load(run, data_rng) if resume else 0
    saved_step = step if resume else None   # the step of the run folder's checkpoint
    metrics = MetricsLog(run, resume, step) if proc.is_main else None
    extra = {"train_config": dataclasses.asdict(cfg), **proc.extra, **(extra or {})}
    loss = float("nan")
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not progress or not proc.is_main, unit="step",
               dynamic_ncols=True)
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:  # looked up each step: loading a checkpoint may replace the list
            group["lr"] = lr * group["lr_scale"]
        batch = next_batch(train_data, cfg, data_rng, proc)
        loss = train_step(proc, task, forward, batch, cfg.segment_len)
        if not math.isfinite(loss):
            bar.close()
            raise NonFiniteLoss(step + 1, loss, proc.checkpoint_path(run), saved_step)
        tokens_per_s = batch.num_tokens * proc.world_size / (time.perf_counter() - t0)
        step += 1
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)   # drawn by update, at its rate
        bar.update(1)
        if proc.is_main and (step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps):
            metrics.add({"step": step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s})
        # the checkpoint comes before validation: a failing validation never costs the interval's work
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            proc.save(run, task, step, data_rng, extra)
            saved_step = step
            if proc.is_main:
                metrics.flush()
        if val_data is not None and (step % cfg.val_every == 0 or step == cfg.max_steps):
            val_loss = evaluate(task, val_data, cfg, proc)
            if proc.is_main:
                metrics.add({"step": step, "val_loss": val_loss})
                if progress:
                    bar.write(f"step {step}: val_loss {val_loss:.4f}")
    bar.close()
    if proc.is_main:
        metrics.flush()   # the last validation, after the last checkpoint
        if run.metrics.exists():
            plot_losses(run)
    return loss


def next_batch(data, cfg: TrainConfig, generator, proc):
    """The step's batch of process `proc` (`rank_batch`), on its device (named "batch" in profiles)."""
    with torch.profiler.record_function("batch"):
        return rank_batch(data, cfg, generator, proc.rank, proc.world_size).to(proc.device)


def rank_batch(data, cfg: TrainConfig, generator, rank: int = 0, world_size: int = 1):
    """Process `rank`'s share of a step's global batch: the data order of every run.

    A step's global batch is cfg.batch_size * world_size samples, drawn from `generator`, which every
    rank seeds alike (cfg.seed) and advances alike; rank r trains on samples r * B .. (r + 1) * B - 1
    of it (B = cfg.batch_size). So the samples of a step depend on the seed, the step and the global
    batch size only, never on how many processes share them: one process with batch_size 8 trains on
    exactly the windows of two with 4 each, and a run resumed on another number of processes with the
    same global batch goes on with the very windows it would have had.

    Data with `sample_indices(n, T, generator)` and `batch_at(indices, T)` (token streams) reads only
    this rank's samples; data with only `sample_batch` draws the whole global batch and keeps its rows."""
    B = cfg.batch_size
    if world_size == 1:
        return data.sample_batch(B, cfg.ctx_len, generator)
    if hasattr(data, "sample_indices"):
        indices = data.sample_indices(B * world_size, cfg.ctx_len, generator)
        return data.batch_at(indices[rank * B:(rank + 1) * B], cfg.ctx_len)
    return data.sample_batch(B * world_size, cfg.ctx_len, generator).rows(rank * B, (rank + 1) * B)


def read_resume_state(path) -> dict:
    """The dict a process saved at `path` for --resume, read weights-only (`read_torch_file`)."""
    state = read_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: cannot resume from it: it holds a {type(state).__name__}, not the trainer's dict")
    return state


def is_main_process() -> bool:
    """True on rank 0, and in a plain single-process run (the launchers give every process its RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------------------------
# The seam: one process on one device, or one rank of a DeepSpeed run


class LocalProcess:
    """The plain trainer: one process on `device`, by default the GPU if there is one (bf16 autocast
    unless the config's precision is "fp32"), else the CPU (fp32)."""

    rank, world_size, is_main = 0, 1, True

    def __init__(self, cfg: TrainConfig, device=None):
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=self.device.type == "cuda" and cfg.precision == "bf16")
        self.fused_optimizer = self.device.type == "cuda"
        self.extra = {}

    def setup(self, task, optimizer):
        """The callable that computes a batch's loss."""
        self.task, self.optimizer = task, optimizer
        return task

    def backward(self, loss):
        loss.backward()

    def step(self):
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def mean(self, loss) -> float:
        return loss.item()

    def checkpoint_path(self, run: Run) -> Path:
        return run.checkpoint

    def save(self, run: Run, task, step, data_rng, extra):
        """The inference files first, then checkpoint.pt: the checkpoint is never newer than them.
        A DeepSpeed checkpoint the run resumed from goes once this one is complete."""
        task.save_pretrained(run)
        state = {"task": task.state_dict(), "optimizer": self.optimizer.state_dict(), "step": step,
                 "data_rng": data_rng.get_state(), "torch_rng": torch.get_rng_state(), **extra}
        with atomic_path(run.checkpoint) as tmp:
            torch.save(state, tmp)
        shutil.rmtree(run.deepspeed, ignore_errors=True)

    def load(self, run: Run, data_rng) -> int:
        """Restore from checkpoint.pt, or from the DeepSpeed checkpoint of a run on any number of
        processes (`full_state`)."""
        source = resume_checkpoint(run)
        if source != run.checkpoint:
            from .full_state import load_into_optimizer, read_zero_checkpoint
            state = read_zero_checkpoint(source, source / "rng_rank0.pt")
            load_into_optimizer(state, self.task, self.optimizer)
            return continue_from(state, data_rng, self.cfg.batch_size, self.is_main)
        state = read_resume_state(run.checkpoint)
        with restoring_from(run.checkpoint):
            self.task.load_state_dict(state["task"])
            self.optimizer.load_state_dict(state["optimizer"])
            data_rng.set_state(state["data_rng"])
            torch.set_rng_state(state["torch_rng"])
            return int(state["step"])


def resume_checkpoint(run: Run) -> Path:
    """The checkpoint --resume continues: the plain trainer's checkpoint.pt, or the tag folder that
    deepspeed/latest names. Each kind of process removes the other kind once its own checkpoint is
    complete, so both are there only if a run stopped in between: then the newer one is taken."""
    latest = run.deepspeed / "latest"
    found = [path for path in (run.checkpoint, latest) if path.is_file()]
    if not found:
        raise FileNotFoundError(f"cannot resume: {run.folder} has no checkpoint "
                                f"(neither {run.checkpoint.name} nor {run.deepspeed.name}/latest)")
    newest = max(found, key=lambda path: path.stat().st_mtime_ns)
    return run.checkpoint if newest == run.checkpoint else latest_deepspeed_checkpoint(run)


def continue_from(state, data_rng, global_batch: int, is_main: bool) -> int:
    """Take the RNG states of a `full_state.FullState` the process has loaded; returns its step.
    The data order goes on from the saved generator: with the same global batch, on the windows the
    run would have had; with another, on others (said once, on stderr)."""
    with restoring_from(state.source):
        data_rng.set_state(state.data_rng)
        torch.set_rng_state(state.torch_rng)
    if is_main and state.global_batch != global_batch:
        print(f"note: {state.source} was written with a global batch of {state.global_batch} windows and this run "
              f"has {global_batch}: its steps draw other windows than the run would have had", file=sys.stderr)
    return state.step


def complete_deepspeed_config(ds_config, cfg: TrainConfig, world_size: int, on_gpu: bool) -> dict:
    """The DeepSpeed config of a run: `ds_config` (a dict, a JSON path or a shipped name) with the
    keys TrainConfig owns filled in.

    Batch size (per process), clipping and the lr schedule have one source of truth, the training
    config: those DeepSpeed keys may be left out or "auto", and an explicit value must agree.
    `"bf16": {"enabled": "auto"}` means bf16 on the GPU and fp32 on the CPU.
    """
    if isinstance(ds_config, dict):
        ds = json.loads(json.dumps(ds_config))  # a deep copy
    else:
        from .config import read_config
        ds = read_config(ds_config)
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


class DeepSpeedProcess:
    """One rank of a DeepSpeed run (one process per GPU, or CPU processes over gloo): data parallel,
    the ZeRO stage and bf16 from the DeepSpeed config (see `complete_deepspeed_config`).

    Each rank trains on its share of the step's global batch (`rank_batch`); the logged loss is the
    mean over ranks, tokens/s counts all ranks. `resume` continues a checkpoint of any number of
    processes and ZeRO stage, or a plain trainer's (`load`)."""

    def __init__(self, ds_config, cfg: TrainConfig):
        import deepspeed
        import torch.distributed as dist

        if cfg.compile:
            raise ValueError("compile is not supported under DeepSpeed; set \"compile\": false")
        # on the CPU DeepSpeed would otherwise compile (g++, minutes) a shared-memory all-reduce; gloo does
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.cfg = cfg
        self.ds_config = complete_deepspeed_config(ds_config, cfg, self.world_size, self.device.type == "cuda")
        self.zero_stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self.autocast = contextlib.nullcontext()  # bf16 mode casts the weights themselves
        self.fused_optimizer = False   # ZeRO steps the optimizer on its own flat copies
        self.extra = {"deepspeed_config": self.ds_config}

    def setup(self, task, optimizer):
        import deepspeed
        if self.ds_config.get("zero_optimization", {}).get("stage") == 3 and isinstance(task, NextTokenTask):
            # ZeRO-3 gathers a weight for its own module's forward; the chunked loss reads the head's
            # weight in the task's
            deepspeed.zero.register_external_parameter(task, task.model.head.weight)
        # DeepSpeed broadcasts rank 0's weights, so every rank starts from the same model; ZeRO then
        # steps our AdamW on its own flat fp32 copies, group by group (each keeps its lr_scale)
        from .full_state import group_names
        self.task, self.group_names = task, group_names(task, optimizer)
        self.engine, *_ = deepspeed.initialize(model=task, optimizer=optimizer, config=self.ds_config)
        self.engine.checkpoint_engine = weights_only_checkpoint_engine(self.engine)
        return self.engine

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self):
        self.engine.step()  # averages the gradients over ranks, clips them (gradient_clipping), steps AdamW

    def mean(self, loss) -> float:
        import torch.distributed as dist
        total = loss.detach().clone()
        dist.all_reduce(total)  # every rank has the same batch size: the global batch's loss is the mean
        return total.item() / self.world_size

    def checkpoint_path(self, run: Run) -> Path:
        return run.deepspeed

    def save(self, run: Run, task, step, data_rng, extra):
        """Every rank: its part of DeepSpeed's checkpoint (folder `deepspeed/step<N>`) and its RNG
        states. Rank 0: the inference files, then the `latest` pointer."""
        import deepspeed
        import torch.distributed as dist

        # ZeRO-3 keeps a shard of each weight per rank: gather them (a collective, so on every rank)
        with deepspeed.zero.GatheredParameters(list(task.parameters())):
            if self.is_main:
                task.save_pretrained(run)
        tag = f"step{step}"
        self.engine.save_checkpoint(run.deepspeed, tag=tag, client_state={"step": step, **extra}, save_latest=False)
        # each rank samples its own batches, so each keeps its own sampler state
        torch.save({"data_rng": data_rng.get_state(), "torch_rng": torch.get_rng_state()},
                   run.deepspeed / tag / f"rng_rank{self.rank}.pt")
        # DeepSpeed writes `latest` in place and without waiting for the other ranks' shards. A resume
        # must only ever see complete tags: wait for every rank, then switch `latest` with one rename.
        dist.barrier()
        if self.is_main:
            write_text_atomic(run.deepspeed / "latest", tag)
            for old in run.deepspeed.iterdir():  # only the newest checkpoint is kept, as in the plain trainer
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old)
            run.checkpoint.unlink(missing_ok=True)   # a plain trainer's, which the run resumed from

    def load(self, run: Run, data_rng) -> int:
        """Restore weights, optimizer, step and RNG states. A checkpoint of this number of processes
        and ZeRO stage goes through DeepSpeed's own loading (exact); one of another number or stage,
        or the plain trainer's checkpoint.pt, through `full_state` (every rank reads all the shards,
        one tensor at a time, and keeps its part)."""
        from .full_state import load_into_engine, read_plain_checkpoint, read_zero_checkpoint, zero_layout

        folder = resume_checkpoint(run)
        if folder == run.checkpoint or zero_layout(folder) != (self.world_size, self.zero_stage):
            if folder == run.checkpoint:
                state = read_plain_checkpoint(folder, self.group_names)
            else:
                state = read_zero_checkpoint(folder, folder / "rng_rank0.pt")
            load_into_engine(state, self.task, self.engine)
            return continue_from(state, data_rng, self.cfg.batch_size * self.world_size, self.is_main)
        tag = folder.name
        with restoring_from(folder):  # DeepSpeed reads its shards through `weights_only_checkpoint_engine`
            _, client_state = self.engine.load_checkpoint(run.deepspeed, tag=tag)
            step = int(client_state["step"])
        rng_file = folder / f"rng_rank{self.rank}.pt"
        rng = read_resume_state(rng_file)
        with restoring_from(rng_file):
            data_rng.set_state(rng["data_rng"])
            torch.set_rng_state(rng["torch_rng"])
        return step


def latest_deepspeed_checkpoint(run: Run) -> Path:
    """The tag folder that `deepspeed/latest` names; only a folder beside it is accepted."""
    latest = run.deepspeed / "latest"
    if not latest.exists():
        raise FileNotFoundError(f"cannot resume: {latest} does not exist")
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    if tag not in {p.name for p in run.deepspeed.iterdir() if p.is_dir()}:
        raise CheckpointError(f"{latest}: names {tag[:100]!r}, which is not a checkpoint folder beside it")
    return run.deepspeed / tag


def weights_only_checkpoint_engine(engine):
    """DeepSpeed's own checkpoint engine for `engine` (torch.save), except that it loads weights-only.

    DeepSpeed's loads its shards with weights_only=False: a crafted run folder would run code on
    --resume. Besides tensors and plain containers, its shards hold only four plain data classes
    of its own (the loss scalers, the ZeRO stage, ZeRO-1/2's fragment addresses), which are allowed
    by name; anything else is refused with one line naming the file."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from .full_state import deepspeed_data_classes

    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise ValueError("DeepSpeed config: remove the checkpoint writer settings (\"checkpoint\": {\"writer\": ...}, "
                         "datastates); the trainer saves with DeepSpeed's torch engine and loads weights-only")
    data_classes = deepspeed_data_classes()

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path, map_location=None):
            return read_torch_file(path, map_location=map_location, allowed_classes=data_classes)

    return WeightsOnlyCheckpointEngine(engine._config)
