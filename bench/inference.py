"""Inference benchmark: our engine against the official `rwkv` package (0.8.32), in one process.

    python bench/inference.py [--quick] [--json out.json] [--profile]    # CUDA: Finch-1.6B, bf16 vs cuda fp16
    python bench/inference.py --cpu [--json out.json]                     # CPU: 12 x 768, vocab 65536, fp32

GPU: Finch-1.6B (configs/finch-1.6b.json) with the official initialisation, ours in bf16 and the
package on the same weights saved as an official .pth (`cuda fp16`, TorchScript on, its CUDA kernels
off: RWKV_CUDA_ON=0 is its default and needs no compiler). Measured: decode tokens/s at B = 1, 8, 64,
256 (the package has no batching: B = 1 only), prefill tokens/s of one 1024-token prompt and of 16 such
prompts, time to first token of a 1024-token prompt, and peak GPU memory. Each figure is also given as a
fraction of its floor:
  decode: bytes per step (every weight but the embedding, B embedding rows, and each sequence's state
          read and written) at the copy bandwidth measured here;
  prefill: 2 x (parameters in the layers) FLOPs per token, plus the head once per prompt, at the bf16
          matmul rate measured here.
Decode is timed two ways: `engine.decode` + argmax on the device (the engine alone), and the whole
`Generation` loop (sampling on the device, one host sync per step for the tokens).

CPU: a 12-layer, 768-wide Finch, vocabulary 65536, fp32, batch 1, ours (the engine, no graphs) against
the package's `cpu fp32`, decode tokens/s, on however many cores torch uses here.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RWKV_JIT_ON", "1")   # the package reads these at import
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from eaglefinch.rwkv_core import RWKV, RWKVConfig, save_model  # noqa: E402
from eaglefinch.rwkv_core.engine import Engine                   # noqa: E402
from eaglefinch.rwkv_core.generate import Generation             # noqa: E402
from eaglefinch.rwkv_core.sampling import SamplerConfig          # noqa: E402

GREEDY = SamplerConfig(temperature=0.0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn, device, repeat=3):
    """Best wall time of `repeat` calls of fn (synchronised)."""
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def copy_bandwidth():
    x = torch.empty(2 ** 28, dtype=torch.float32, device="cuda")   # 1 GiB
    y = torch.empty_like(x)
    y.copy_(x)
    t = seconds(lambda: [y.copy_(x) for _ in range(10)], torch.device("cuda"))
    return 2 * x.numel() * 4 * 10 / t


def matmul_rate():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    a @ b
    t = seconds(lambda: [a @ b for _ in range(10)], torch.device("cuda"))
    return 2 * 8192 ** 3 * 10 / t


def model_sizes(model):
    """(bytes of every weight read per decode step but the embedding, parameters in the layers, head params)."""
    emb = model.emb.weight.numel()
    head = model.head.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    elt = model.emb.weight.element_size()
    return (total - emb) * elt, total - emb - head, head


def random_prompts(n, length, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (length,), generator=g).tolist() for _ in range(n)]


# ---- ours ------------------------------------------------------------------------------------
def ours_decode(engine, batch, steps, device):
    """tokens/s of `steps` engine steps (argmax on the device, no host sync) for `batch` sequences."""
    slots = engine.allocate(batch)
    logits = engine.prefill(slots, random_prompts(batch, 16, engine.model.cfg.vocab_size))

    def run():
        nonlocal logits
        for _ in range(steps):
            logits = engine.decode(slots, logits.argmax(-1))
    run()
    t = seconds(run, device)
    engine.release(slots)
    return batch * steps / t


def ours_generation(model, engine, batch, steps, device):
    """tokens/s of the whole Generation loop (greedy, host sync per step), prompts of 16 tokens."""
    prompts = random_prompts(batch, 16, model.cfg.vocab_size, seed=1)

    def run():
        list(Generation(model, prompts, steps, GREEDY, engine=engine))
    run()
    return batch * steps / seconds(run, device, repeat=2)


def ours_prefill(engine, n, length, device):
    prompts = random_prompts(n, length, engine.model.cfg.vocab_size, seed=2)
    slots = engine.allocate(n)

    def run():
        engine.pool.reset(slots)
        engine.prefill(slots, prompts).argmax(-1)
    run()
    t = seconds(run, device)
    engine.release(slots)
    return n * length / t, t


# ---- the package -----------------------------------------------------------------------------
def package_model(path, strategy):
    from rwkv.model import RWKV as PackageRWKV
    return PackageRWKV(model=str(path), strategy=strategy, verbose=False)


def package_decode(pkg, steps, device, vocab):
    _, state = pkg.forward(random_prompts(1, 16, vocab)[0], None)
    token = 1

    def run():
        nonlocal state, token
        for _ in range(steps):
            out, state = pkg.forward([token], state)
            token = int(out.argmax())
    run()
    return steps / seconds(run, device)


def package_prefill(pkg, n, length, device, vocab, repeat=3):
    """The package reads one prompt at a time (no batching); warmed up by the caller's earlier runs."""
    prompts = random_prompts(n, length, vocab, seed=2)

    def run():
        for p in prompts:
            int(pkg.forward(p, None)[0].argmax())
    t = seconds(run, device, repeat)
    return n * length / t, t


def peak_gib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 30


def profile_kernels(fn, repeat=10):
    """GPU kernels of one call of fn: count, summed kernel time, the call's wall time, top kernels."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
    wall_us = (time.perf_counter() - t) / repeat * 1e6
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    kernels = sum(e.count for e in events) / repeat
    total_us = sum(e.self_device_time_total for e in events) / repeat
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:12]
    return {"kernels_per_call": kernels, "gpu_us_per_call": total_us, "wall_us_per_call_profiled": wall_us,
            "top": [(e.key[:80], e.count / repeat, e.self_device_time_total / repeat) for e in top]}


def profile_decode(engine, batch):
    """Kernels of one decode step at `batch` (a CUDA-graph replay)."""
    slots = engine.allocate(batch)
    ids = torch.ones(batch, dtype=torch.long, device=engine.device)
    result = profile_kernels(lambda: engine.decode(slots, ids))
    engine.release(slots)
    return result


def profile_prefill(engine, n, length):
    """Kernels of one prefill of n prompts of `length` tokens."""
    prompts = random_prompts(n, length, engine.model.cfg.vocab_size, seed=3)
    slots = engine.allocate(n)
    result = profile_kernels(lambda: engine.prefill(slots, prompts), repeat=3)
    engine.release(slots)
    return result


def gpu(args):
    device = torch.device("cuda")
    cfg = RWKVConfig.load("finch-1.6b")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = RWKV(cfg).to(torch.bfloat16).eval()
    bw, mm = copy_bandwidth(), matmul_rate()
    weight_bytes, layer_params, head_params = model_sizes(model)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_TBps": bw / 1e12,
           "matmul_TFLOPs": mm / 1e12, "weights_GB": weight_bytes / 1e9}
    print(json.dumps(res), flush=True)
    steps = 20 if args.quick else 100
    batches = (1, 64) if args.quick else (1, 8, 64, 256)

    t = time.perf_counter()
    engine = Engine(model, max_batch=max(batches), prefill_tokens=16384)
    res["engine_setup_s"] = time.perf_counter() - t
    state_bytes = engine.pool.bytes_per_slot()
    print(f"engine ready in {res['engine_setup_s']:.1f} s; state {state_bytes / 1e6:.2f} MB per sequence", flush=True)
    rows = []
    for b in batches:
        floor = b / ((weight_bytes + b * (2 * state_bytes + cfg.n_embd * 2)) / bw)
        tps = ours_decode(engine, b, steps, device)
        row = {"work": f"decode B={b}", "ours": tps, "floor": floor}
        if b in (1, 256) or args.quick:
            row["ours_generation_loop"] = ours_generation(model, engine, b, steps, device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for n in (1, 16):
        flops = 2 * layer_params * n * 1024 + 2 * head_params * n
        tps, secs = ours_prefill(engine, n, 1024, device)
        rows.append({"work": f"prefill {n} x 1024", "ours": tps, "floor": n * 1024 / (flops / mm), "ours_s": secs})
        print(json.dumps(rows[-1]), flush=True)
    res["ours_peak_GiB_decode_B1"] = peak_gib(lambda: ours_decode(engine, 1, 10, device))
    res["ours_peak_GiB_decode_max"] = peak_gib(lambda: ours_decode(engine, max(batches), 10, device))
    if args.profile:
        res["profile_B1"] = profile_decode(engine, 1)
        res["profile_Bmax"] = profile_decode(engine, max(batches))
        res["profile_prefill_1x1024"] = profile_prefill(engine, 1, 1024)
        res["profile_prefill_16x1024"] = profile_prefill(engine, 16, 1024)
        print(json.dumps({k: v for k, v in res.items() if k.startswith("profile")}, indent=1), flush=True)
    engine = None   # its pool and graphs go before the package loads
    torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "finch-1.6b.pth"
        save_model(model, path)
        del model
        torch.cuda.empty_cache()
        pkg = package_model(path, "cuda fp16")
    by_work = {r["work"]: r for r in rows}
    by_work["decode B=1"]["package"] = package_decode(pkg, steps if not args.quick else 10, device, cfg.vocab_size)
    res["package_peak_GiB_decode_B1"] = peak_gib(lambda: package_decode(pkg, 5, device, cfg.vocab_size))
    for n in (1, 16) if not args.quick else (1,):
        tps, secs = package_prefill(pkg, n, 1024, device, cfg.vocab_size, repeat=3 if n == 1 else 1)
        by_work[f"prefill {n} x 1024"].update(package=tps, package_s=secs)
    res["ttft_1024_ours_ms"] = by_work["prefill 1 x 1024"]["ours_s"] * 1e3
    res["ttft_1024_package_ms"] = by_work["prefill 1 x 1024"].get("package_s", float("nan")) * 1e3
    res["rows"] = rows
    return res


def cpu(args):
    device = torch.device("cpu")
    cfg = RWKVConfig(arch="finch", n_layer=12, n_embd=768, head_size=64, vocab_size=65536)
    torch.manual_seed(0)
    model = RWKV(cfg).eval()
    with torch.no_grad():  # the official init zeroes several matrices; speed does not care, but be safe
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    steps = 10 if args.quick else 50
    engine = Engine(model, max_batch=1)
    res = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__}
    res["ours"] = ours_decode(engine, 1, steps, device)
    res["ours_generation_loop"] = ours_generation(model, engine, 1, steps, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "finch-12x768.pth"
        save_model(model, path)
        pkg = package_model(path, "cpu fp32")
    res["package"] = package_decode(pkg, steps, device, cfg.vocab_size)
    res["ours/package"] = res["ours"] / res["package"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the CPU comparison (12 x 768, fp32)")
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes and steps")
    ap.add_argument("--profile", action="store_true", help="also profile one decode step's kernels (GPU)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu for the CPU comparison")
    res = cpu(args) if args.cpu else gpu(args)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
