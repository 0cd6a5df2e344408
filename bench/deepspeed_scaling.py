"""DeepSpeed data-parallel scaling of the shared trainer (issue 23): one call per machine.

    python bench/deepspeed_scaling.py prepare --out DATA          # any machine: Python's stdlib -> token shards
    python bench/deepspeed_scaling.py run --data DATA --out OUT   # on the GPU machine: every case that fits the budget
    python bench/deepspeed_scaling.py overhead --out OUT          # one GPU: the plain step against one DeepSpeed rank's
    python bench/deepspeed_scaling.py run --cpu --out OUT         # the whole script on the CPU (gloo, tiny models)

`run` plays cases in priority order while its budget lasts (`--budget-s`, default 540: a case starts only
if its estimated time fits what is left, and is stopped at what is left); OUT/results.json is rewritten
after every case, OUT/summary.md and OUT/loss_curves.png at the end of each. Cases, for G GPUs (`--gpus`
limits them; every number is measured on this machine, the 1-GPU baselines included):

  overhead    (G = 1 only) what `overhead` measures, below, for the small model and Finch-1.6B
  scaling     per model and number of GPUs, one torchrun launch that runs the ZeRO stages in turn: the
              trainer's own step (`next_batch` + `train_step` under `DeepSpeedProcess`) on random tokens,
              warm-up then timed steps (synchronised). Reports tokens/s over all GPUs, scaling efficiency
              (tokens/s at N GPUs / (N x tokens/s at 1 GPU), same per-GPU batch), MFU (bench/flops.py: the
              formula bench/train.py reports), peak memory per GPU, and first the NCCL all-reduce and
              all-gather of a bf16 buffer of the model's size: the communication a step cannot avoid.
              Models: "small" (Finch L6 C512, vocabulary 26,010: issue 4's), Finch-1.6B, and finch-7b
              with ZeRO-3 and gradient checkpointing only (one GPU cannot hold it; its efficiency is
              against the fewest GPUs it ran on). Order (`plan`): Finch-1.6B ZeRO-1/2 at 1 and G GPUs,
              (G = 2: the curves), finch-7b at G, Finch-1.6B at the GPU counts between, the small model,
              (G > 2: the curves), ZeRO-3 at 1 and G, finch-7b at the counts between.
  curves      the small model through `eaglefinch text train --deepspeed` under torchrun on the prepared
              data: 1 GPU x 64 windows and 2 GPUs x 32 (the same global batch, so the same windows:
              `rank_batch`), 200 steps; and a 2-GPU run stopped at step 100 and resumed on 1 GPU x 64
              (`full_state`): its steps 101-200 must continue the curve. One plot, OUT/loss_curves.png.

`overhead` runs in one process on one GPU, at the same batch, the plain trainer's step (LocalProcess:
fp32 weights, bf16 autocast, fused AdamW) and single-rank DeepSpeed steps (the shipped ZeRO-1 and
ZeRO-2, and ZeRO-1 with contiguous gradients, DeepSpeed's default: bf16 weights, ZeRO's flat fp32 AdamW;
`OVERHEAD_VARIANTS`), each the trainer's own code: step time and tokens/s (unsynchronised steps, timed
over many), then one profile of a few steps split by the step's named parts (`rwkv_core.train.STEP_PARTS`:
batch, forward, backward, loss to host, optimizer step): the host's time, the operators dispatched, the
GPU's time and the kernels launched in each, the GPU's busy share, and every host sync (torch's sync
debug mode) by the source line that made it, ours or DeepSpeed's. `--traces` also writes each profile (Chrome trace, gzipped).

`--cpu` runs all of it with gloo on the CPU, with tiny models and 1 and 2 processes, in about a minute:
a check of the script, not a measurement.
"""
import argparse
import collections
import dataclasses
import datetime
import gzip
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

from flops import mfu, peak_bf16   # bench/flops.py, beside this script
from gpu_memory import failure_status, free_memory   # bench/gpu_memory.py

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]


@dataclasses.dataclass(frozen=True)
class Setting:
    """A model and the per-GPU batch it is measured at."""

    model: dict            # RWKVConfig fields, or {"preset": name}
    batch: int             # windows per GPU
    ctx: int
    checkpointing: bool = False
    warmup: int = 3
    steps: int = 8         # timed steps
    stage_s: float = 40    # estimated seconds per ZeRO stage (build, initialise, warm up, time)


SMALL = {"arch": "finch", "n_layer": 6, "n_embd": 512, "head_size": 64, "vocab_size": 26010,
         "mix_lora_dim": 32, "decay_lora_dim": 64, "ctx_len": 512}
TINY = {"arch": "finch", "n_layer": 2, "n_embd": 64, "head_size": 16, "vocab_size": 512,
        "mix_lora_dim": 8, "decay_lora_dim": 8, "ctx_len": 64}
SETTINGS = {
    "small": Setting(SMALL, batch=32, ctx=512, warmup=5, steps=20, stage_s=12),
    "finch-1.6b": Setting({"preset": "finch-1.6b"}, batch=2, ctx=4096, stage_s=30),
    "finch-7b": Setting({"preset": "finch-7b"}, batch=1, ctx=4096, checkpointing=True, stage_s=90),
    "tiny": Setting(TINY, batch=4, ctx=64, warmup=1, steps=3, stage_s=5),   # --cpu
}
# the overhead split runs the plain trainer too: fp32 weights and autocast need more memory than
# DeepSpeed's bf16 weights, so Finch-1.6B runs there at one window
OVERHEAD_SETTINGS = {**SETTINGS, "finch-1.6b": dataclasses.replace(SETTINGS["finch-1.6b"], batch=1)}
STAGES = {"small": (1, 2, 3), "finch-1.6b": (1, 2, 3), "finch-7b": (3,), "tiny": (1, 2, 3)}
LAUNCH_S = 20        # estimated start of a torchrun launch (imports, process group)
CURVE_STEPS = 200
CURVES_S = 160       # estimated: four runs of the small model through `eaglefinch text train`


def log(*args):
    print(*args, flush=True)


def model_config(setting: Setting):
    from eaglefinch.rwkv_core import RWKVConfig
    if "preset" in setting.model:
        return RWKVConfig.load(setting.model["preset"])
    return RWKVConfig(**setting.model)


def build_model(setting: Setting, device):
    """The model of `setting`, built on `device` (the official initialisation, seed 0)."""
    from eaglefinch.rwkv_core import RWKV
    torch.manual_seed(0)
    with torch.device(device):
        return RWKV(model_config(setting))


def random_tokens(vocab: int, n: int, seed: int = 0):
    """A token stream of n uniformly random ids in [1, vocab): what throughput needs, without data."""
    import numpy as np

    from eaglefinch.rwkv_core.data import TokenStream
    return TokenStream([np.random.default_rng(seed).integers(1, vocab, n, dtype=np.int64)], "random tokens")


# ---- one process: the plain step against single-rank DeepSpeed ------------------------------------


def single_rank_env():
    """What a launcher gives a DeepSpeed process of a one-process run."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))


# the overhead split's variants: the plain trainer, or one DeepSpeed rank with this config. zero1_cg is
# ZeRO-1 with DeepSpeed's default of copying every gradient into one buffer as backward makes it (a
# view, a narrow and a copy per parameter: twice backward's operators); the shipped zero1 turns it off,
# which made a Finch-1.6B step 23% faster on an H100 (BENCHMARKS.md)
OVERHEAD_VARIANTS = {"plain": None, "zero1": "deepspeed/zero1", "zero2": "deepspeed/zero2",
                     "zero1_cg": {"zero_optimization": {"stage": 1, "contiguous_gradients": True},
                                  "bf16": {"enabled": "auto"}}}


def make_process(variant: str, cfg):
    """The process of an OVERHEAD_VARIANTS entry: the plain trainer's, or one DeepSpeed rank's."""
    from eaglefinch.rwkv_core.train import DeepSpeedProcess, LocalProcess
    if OVERHEAD_VARIANTS[variant] is None:
        return LocalProcess(cfg)
    return DeepSpeedProcess(OVERHEAD_VARIANTS[variant], cfg)


def overhead_variant(name: str, variant: str, setting: Setting, device, out: Path, traces: bool) -> dict:
    """One variant's step (see the module's docstring): timing, parts, host syncs."""
    from eaglefinch.rwkv_core.train import NextTokenTask, TrainConfig, next_batch, prepare, train_step
    on_gpu = device.type == "cuda"
    cfg = TrainConfig(batch_size=setting.batch, ctx_len=setting.ctx, grad_checkpointing=setting.checkpointing)
    row = {"model": name, "variant": variant, "batch": setting.batch, "ctx": setting.ctx}
    free_memory()
    model = build_model(setting, device)
    n_params = sum(p.numel() for p in model.parameters())
    proc = make_process(variant, cfg)
    task = NextTokenTask(model)
    forward, optimizer = prepare(task, cfg, proc)
    data = random_tokens(model.cfg.vocab_size, 1_000_000)
    rng = torch.Generator().manual_seed(0)

    def step():
        return train_step(proc, task, forward, next_batch(data, cfg, rng, proc))

    def sync():
        if on_gpu:
            torch.cuda.synchronize()
    for _ in range(setting.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(setting.steps):
        step()   # as the trainer runs them: the loss's sync each step, nothing more
    sync()
    step_s = (time.perf_counter() - t) / setting.steps
    tokens_per_s = setting.batch * setting.ctx / step_s
    row.update(params=n_params, step_ms=step_s * 1e3, tokens_per_s=tokens_per_s)
    if on_gpu:
        peak = peak_bf16(torch.cuda.get_device_name())
        row.update(mfu=peak and mfu(n_params, tokens_per_s, peak),
                   peak_allocated_GB=torch.cuda.max_memory_allocated() / 1e9)
        row["host_syncs"] = count_syncs(step, steps=2)
    row["parts"] = profile_parts(step, 3 if on_gpu else 2, on_gpu,
                                 out / f"trace_{name}_{variant}.json.gz" if traces else None)
    if hasattr(proc, "engine"):
        proc.engine.destroy()
    return row   # its model and optimizer go with this frame; the caller frees the memory


def count_syncs(step, steps: int) -> dict:
    """Host syncs per step, each by the innermost source line of ours (rwkv_core, kernels) or of
    DeepSpeed's that made it (else torch's): torch's sync debug mode warns at every one."""
    sites = collections.Counter()
    owners = ("/rwkv_core/", "/kernels/", "/deepspeed/")

    def where(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if any(o in f.filename for o in owners)]
        if frames:
            f = frames[-1]
            owner = next(o for o in owners if o in f.filename)
            sites[f"{owner.strip('/')}/{f.filename.split(owner)[-1]}:{f.lineno} {f.name}"] += 1
        else:
            sites[f"{filename}:{lineno}"] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():   # restores the filters and showwarning
        warnings.simplefilter("always")
        warnings.showwarning = where
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return {"per_step": sum(sites.values()) / steps, "sites": {k: v / steps for k, v in sites.most_common(12)}}


def profile_parts(step, steps: int, on_gpu: bool, trace_path) -> dict:
    """One profile of `steps` steps split by the step's named parts: per part the host's milliseconds
    (the range's span) and the GPU's (kernels launched from inside it), per step; and the GPU's busy
    share of the profiled wall time. A kernel belongs to the part during whose span it was launched
    (autograd runs the backward in its own thread, inside the main thread's "backward" span)."""
    from torch.profiler import ProfilerActivity, profile

    from eaglefinch.rwkv_core.train import STEP_PARTS
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    if on_gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if on_gpu:
            torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t) * 1e3 / steps
    events = prof.events()
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events if e.name in STEP_PARTS)
    outside = "outside the parts"
    host = dict.fromkeys(STEP_PARTS, 0.0)
    gpu, ops, launches = (dict.fromkeys(STEP_PARTS + (outside,), 0.0) for _ in range(3))

    def part_at(t):
        return next((name for start, end, name in spans if start <= t <= end), outside)
    for start, end, name in spans:
        host[name] += (end - start) / 1e3 / steps
    kernels_ms = 0.0
    for e in events:
        # the operators the host dispatches (outermost aten calls): what costs host time on any device
        if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::")):
            ops[part_at(e.time_range.start)] += 1 / steps
        for kernel in getattr(e, "kernels", []):
            part = part_at(e.time_range.start)
            gpu[part] += kernel.duration / 1e3 / steps
            launches[part] += 1 / steps
            kernels_ms += kernel.duration / 1e3 / steps
    if trace_path is not None:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            prof.export_chrome_trace(tmp.name)
            with open(tmp.name, "rb") as f, gzip.open(trace_path, "wb") as g:
                shutil.copyfileobj(f, g)
    parts = {"profiled_wall_ms": wall_ms, "host_ms": {k: v for k, v in host.items() if v},
             "ops": {k: v for k, v in ops.items() if v}, "gpu_ms": {k: v for k, v in gpu.items() if v},
             "kernels": {k: v for k, v in launches.items() if v}}
    if on_gpu:
        parts["gpu_busy"] = kernels_ms / wall_ms   # kernels may overlap (streams): an upper bound
    return parts


def overhead(out: Path, models, cpu: bool, traces: bool) -> list:
    out.mkdir(parents=True, exist_ok=True)
    single_rank_env()
    device = torch.device("cpu" if cpu else "cuda")
    if cpu:
        torch.set_num_threads(1)   # as each process of the other cases
    rows = []
    for name in models:
        for variant in OVERHEAD_VARIANTS:
            try:
                rows.append(overhead_variant(name, variant, OVERHEAD_SETTINGS[name], device, out, traces))
            except Exception as exc:  # noqa: BLE001  a failing variant is reported, the others still run
                rows.append({"model": name, "variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:400]}"})
            free_memory()
            log(overhead_line(rows[-1]))
            (out / "overhead.json").write_text(json.dumps(rows, indent=1))
    return rows


def overhead_line(r) -> str:
    if "error" in r:
        return f"overhead {r['model']} {r['variant']}: {r['error']}"
    line = f"overhead {r['model']} {r['variant']:6s} B={r['batch']} T={r['ctx']}: step {r['step_ms']:.1f} ms, " \
           f"{r['tokens_per_s']:,.0f} tok/s"
    if r.get("mfu"):
        line += f", MFU {100 * r['mfu']:.1f}%, peak {r['peak_allocated_GB']:.1f} GB"
    p = r["parts"]
    line += "\n    host ms " + ", ".join(f"{k} {v:.1f}" for k, v in p["host_ms"].items())
    line += "\n    ops     " + ", ".join(f"{k} {v:.0f}" for k, v in p["ops"].items())
    if p["gpu_ms"]:
        line += "\n    GPU ms  " + ", ".join(f"{k} {v:.1f}" for k, v in p["gpu_ms"].items())
        line += f"; GPU busy {100 * p['gpu_busy']:.0f}% of {p['profiled_wall_ms']:.1f} ms"
        line += "\n    kernels " + ", ".join(f"{k} {v:.0f}" for k, v in p["kernels"].items())
    if "host_syncs" in r:
        line += f"\n    host syncs per step: {r['host_syncs']['per_step']:g}: " + \
                "; ".join(f"{k} x{v:g}" for k, v in r["host_syncs"]["sites"].items())
    return line


# ---- a torchrun worker: one model on N processes, the ZeRO stages in turn --------------------------


def scaling_worker(args):
    """One rank of a scaling case (started by torchrun); rank 0 writes the case's JSON."""
    import deepspeed
    import torch.distributed as dist

    from eaglefinch.rwkv_core.train import TrainConfig
    setting = SETTINGS[args.model]
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False   # as DeepSpeedProcess: gloo on the CPU
    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    cfg = TrainConfig(batch_size=setting.batch, ctx_len=setting.ctx, grad_checkpointing=setting.checkpointing)
    n_params = sum(math.prod(s) for s in parameter_shapes(setting))   # before the model: the collectives' buffer first
    result = {"model": args.model, "gpus": world, "batch_per_gpu": setting.batch, "ctx": setting.ctx,
              "checkpointing": setting.checkpointing, "params": n_params, "stages": []}
    if world > 1:
        result["collectives"] = collective_times(n_params, device)
        free_memory()
    for stage in args.stages:
        free_memory()
        leftover = torch.cuda.memory_allocated() / 1e9 if on_gpu else 0.0   # what the stage before left
        t0 = time.perf_counter()
        try:
            row = scaling_stage(setting, stage, cfg, device, n_params)
        except Exception as exc:  # noqa: BLE001  reported; the other stages still run
            row = {"status": failure_status(exc)}
        row.update(zero=stage, leftover_GB=leftover, stage_s=time.perf_counter() - t0)
        result["stages"].append(row)
        if rank == 0:
            Path(args.json).write_text(json.dumps(result, indent=1))
            log(f"{args.model} x{world} ZeRO-{stage}: {row.get('status')}, {row.get('tokens_per_s', 0):,.0f} tok/s")
    dist.barrier()


def scaling_stage(setting: Setting, stage: int, cfg, device, n_params: int) -> dict:
    """One ZeRO stage of a scaling case on this rank: build, set up, warm up, time (see `plan`)."""
    import torch.distributed as dist

    from eaglefinch.rwkv_core.train import DeepSpeedProcess, NextTokenTask, next_batch, prepare, train_step
    on_gpu, world = device.type == "cuda", dist.get_world_size()
    t0 = time.perf_counter()
    model = build_model(setting, device)
    proc = DeepSpeedProcess(f"deepspeed/zero{stage}", cfg)
    task = NextTokenTask(model)
    forward, _ = prepare(task, cfg, proc)
    data = random_tokens(model.cfg.vocab_size, 1_000_000)
    rng = torch.Generator().manual_seed(0)
    row = {"setup_s": time.perf_counter() - t0}
    times = []
    for _ in range(setting.warmup + setting.steps):
        if on_gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = train_step(proc, task, forward, next_batch(data, cfg, rng, proc))
        if on_gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    median = statistics.median(times[setting.warmup:])
    row.update(status="ok", step_ms=median * 1e3, step_ms_all=[t * 1e3 for t in times], first_step_s=times[0],
               last_loss=loss, tokens_per_s=setting.batch * setting.ctx * world / median)
    if on_gpu:
        peaks = [None] * world
        dist.all_gather_object(peaks, (torch.cuda.max_memory_allocated() / 1e9, torch.cuda.max_memory_reserved() / 1e9))
        row.update(peak_allocated_GB=[p[0] for p in peaks], peak_reserved_GB=[p[1] for p in peaks])
        peak = peak_bf16(torch.cuda.get_device_name())
        row["mfu"] = peak and mfu(n_params, row["tokens_per_s"], peak, world)
    proc.engine.destroy()
    return row   # the model and optimizer go with this frame


def parameter_shapes(setting: Setting):
    """The shapes of the model's parameters, without building it (on the meta device)."""
    from eaglefinch.rwkv_core import RWKV
    with torch.device("meta"):
        return [tuple(p.shape) for p in RWKV(model_config(setting)).parameters()]


def collective_times(numel: int, device, iters: int = 10) -> dict:
    """The all-reduce and all-gather of one buffer of `numel` elements (bf16 on the GPU; fp32 with gloo,
    which has no bf16): median ms and NCCL's bus bandwidth. A data-parallel step moves about one
    all-reduce of the gradients (ZeRO-1/2: a reduce-scatter and an all-gather), so this is its floor."""
    import torch.distributed as dist
    world = dist.get_world_size()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    numel = numel // world * world
    x = torch.ones(numel, device=device, dtype=dtype)
    gathered = torch.empty(numel, device=device, dtype=dtype)
    out = {"numel": numel, "dtype": str(dtype)}
    for name, op in (("all_reduce", lambda: dist.all_reduce(x)),
                     ("all_gather", lambda: dist.all_gather_into_tensor(gathered, x[:numel // world]))):
        times = []
        for _ in range(iters + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            op()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        ms = statistics.median(times[2:]) * 1e3
        factor = 2 * (world - 1) / world if name == "all_reduce" else (world - 1) / world   # NCCL's bus bandwidth
        out[name] = {"ms": ms, "bus_GBps": numel * x.element_size() * factor / ms / 1e6}
    return out   # the buffers go with this frame


# ---- the orchestrator ------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    kind: str              # "overhead", "scaling", "curves"
    estimate_s: float
    model: str = ""
    gpus: int = 1
    stages: tuple = ()


def plan(gpus: list, models: list, cpu: bool) -> list:
    """The cases in priority order: first what the acceptance needs (Finch-1.6B's efficiency at 1 and
    G GPUs; the curves and the resume, early on a 2-GPU machine), then the 7B-class run, the other
    GPU counts, the small model, ZeRO-3."""
    top = max(gpus)
    middle = sorted(set(gpus) - {1, top})
    cases = []

    def scaling(model, n, stages):
        stages = tuple(s for s in stages if s in STAGES[model])
        if model in models and n in gpus and stages and not (model == "finch-7b" and n == 1):
            cases.append(Case(f"{model}_x{n}_zero{''.join(map(str, stages))}", "scaling",
                              LAUNCH_S + SETTINGS[model].stage_s * len(stages), model, n, stages))
    if cpu:
        cases.append(Case("overhead", "overhead", 30))
        for n in (1, 2):
            scaling("tiny", n, (1, 2, 3))
        cases.append(Case("curves", "curves", 4 * 12))
        return cases
    if top == 1:
        cases.append(Case("overhead", "overhead", 150))
    for n in sorted({1, top}):
        scaling("finch-1.6b", n, (1, 2))
    if top == 2:
        cases.append(Case("curves", "curves", CURVES_S))
    scaling("finch-7b", top, (3,))
    for n in middle:
        scaling("finch-1.6b", n, (1, 2))
    for n in sorted({1, top}):
        scaling("small", n, (1, 2))
    if top > 2:
        cases.append(Case("curves", "curves", CURVES_S))
    for n in sorted({1, top}):
        scaling("finch-1.6b", n, (3,))
    for n in middle:
        scaling("finch-7b", n, (3,))
    for n in sorted({1, top}):
        scaling("small", n, (3,))
    return cases


def torchrun(n: int, args: list, log_path: Path, timeout: float, cpu: bool):
    """`torchrun --standalone --nproc_per_node n ARGS`, in its own process group (a stuck rank is
    killed with it at the timeout); returns its exit status, or "timeout"."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cpu:   # one thread a process, whatever the number of processes
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *args]
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"


def run_scaling(case: Case, out: Path, timeout: float, cpu: bool) -> dict:
    path = out / "cases" / f"{case.name}.json"
    rc = torchrun(case.gpus, [str(SCRIPT), "worker", "--model", case.model, "--stages",
                              ",".join(map(str, case.stages)), "--json", str(path)],
                  out / "logs" / f"{case.name}.log", timeout, cpu)
    result = json.loads(path.read_text()) if path.exists() else {"model": case.model, "gpus": case.gpus, "stages": []}
    result["rc"] = rc
    return result


def curve_config(cpu: bool, batch: int) -> dict:
    """The text training config of the curve runs: the small (--cpu: tiny) model, trimmed vocabulary."""
    model = dict(TINY if cpu else SMALL)
    del model["vocab_size"]   # the trimmed vocabulary's
    steps = 8 if cpu else CURVE_STEPS
    return {"model": model,
            "train": {"max_steps": steps, "batch_size": batch, "ctx_len": 32 if cpu else 512, "lr_init": 1e-3,
                      "lr_final": 1e-4, "warmup_steps": 2 if cpu else 20, "log_every": 1, "val_every": steps // 2,
                      "val_batches": 2 if cpu else 4, "save_every": steps // 2},
            "text": {"trim_vocab": True}}


def run_curves(data: Path, out: Path, timeout: float, cpu: bool) -> dict:
    """The loss curves and the resume on another number of GPUs (see the module's docstring)."""
    from eaglefinch.rwkv_core.run import read_metrics
    folder = out / "curves"
    folder.mkdir(parents=True, exist_ok=True)
    total = 8 if cpu else 64
    steps = curve_config(cpu, total)["train"]["max_steps"]
    runs = [("1gpu", 1, total, []), ("2gpu", 2, total // 2, []),
            ("2gpu_half", 2, total // 2, ["--max-steps", str(steps // 2)]),
            ("resumed_on_1gpu", 1, total, ["--resume"])]
    result = {"runs": {}, "global_batch": total}
    start = time.time()
    for name, n, batch, extra in runs:
        config = folder / f"{name}.json"
        config.write_text(json.dumps(curve_config(cpu, batch), indent=1))
        run = folder / name
        if name == "resumed_on_1gpu":
            shutil.copytree(folder / "2gpu_half", run, dirs_exist_ok=True)
        rc = torchrun(n, ["-m", "eaglefinch", "text", "train", "--config", str(config), "--data", str(data),
                          "--out", str(run), "--deepspeed", "deepspeed/zero1", *extra],
                      out / "logs" / f"curves_{name}.log", max(10.0, timeout - (time.time() - start)), cpu)
        records = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
        result["runs"][name] = {"gpus": n, "batch_per_gpu": batch, "rc": rc,
                                "loss": [(r["step"], r["loss"]) for r in records if "loss" in r],
                                "val_loss": [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]}
        if rc != 0:
            break
    compare_curves(result, steps)
    return result


def compare_curves(result: dict, steps: int) -> None:
    """How far apart the curves are: largest |difference| of the train losses at each step, and the
    means of the last fifth (with the standard error of one curve's)."""
    runs = {k: dict(v["loss"]) for k, v in result["runs"].items()}
    if "1gpu" not in runs:
        return
    base = runs["1gpu"]
    for name, curve in runs.items():
        shared = [s for s in curve if s in base and (name != "resumed_on_1gpu" or s > steps // 2)]
        if name == "1gpu" or not shared:
            continue
        late = [s for s in shared if s > 0.8 * steps]
        result["runs"][name]["vs_1gpu"] = {
            "steps": [min(shared), max(shared)],
            "max_abs_diff": max(abs(curve[s] - base[s]) for s in shared),
            "mean_last_fifth": statistics.fmean(curve[s] for s in late) if late else None,
            "mean_last_fifth_1gpu": statistics.fmean(base[s] for s in late) if late else None,
            "se_last_fifth_1gpu": statistics.stdev(base[s] for s in late) / len(late) ** 0.5 if len(late) > 1 else None}


def plot_curves(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = {"1gpu": dict(lw=2.5, alpha=0.6), "2gpu": dict(lw=1.2), "resumed_on_1gpu": dict(lw=1, ls="--", color="k")}
    half = max((s for s, _ in curves["runs"].get("2gpu_half", {}).get("loss", [])), default=0)
    for name, run in curves["runs"].items():
        if name in styles and run["loss"]:
            points = [(s, loss) for s, loss in run["loss"] if name != "resumed_on_1gpu" or s >= half]
            label = f"{name.replace('_', ' ')}: {run['gpus']} GPU x {run['batch_per_gpu']} windows"
            label += f" (steps 1-{half} on 2 GPUs)" if name == "resumed_on_1gpu" else ""
            ax.plot(*zip(*points), label=label, **styles[name])
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.set_title(f"global batch {curves['global_batch']} windows: the same windows at every step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def environment(cpu: bool) -> dict:
    from eaglefinch.rwkv_core.files import git_commit
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
           "command": " ".join(sys.argv), "torch": torch.__version__}
    try:
        import deepspeed
        env["deepspeed"] = deepspeed.__version__
    except ImportError:
        env["deepspeed"] = None
    if cpu or not torch.cuda.is_available():
        env["device"] = f"cpu ({os.cpu_count()} cores), gloo"
    else:
        nccl = torch.cuda.nccl.version()
        env.update(device=f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}",
                   nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))
    return env


def run(args) -> None:
    out = args.out.resolve()
    for sub in ("cases", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    start = time.time()
    if args.cpu:
        if torch.cuda.is_available():
            sys.exit("--cpu is for machines without a GPU")
        gpus, models = [1, 2], ["tiny"]
        data = args.data or cpu_data(out / "data")
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --cpu for a check on the CPU")
        count = torch.cuda.device_count()
        gpus = sorted({n for n in args.gpus if n <= count}) if args.gpus else \
            sorted({n for n in (1, 2, 4, 8) if n <= count} | {count})
        models = args.models
        data = args.data
    results = {**environment(args.cpu), "gpus": gpus, "cases": []}
    log(f"{results['device']}, torch {results['torch']}, deepspeed {results['deepspeed']}, commit {results['commit']}")
    for case in plan(gpus, models, args.cpu):
        left = args.budget_s - (time.time() - start)
        if args.only and not any(word in case.name for word in args.only):
            continue
        if case.estimate_s > left or (case.kind == "curves" and data is None):
            log(f"skipped {case.name} (estimated {case.estimate_s:.0f} s, {left:.0f} s left"
                f"{'; no --data' if case.kind == 'curves' and data is None else ''})")
            results["cases"].append({"case": case.name, "skipped": True})
            continue
        log(f"{case.name} ({left:.0f} s left)")
        t = time.time()
        if case.kind == "overhead":
            entry = {"rows": overhead(out, ["tiny"] if args.cpu else ["small", "finch-1.6b"], args.cpu, args.traces)}
        elif case.kind == "scaling":
            entry = run_scaling(case, out, left, args.cpu)
        else:
            entry = run_curves(Path(data).resolve(), out, left, args.cpu)
            plot_curves(entry, out / "loss_curves.png")
        results["cases"].append({"case": case.name, "kind": case.kind, "wall_s": time.time() - t, **entry})
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "summary.md").write_text(summary(results))
    log("\n" + summary(results))
    log(f"done in {time.time() - start:.0f} s")


def cpu_data(folder: Path) -> Path:
    """--cpu: a small corpus written here, no tokenizer run: the bytes of a few standard-library
    modules as World byte tokens (id = byte + 1)."""
    from eaglefinch.rwkv_core.data import ShardWriter
    if (folder / "train").exists():
        return folder
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_bytes() for name in ("textwrap.py", "fnmatch.py", "bisect.py", "colorsys.py")]
    for split, docs in (("train", texts[:3]), ("val", texts[3:])):
        with ShardWriter(folder, split) as w:
            for doc in docs:
                w.add([b + 1 for b in doc])
    return folder


def summary(results: dict) -> str:
    """Markdown tables: scaling (with efficiency against 1 GPU, or the fewest GPUs that ran), the
    collectives, the curves, the overhead."""
    lines = [f"Device: {results['device']}; torch {results['torch']}, deepspeed {results['deepspeed']}"
             f"{', NCCL ' + results['nccl'] if 'nccl' in results else ''}; {results['date']}; commit {results['commit']}",
             f"Command: `{results['command']}`", ""]
    rows = []
    for case in results["cases"]:
        for stage in case.get("stages", []):
            rows.append({**{k: case[k] for k in ("model", "gpus", "batch_per_gpu", "ctx", "checkpointing", "params")
                            if k in case}, **stage})
    if rows:
        lines += ["| model | ZeRO | GPUs | windows/GPU x ctx | tokens/s | step ms | efficiency | MFU | peak GB/GPU (max) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["model"], r["zero"], r["gpus"])):
            if r.get("status") != "ok":
                lines.append(f"| {r['model']} | {r['zero']} | {r['gpus']} | | {r.get('status')} | | | | |")
                continue
            same = [o for o in rows if o["model"] == r["model"] and o["zero"] == r["zero"] and o.get("status") == "ok"]
            base = min(same, key=lambda o: o["gpus"])
            eff = r["tokens_per_s"] * base["gpus"] / (r["gpus"] * base["tokens_per_s"])
            eff_text = f"{100 * eff:.1f}%" + ("" if base["gpus"] == 1 else f" (vs {base['gpus']} GPUs)")
            peak = f"{max(r['peak_allocated_GB']):.1f}" if "peak_allocated_GB" in r else "-"
            mfu_text = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            ckpt = ", ckpt" if r.get("checkpointing") else ""
            lines.append(f"| {r['model']} | {r['zero']} | {r['gpus']} | {r['batch_per_gpu']} x {r['ctx']}{ckpt} | "
                         f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {eff_text} | {mfu_text} | {peak} |")
        lines.append("")
    for case in results["cases"]:
        if "collectives" in case:
            c = case["collectives"]
            lines.append(f"- collectives, {case['model']} x{case['gpus']} ({c['numel']:,} {c['dtype']}): " + ", ".join(
                f"{k} {c[k]['ms']:.2f} ms ({c[k]['bus_GBps']:.3g} GB/s bus)" for k in ("all_reduce", "all_gather")))
        if case.get("kind") == "curves":
            for name, r in case["runs"].items():
                text = f"- curves, {name} ({r['gpus']} GPU x {r['batch_per_gpu']}): rc {r['rc']}, {len(r['loss'])} steps"
                if "vs_1gpu" in r:
                    v = r["vs_1gpu"]
                    text += f"; against 1gpu over steps {v['steps'][0]}-{v['steps'][1]}: largest |diff| " \
                            f"{v['max_abs_diff']:.3g}"
                    if v["mean_last_fifth"] is not None:
                        text += f", last fifth {v['mean_last_fifth']:.4f} vs {v['mean_last_fifth_1gpu']:.4f}"
                        if v["se_last_fifth_1gpu"] is not None:
                            text += f" (s.e. {v['se_last_fifth_1gpu']:.4f})"
                text += "; val " + ", ".join(f"{v:.4f} @{s}" for s, v in r["val_loss"])
                lines.append(text)
        if case.get("kind") == "overhead":
            lines += ["", "```"] + [overhead_line(r) for r in case["rows"]] + ["```"]
        if case.get("rc") not in (None, 0):
            lines.append(f"- {case['case']}: rc {case['rc']} (see logs/{case['case']}.log)")
        if case.get("skipped"):
            lines.append(f"- {case['case']}: skipped (budget)")
    return "\n".join(lines) + "\n"


def prepare_stdlib(out):
    """Token shards of the standard library's .py files (~8.5M tokens for Python 3.11)."""
    from eaglefinch.text.prepare import prepare
    from eaglefinch.text.tokenizer import WorldTokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "stdlib.jsonl"
        with open(corpus, "w") as f:
            for p in files:
                text = p.read_text(encoding="utf-8", errors="replace")
                if text.strip():
                    f.write(json.dumps({"text": text}) + "\n")
        prepare([corpus], out, WorldTokenizer(), val_fraction=0.02,
                metadata={"tokenizer": "rwkv_vocab_v20230424", "source": f"Python {sys.version.split()[0]} stdlib"})


def int_list(text: str) -> list:
    return [int(x) for x in text.split(",") if x]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="token shards of Python's standard library")
    p.add_argument("--out", required=True, type=Path)
    r = sub.add_parser("run", help="every case that fits the budget")
    r.add_argument("--data", type=Path, help="the prepared data (the loss curves need it; --cpu makes its own)")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--budget-s", type=float, default=540, help="start no case whose estimate exceeds what is left")
    r.add_argument("--gpus", type=int_list, help="numbers of GPUs to measure (default 1, 2, 4, 8 and all, as present)")
    r.add_argument("--models", type=lambda t: t.split(","), default=["finch-1.6b", "finch-7b", "small"])
    r.add_argument("--only", type=lambda t: t.split(","), help="only the cases whose name holds one of these words")
    r.add_argument("--traces", action="store_true", help="overhead: also write each profile (Chrome trace, gzipped)")
    r.add_argument("--cpu", action="store_true", help="a check of the whole script on the CPU (gloo, tiny models)")
    o = sub.add_parser("overhead", help="one GPU: the plain step against single-rank DeepSpeed, by part")
    o.add_argument("--out", required=True, type=Path)
    o.add_argument("--models", type=lambda t: t.split(","), default=["small", "finch-1.6b"])
    o.add_argument("--traces", action="store_true")
    o.add_argument("--cpu", action="store_true")
    w = sub.add_parser("worker", help=argparse.SUPPRESS)   # one rank of a scaling case, under torchrun
    w.add_argument("--model", required=True, choices=sorted(SETTINGS))
    w.add_argument("--stages", required=True, type=int_list)
    w.add_argument("--json", required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare_stdlib(args.out)
    elif args.command == "worker":
        scaling_worker(args)
    elif args.command == "overhead":
        if not args.cpu and not torch.cuda.is_available():
            parser.error("no CUDA device: add --cpu")
        overhead(args.out.resolve(), ["tiny"] if args.cpu else args.models, args.cpu, args.traces)
    else:
        run(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
