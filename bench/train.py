"""Training-step benchmark: the shared trainer's step against flash-linear-attention's RWKV6ForCausalLM
at the same size, in one process on one GPU.

    python bench/train.py [--config finch-1.6b] [--batch 4,8] [--ctx 4096] [--steps 5] [--warmup 3] [--json OUT]
    python bench/train.py --cpu --config finch-tiny                  (a quick check of the script, about 30 s)
    python bench/train.py --memory [--segment-len 4096] [--max-len 131072] [--json OUT]
        memory of full fine-tuning, LoRA and state tuning (B = 1, T = 4096), and the longest sequence
        one step trains on, with and without segments (see `memory_runs`)

Ours is the trainer's own step (rwkv_core.train: `prepare` and `train_step` on a LocalProcess: bf16
autocast over fp32 master weights, backward, gradient clipping, AdamW) on random tokens, in variants:
  plain       today's path: eager blocks, the whole logits (plain loss), foreach AdamW
  fast        compiled blocks (`compile`), chunked head + loss, fused AdamW
  fast_ckpt   fast + gradient checkpointing per block
plain also runs at B = 1 (--plain-batch), where it fits. fla: RWKV6ForCausalLM (fla-core 0.6.0) of the
same shape (hidden, layers, heads of 64, FFN, LoRA ranks, vocabulary), bf16 weights, fused
cross-entropy, forward + backward + clipping + a fused AdamW step on its bf16 weights, or forward +
backward alone if the step does not fit. fla is optional: skipped with a message when not importable.
On the CPU fast runs eagerly (compile off) and fla is skipped.

Reported per run: tokens/s (B*T over the median step time), MFU = 6 N tokens/s / the GPU's dense bf16
peak (bench/flops.py; N: all parameters, as the issue's baseline counts them; `mfu_non_embedding` leaves
the embedding out), peak memory since the run's start (max_memory_allocated and _reserved: weights, gradients and
optimizer state included), the first step's time (compilation, autotuning), or "does not fit". A
batch a variant could not fit is not tried larger. For fast at the first batch: one step's CUDA time
by part (torch.profiler), and the fp32 -> bf16 cast of every weight matrix (what autocast pays each
forward). The JSON is rewritten after every run, so a run cut short keeps what it measured.
"""
import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from eaglefinch.rwkv_core import RWKV, RWKVConfig
from eaglefinch.rwkv_core.data import Batch
from eaglefinch.rwkv_core.train import LocalProcess, NextTokenTask, TrainConfig, prepare, train_step
from eaglefinch.rwkv_core.files import git_commit
from flops import mfu, peak_bf16   # bench/flops.py, beside this script
from gpu_memory import failure_status, free_memory, peak_gb   # bench/gpu_memory.py

# the package is imported installed (`make install`), never from the repository root on sys.path: there
# the folder `kernels` would shadow the `kernels` package that transformers (fla's models) imports
REPO = Path(__file__).resolve().parents[1]

VARIANTS = {  # name: (compile, chunked loss, fused AdamW, gradient checkpointing)
    "plain": (False, False, False, False),
    "fast": (True, True, True, False),
    "fast_ckpt": (True, True, True, True),
}
PARTS = ("WKV", "matmuls", "head + loss", "optimizer (clip + AdamW)", "elementwise + other")


def log(*args):
    print(*args, flush=True)


def random_batch(B, T, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T + 1), generator=g)
    return Batch(ids[:, :-1].contiguous(), ids[:, 1:].contiguous()).to(device)


def timed_steps(step, warmup, steps, device):
    """(first step's seconds, the timed steps' seconds, every step's loss): `warmup` untimed steps,
    then `steps` timed."""
    times, losses = [], []
    for _ in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        losses.append(step())
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times[0], times[warmup:], losses


def throughput(row, B, T, times, n_params, n_non_embedding, peak):
    median = statistics.median(times)
    tokens_per_s = B * T / median
    row.update(status="ok", step_ms=median * 1e3, step_ms_all=[t * 1e3 for t in times], tokens_per_s=tokens_per_s)
    if peak:
        row.update(mfu=mfu(n_params, tokens_per_s, peak), mfu_non_embedding=mfu(n_non_embedding, tokens_per_s, peak))
    return row


# ---- ours ------------------------------------------------------------------------------------
class Ours:
    """Our model, and the trainer's step on it in each variant. Every run starts from the same
    weights, so that the runs' first losses at one batch size agree (a check of the fast path)."""

    def __init__(self, cfg: RWKVConfig, device):
        self.cfg, self.device = cfg, device
        self.model = self.fresh_model()
        self.initial = {name: t.to("cpu", copy=True) for name, t in self.model.state_dict().items()}
        if device.type == "cuda":   # pinned: restored in a fraction of a second
            self.initial = {name: t.pin_memory() for name, t in self.initial.items()}
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.n_non_embedding = self.n_params - self.model.emb.weight.numel()

    def fresh_model(self):
        torch.manual_seed(0)
        with torch.device(self.device):
            return RWKV(dataclasses.replace(self.cfg))   # its own copy: state tuning marks the model's config

    def step_fn(self, variant, B, T, mode="full", segment_len=None):
        """The trainer's step of `variant` on one fixed random batch: (step, the optimizer).
        mode: the config's train_mode ("full", "lora", "state"); segment_len: read in segments."""
        compile, chunked_loss, fused, checkpointing = VARIANTS[variant]
        on_gpu = torch.cuda.is_available()   # on the CPU (a quick check) fast runs eagerly
        cfg = TrainConfig(batch_size=B, ctx_len=T, compile=compile and on_gpu, grad_checkpointing=checkpointing,
                          train_mode=mode, segment_len=segment_len)
        proc = LocalProcess(cfg)
        proc.fused_optimizer = fused and on_gpu   # plain is today's trainer: foreach AdamW
        task = NextTokenTask(self.model, chunked_loss=chunked_loss)
        forward, optimizer = prepare(task, cfg, proc)
        batch = random_batch(B, T, self.cfg.vocab_size, proc.device)
        return (lambda: train_step(proc, task, forward, batch, segment_len)), optimizer, proc.device

    def run(self, variant, B, T, args, peak, mode="full", segment_len=None, steps=None):
        """One variant's timed steps: a row of the results. mode and segment_len as step_fn takes them;
        steps: (warmup, timed) instead of the command line's."""
        row = {"model": "ours", "variant": variant, "batch": B, "ctx": T}
        if mode != "full" or segment_len:
            row.update(train_mode=mode, segment_len=segment_len)
        if mode == "full":   # modes change the model (adapters, a tuned state): they run last, in order
            self.model.load_state_dict(self.initial)
        free_memory()
        optimizer = None
        warmup, timed = steps or (args.warmup, args.steps)
        try:
            step, optimizer, device = self.step_fn(variant, B, T, mode, segment_len)
            row["first_step_s"], times, row["losses"] = timed_steps(step, warmup, timed, device)
            throughput(row, B, T, times, self.n_params, self.n_non_embedding, peak)
        except Exception as exc:  # noqa: BLE001  a failing variant is reported, the others still run
            row["status"] = failure_status(exc)
        row.update(peak_gb())
        del optimizer
        self.model.zero_grad(set_to_none=True)
        free_memory()
        return row

    def breakdown(self, B, T, steps=2):
        """CUDA time of the fast step by part, mean over `steps` profiled steps (after a warm step)."""
        from torch.profiler import ProfilerActivity, profile
        step, optimizer, _ = self.step_fn("fast", B, T)
        step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t) / steps * 1e3
        parts = dict.fromkeys(PARTS, 0.0)
        wkv_kernels = wkv_kernel_names()
        top = {}
        for event in prof.events():
            for kernel in getattr(event, "kernels", []):
                part = part_of(event, kernel.name, wkv_kernels)
                parts[part] += kernel.duration / steps / 1e3
                top[(part, kernel.name[:90])] = top.get((part, kernel.name[:90]), 0.0) + kernel.duration / steps / 1e3
        total = sum(parts.values())
        # every kernel the profiler saw, attributed to a part or not (a check on the attribution)
        all_kernels = sum(e.self_device_time_total for e in prof.key_averages()
                          if e.device_type.name == "CUDA") / steps / 1e3
        del optimizer, step
        self.model.zero_grad(set_to_none=True)
        free_memory()
        return {"batch": B, "ctx": T, "cuda_ms_per_step": total, "all_kernels_ms_per_step": all_kernels,
                "profiled_wall_ms_per_step": wall_ms, "parts_ms": parts,
                "top_kernels_ms": [(p, k, ms) for (p, k), ms in sorted(top.items(), key=lambda x: -x[1])[:25]]}

    def weight_cast_ms(self, repeat=5):
        """fp32 -> bf16 of every weight matrix, as autocast does once per forward (ms)."""
        matrices = [p for p in self.model.parameters() if p.dim() >= 2 and p is not self.model.emb.weight]

        def cast():
            return [p.to(torch.bfloat16) for p in matrices]
        cast()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeat):
            cast()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / repeat * 1e3


def wkv_kernel_names():
    """Names of our Triton WKV kernels (the profiler shows a Triton kernel under its function's name)."""
    from triton.runtime.jit import JITFunction

    from eaglefinch.kernels.wkv_op.triton import chunk_bwd, chunk_fwd
    return {name for module in (chunk_fwd, chunk_bwd) for name, obj in vars(module).items()
            if isinstance(obj, JITFunction)}


MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}
MATMUL_KERNELS = ("gemm", "cutlass", "nvjet", "xmma", "cublas", "sm90_", "sm80_")


def part_of(event, kernel_name, wkv_kernels):
    """The part of the step a kernel belongs to, from the CPU ops that launched it (the trainer's
    "optimizer step" range, the chunked loss's autograd function, the WKV op's) and its name."""
    chain = []
    while event is not None:
        chain.append(event.name)
        event = event.cpu_parent
    if any(name == "optimizer step" or name.startswith("Optimizer.") for name in chain):
        return "optimizer (clip + AdamW)"
    if any("HeadLoss" in name for name in chain):
        return "head + loss"
    if kernel_name in wkv_kernels or any("ChunkWKVFunction" in name for name in chain):
        return "WKV"
    if chain[0] in MATMUL_OPS or any(s in kernel_name.lower() for s in MATMUL_KERNELS):
        return "matmuls"
    return "elementwise + other"


# ---- fla -------------------------------------------------------------------------------------
def fla_model(cfg: RWKVConfig):
    """fla's RWKV6ForCausalLM of our model's shape, bf16, on the CPU (it moves to the GPU for its runs)."""
    from fla.models.rwkv6 import RWKV6Config, RWKV6ForCausalLM
    config = RWKV6Config(hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer, num_heads=cfg.n_head,
                         expand_k=cfg.dim_att / cfg.n_embd, expand_v=cfg.dim_att / cfg.n_embd,
                         intermediate_size=cfg.dim_ffn, proj_low_rank_dim=cfg.mix_lora_dim,
                         gate_low_rank_dim=cfg.decay_lora_dim, vocab_size=cfg.vocab_size, attn_mode="chunk",
                         fuse_cross_entropy=True, fuse_norm=True, use_cache=False)
    torch.manual_seed(0)
    return RWKV6ForCausalLM(config).to(torch.bfloat16).train()


def fla_run(model, B, T, args, peak, with_optimizer):
    n_params = sum(p.numel() for p in model.parameters())
    n_non_embedding = n_params - model.get_input_embeddings().weight.numel()
    row = {"model": "fla", "variant": "adamw" if with_optimizer else "no optimizer step", "batch": B, "ctx": T,
           "params": n_params}
    free_memory()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if with_optimizer else None
    ids = random_batch(B, T, model.config.vocab_size, torch.device("cuda")).inputs

    def step():
        loss = model(input_ids=ids, labels=ids).loss   # fla shifts the labels itself
        loss.backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss.item()
    try:
        row["first_step_s"], times, row["losses"] = timed_steps(step, args.warmup, args.steps, torch.device("cuda"))
        throughput(row, B, T, times, n_params, n_non_embedding, peak)
    except Exception as exc:  # noqa: BLE001
        row["status"] = failure_status(exc)
    row.update(peak_gb())
    optimizer = None   # its state goes before the next run
    model.zero_grad(set_to_none=True)
    free_memory()
    return row


# ---- the run ---------------------------------------------------------------------------------
def run_line(row):
    head = f"{row['model']:4s} {row['variant']:18s} B={row['batch']:<2d} T={row['ctx']}"
    if row["status"] != "ok":
        peak = f" (peak {row['peak_allocated_GB']:.1f} GB)" if "peak_allocated_GB" in row else ""
        return f"{head}: {row['status']}{peak}"
    line = f"{head}: {row['tokens_per_s']:>9,.0f} tok/s, step {row['step_ms']:.1f} ms"
    if "mfu" in row:
        line += f", MFU {100 * row['mfu']:.1f}% (non-embedding {100 * row['mfu_non_embedding']:.1f}%)"
    if "peak_allocated_GB" in row:
        line += f", peak {row['peak_allocated_GB']:.1f} GB allocated / {row['peak_reserved_GB']:.1f} GB reserved"
    return line + f", first step {row['first_step_s']:.1f} s, loss {row['losses'][0]:.4f} -> {row['losses'][-1]:.4f}"


def environment(args, device):
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "commit": git_commit(), "torch": torch.__version__, "command": " ".join(sys.argv)}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name()
        peak = peak_bf16(env["device"])
        env["peak_bf16_TFLOPs"] = args.peak_tflops or (peak / 1e12 if peak else None)
    else:
        env["device"] = f"cpu ({torch.get_num_threads()} threads)"
        env["peak_bf16_TFLOPs"] = None
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="finch-1.6b", help="model preset or JSON (default finch-1.6b)")
    ap.add_argument("--batch", default=None, help="batch sizes B, comma-separated (default 4,8; --cpu: 2)")
    ap.add_argument("--ctx", type=int, default=None, help="tokens per sequence T (default 4096; --cpu: 64)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 5; --cpu: 2)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps first: compilation, autotuning (default 3; --cpu: 1)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"ours, comma-separated ({', '.join(VARIANTS)})")
    ap.add_argument("--plain-batch", type=int, default=1, help="plain's extra batch size (0: none; default 1)")
    ap.add_argument("--no-fla", action="store_true", help="skip fla")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the profiled per-part breakdown")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known by name")
    ap.add_argument("--cpu", action="store_true", help="on the CPU (a quick check: no MFU, memory, fla, breakdown)")
    ap.add_argument("--json", default=None, help="write the results here (rewritten after every run)")
    ap.add_argument("--memory", action="store_true",
                    help="instead of the throughput runs: memory of full / LoRA / state tuning at B=1 T=4096, "
                         "and the longest sequence with and without segments")
    ap.add_argument("--segment-len", type=int, default=4096, help="--memory: segment length (default 4096)")
    ap.add_argument("--max-len", type=int, default=131072, help="--memory: longest T tried (default 131072)")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu for a quick check on the CPU")
    if args.cpu and torch.cuda.is_available():
        ap.error("--cpu is for machines without a GPU (the trainer takes the GPU where there is one)")
    for name, gpu_default, cpu_default in (("batch", "4,8", "2"), ("ctx", 4096, 64), ("steps", 5, 2), ("warmup", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, cpu_default if args.cpu else gpu_default)
    try:
        batches = [int(b) for b in args.batch.split(",")]
        variants = args.variants.split(",")
        for v in variants:
            if v not in VARIANTS:
                raise ValueError(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
        cfg = RWKVConfig.load(args.config)
    except (ValueError, FileNotFoundError) as exc:
        ap.error(str(exc))
    device = torch.device("cpu" if args.cpu else "cuda")
    torch._dynamo.config.cache_size_limit = 64   # one compiled block per shape and grad mode, B x variants

    res = {**environment(args, device), "model_config": dataclasses.asdict(cfg), "runs": []}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
    log(f"device {res['device']}, torch {res['torch']}, triton {res['triton']}, commit {res['commit']}, "
        f"peak {res['peak_bf16_TFLOPs']} TFLOP/s")
    t0 = time.perf_counter()
    ours = Ours(cfg, device)
    res.update(params=ours.n_params, params_non_embedding=ours.n_non_embedding)
    log(f"ours: {ours.n_params:,} parameters ({ours.n_non_embedding:,} without the embedding), built in "
        f"{time.perf_counter() - t0:.1f} s")
    peak = res["peak_bf16_TFLOPs"] and res["peak_bf16_TFLOPs"] * 1e12
    if device.type == "cuda":
        res["weight_cast_ms"] = ours.weight_cast_ms()
        log(f"fp32 -> bf16 cast of every weight matrix: {res['weight_cast_ms']:.2f} ms (autocast's, once per "
            f"forward; the fast step's backward casts again instead of keeping the copies, ckpt's forward too)")

    fla = None   # {"model": fla's model, once built} when fla is importable
    if not args.no_fla and device.type == "cuda":
        try:
            import fla as fla_package
            res["fla"] = getattr(fla_package, "__version__", "?")
            fla = {}
        except Exception as exc:  # noqa: BLE001
            res["fla"] = f"not importable: {type(exc).__name__}: {exc}"
            log(f"fla skipped: {res['fla']}")

    if args.memory:
        memory_runs(ours, args, peak, res, save)
        res["total_s"] = time.perf_counter() - t0
        save()
        log(f"done in {res['total_s']:.0f} s")
        return

    failed = set()   # (model, variant) that did not fit at a smaller batch
    plan = [("plain", args.plain_batch)] if "plain" in variants and args.plain_batch else []
    for B in batches:
        # at each batch: the variants most likely to fit first, so a run cut short keeps the most
        plan += [(v, B) for v in ("fast", "fast_ckpt", "plain") if v in variants]
        plan += [("breakdown", B)] if B == batches[0] and "fast" in variants and device.type == "cuda" \
            and not args.no_breakdown else []
        plan += [("fla", B)] if fla is not None else []
    for what, B in plan:
        if what == "breakdown":
            try:
                res["breakdown"] = ours.breakdown(B, args.ctx)
            except Exception as exc:  # noqa: BLE001
                res["breakdown"] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
                free_memory()
            print_breakdown(res["breakdown"])
        elif what == "fla":
            res["runs"] += fla_batch(ours, fla, B, args, peak, failed)
        elif ("ours", what) in failed:
            res["runs"].append({"model": "ours", "variant": what, "batch": B, "ctx": args.ctx,
                                "status": "does not fit (a smaller batch did not)"})
            log(run_line(res["runs"][-1]))
        else:
            row = ours.run(what, B, args.ctx, args, peak)
            res["runs"].append(row)
            log(run_line(row))
            if row["status"] == "does not fit":
                failed.add(("ours", what))
        save()
    res["total_s"] = time.perf_counter() - t0
    save()
    log(f"done in {res['total_s']:.0f} s")
    summary(res)


def memory_runs(ours, args, peak, res, save):
    """--memory: (1) full fine-tuning, LoRA and state tuning at B = 1, T = 4096 (the fast variant),
    in that order (LoRA's adapters are merged away by the next prepare; state tuning adds the
    initial states and runs last); (2) the longest sequence one step trains on, B = 1, doubling T
    from 8192: with segments of --segment-len tokens (plain blocks: segments do not combine with
    compile), then without segments (fast_ckpt, the leanest one-pass step), up to --max-len."""
    rows = res.setdefault("memory", [])
    for mode in ("full", "lora", "state"):
        row = ours.run("fast", 1, 4096, args, peak, mode=mode, steps=(1, 2))
        row["train_mode"] = mode
        rows.append(row)
        log(f"memory, {mode}: " + run_line(row))
        save()
    ours.model = ours.fresh_model()   # the modes changed the model: back to a plain one
    for variant, segment_len in (("plain", args.segment_len), ("fast_ckpt", None)):
        T = 8192
        while T <= args.max_len:
            row = ours.run(variant, 1, T, args, peak, segment_len=segment_len, steps=(0, 1))
            rows.append(row)
            log(f"longest, {'segments of ' + str(segment_len) if segment_len else 'one pass'}: " + run_line(row))
            save()
            if row["status"] != "ok":
                break
            T *= 2


def fla_batch(ours, fla, B, args, peak, failed):
    """fla at batch B: with the AdamW step, else without it. fla's model waits on the CPU between its
    runs, ours during them."""
    if ("fla", "any") in failed:
        row = {"model": "fla", "variant": "no optimizer step", "batch": B, "ctx": args.ctx,
               "status": "does not fit (a smaller batch did not)"}
        log(run_line(row))
        return [row]
    ours.model.to("cpu")
    free_memory()
    rows = []
    try:
        if "model" not in fla:
            t = time.perf_counter()
            fla["model"] = fla_model(ours.cfg)
            log(f"fla: {sum(p.numel() for p in fla['model'].parameters()):,} parameters, built in "
                f"{time.perf_counter() - t:.1f} s")
        model = fla["model"].to("cuda")
        for with_optimizer in (True, False):
            rows.append(fla_run(model, B, args.ctx, args, peak, with_optimizer))
            log(run_line(rows[-1]))
            if rows[-1]["status"] == "ok":
                break
        if rows[-1]["status"] != "ok":
            failed.add(("fla", "any"))
    except Exception as exc:  # noqa: BLE001
        rows.append({"model": "fla", "variant": "-", "batch": B, "ctx": args.ctx,
                     "status": f"error: {type(exc).__name__}: {str(exc)[:400]}"})
        log(run_line(rows[-1]))
    if "model" in fla:
        fla["model"].to("cpu")
    free_memory()
    ours.model.to("cuda")
    return rows


def print_breakdown(b):
    if "error" in b:
        log(f"breakdown failed: {b['error']}")
        return
    log(f"fast step at B={b['batch']} T={b['ctx']}: CUDA time by part (ms per step)")
    for part, ms in b["parts_ms"].items():
        log(f"  {part:26s} {ms:9.1f}  {100 * ms / max(b['cuda_ms_per_step'], 1e-9):5.1f}%")
    log(f"  {'total':26s} {b['cuda_ms_per_step']:9.1f}  (all kernels {b['all_kernels_ms_per_step']:.1f}; "
        f"profiled wall time {b['profiled_wall_ms_per_step']:.1f})")
    log("  top kernels:")
    for part, name, ms in b["top_kernels_ms"][:12]:
        log(f"    {ms:8.2f}  {part:26s} {name}")


def summary(res):
    log("\nsummary")
    for row in res["runs"]:
        log(run_line(row))
    if "breakdown" in res:
        print_breakdown(res["breakdown"])


if __name__ == "__main__":
    main()
