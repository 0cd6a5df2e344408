"""WKV benchmark: ours (Triton) vs flash-linear-attention's chunk_rwkv6 / fused_recurrent_rwkv6 vs our
chunked PyTorch path, in one process, bf16 inputs, fp32 state, `triton.testing.do_bench` medians.

    python bench/wkv.py [--quick] [--json out.json] [--launch scan_bv=64+split_state=3]
    python bench/wkv.py --compile-only [--quick | --variants ...]   (warm the caches, untimed)
    python bench/wkv.py --variants default,dot=tf32x3,fwd_out=8+bwd_dr=8 [--baseline REV_OR_DIR[,...]]

`--launch` sets the chunked kernels' launch settings for the whole run (`WKVLaunch`, in
kernels/wkv_op/triton/launch.py), over the defaults. `--variants` times the chunked kernels at the
headline shape once per comma-separated entry, each `default` or settings `NAME=VALUE[+NAME=VALUE...]`
over the run's: `dot=P` passes dot_precision=P to chunk_wkv, and a launch setting's name sets it for
that entry (fwd_out, bwd_dkdv, ...: a kernel's num_warps; scan_bv; split, split_state: the bf16 split
products, e.g. `split_state=15`). `--baseline` adds other versions of the kernels to the same run (our
first rows): each a git revision (its kernels/ folder, e.g. `--baseline HEAD~3`) or a kernels folder
on disk, imported as a package of its own and run at its own default launch settings. fla's row comes
first, so a run cut short keeps it. Each of our rows also gives the relative difference of o and of
dr, dk, dv, dw from our first row.

Prints ms, the ratio fla / ours (> 1: ours faster) and the fraction of the memory-traffic floor
(floor time / our time, floor = bytes each input read once and each output written once, at the
device-to-device copy bandwidth measured here). fla is optional (skipped if not importable).
"""
import argparse
import functools
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from eaglefinch.kernels import wkv_chunked, wkv_decode_                   # noqa: E402
from eaglefinch.kernels.wkv_op.triton import WKVLaunch, chunk_wkv         # noqa: E402
from eaglefinch.kernels.wkv_op.triton.testing import forward_outputs      # noqa: E402
from eaglefinch.rwkv_core.files import git_commit                                         # noqa: E402

try:
    from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6
except Exception as exc:  # noqa: BLE001
    chunk_rwkv6 = fused_recurrent_rwkv6 = None
    FLA_ERROR = repr(exc)
else:
    FLA_ERROR = None

TRAIN_SHAPES = [(8, 4096, 32, 64), (1, 32768, 32, 64), (16, 1024, 40, 64)]
DECODE_SHAPES = [(1, 32, 64), (64, 32, 64), (256, 32, 64)]


def fla_chunk(r, k, v, w, u):
    """fla's chunked kernel called as ours is: no scaling of r, the final state returned."""
    return chunk_rwkv6(r, k, v, w, u, scale=1.0, output_final_state=True)


def fla_decode(r, k, v, w, u, state):
    """fla's fused recurrent kernel for one decode step from `state` (returns a new final state)."""
    return fused_recurrent_rwkv6(r, k, v, w, u, scale=1.0, initial_state=state, output_final_state=True)


def bench(fn):
    """Median ms of fn over do_bench's repetitions (it clears L2 between calls)."""
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def bench_graph(fn):
    """Median ms per call of fn replayed from a CUDA graph: the kernel without Python launch overhead
    (how a server runs its decode step). L2 is not cleared between calls here. None if capture fails."""
    try:
        fn()  # compile and autotune outside the capture
        return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")
    except Exception:  # noqa: BLE001
        return None


def copy_bandwidth():
    """Device-to-device copy bandwidth in bytes/s (read + write), the floor's denominator."""
    x = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3)


def inputs(B, T, H, N, dtype=torch.bfloat16, grad=False):
    g = torch.Generator(device="cuda").manual_seed(0)
    r, k, v = (torch.randn(B, T, H, N, device="cuda", generator=g).to(dtype) for _ in range(3))
    w = -torch.exp(torch.randn(B, T, H, N, device="cuda", generator=g) - 1).to(dtype)
    u = (torch.randn(H, N, device="cuda", generator=g) * 0.5).to(dtype)
    xs = [r, k, v, w, u]
    return [x.requires_grad_(grad) for x in xs]


def train_floor_bytes(B, T, H, N, elt=2):
    act = B * T * H * N * elt
    state = B * H * N * N * 4
    return 5 * act + 2 * state, 14 * act + 5 * state   # forward; forward + backward


def train_inputs(B, T, H, N):
    """r, k, v, w, u requiring gradients, with an output and a final-state gradient cached for fwd_bwd."""
    do_cache[(B, T, H, N)] = torch.randn(B, T, H, N, device="cuda", dtype=torch.bfloat16)
    dht_cache[(B, H, N, N)] = torch.randn(B, H, N, N, device="cuda")
    return inputs(B, T, H, N, grad=True)


def fwd_bwd(f, xs):
    def run():
        o, ht = f(*xs)
        torch.autograd.grad([o, ht], xs, [do_cache[o.shape], dht_cache[ht.shape]])
    return run


do_cache, dht_cache = {}, {}


def time_train(B, T, H, N, bw, with_torch, launch):
    row = {"shape": f"B{B} T{T} H{H} N{N}"}
    xs = train_inputs(B, T, H, N)
    ours = functools.partial(chunk_wkv, launch=launch)
    with torch.no_grad():
        row["ours_fwd"] = bench(lambda: ours(*xs))
    row["ours_fwdbwd"] = bench(fwd_bwd(ours, xs))
    if chunk_rwkv6 is not None:
        with torch.no_grad():
            row["fla_fwd"] = bench(lambda: fla_chunk(*xs))
            o_fla, _ = fla_chunk(*xs)
            o_ours, _ = ours(*xs)
            row["ours_vs_fla_rel"] = ((o_ours.float() - o_fla.float()).norm() / o_fla.float().norm()).item()
        row["fla_fwdbwd"] = bench(fwd_bwd(fla_chunk, xs))
    if with_torch:
        try:
            with torch.no_grad():
                row["torch_fwd"] = bench(lambda: wkv_chunked(*xs))
            row["torch_fwdbwd"] = bench(fwd_bwd(wkv_chunked, xs))
        except torch.OutOfMemoryError:
            row["torch_fwd"] = row.get("torch_fwd", float("nan"))
            row["torch_fwdbwd"] = float("nan")
        torch.cuda.empty_cache()
    fb, fbb = train_floor_bytes(B, T, H, N)
    row["floor_fwd"] = fb / bw * 1e3
    row["floor_fwdbwd"] = fbb / bw * 1e3
    return row


def time_decode(B, H, N, bw):
    row = {"shape": f"decode B{B} H{H} N{N}"}
    r, k, v, w, u = inputs(B, 1, H, N)
    state = torch.randn(B, H, N, N, device="cuda")
    idx = torch.arange(B, device="cuda").flip(0).contiguous()
    row["ours"] = bench(lambda: wkv_decode_(r, k, v, w, u, state))
    row["ours_idx"] = bench(lambda: wkv_decode_(r, k, v, w, u, state, idx))
    row["ours_graph"] = bench_graph(lambda: wkv_decode_(r, k, v, w, u, state))
    if fused_recurrent_rwkv6 is not None:
        fla = lambda: fla_decode(r, k, v, w, u, state)                                # noqa: E731
        row["fla"] = bench(fla)
        row["fla_graph"] = bench_graph(fla)
    with torch.no_grad():
        row["torch"] = bench(lambda: wkv_decode_(r, k, v, w, u, state, backend="torch"))
    row["floor"] = (2 * B * H * N * N * 4 + 5 * B * H * N * 2) / bw * 1e3
    return row


def fmt(x, digits=3):
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def train_lines(r):
    lines = []
    for p, key in (("fwd", "fwd"), ("fwd+bwd", "fwdbwd")):
        ours, fla = r[f"ours_{key}"], r.get(f"fla_{key}")
        lines.append(f"| {r['shape']} | {p} | {fmt(ours)} | {fmt(fla)} | "
                     f"{fmt(fla / ours if fla else None, 2)} | {fmt(r.get(f'torch_{key}'))} | "
                     f"{fmt(r[f'floor_{key}'])} | {fmt(r[f'floor_{key}'] / ours, 2)} |")
    return lines


def decode_line(r):
    fla, us = r.get("fla"), lambda x: fmt(x * 1e3 if x else None, 1)
    return (f"| {r['shape']} | {us(r['ours'])} | {us(r['ours_idx'])} | {us(r.get('ours_graph'))} | "
            f"{us(fla)} | {us(r.get('fla_graph'))} | {fmt(fla / r['ours'] if fla else None, 1)} | "
            f"{fmt(r['torch'] * 1e3, 1)} | {fmt(r['floor'] * 1e3, 2)} | {fmt(r['floor'] / r['ours'], 3)} |")


TRAIN_HEAD = ("| shape (bf16) | pass | ours ms | fla ms | fla/ours | torch-chunked ms | floor ms | floor/ours |\n"
              "|---|---|---|---|---|---|---|---|")
DECODE_HEAD = ("| decode step T=1 (bf16 in, fp32 state) | ours µs | ours + slot idx µs | ours in CUDA graph µs "
               "| fla µs | fla in CUDA graph µs | fla/ours | torch µs | floor µs | floor/ours |\n"
               "|---|---|---|---|---|---|---|---|---|---|")


def load_baseline(source, i):
    """chunk_wkv of another version of the kernels: `source` is a git revision (its kernels/ folder) or
    a kernels folder on disk. A copy is imported as the package `_wkv_baseline{i}` (the kernels import
    each other relatively), with its own default launch settings."""
    dest = Path(tempfile.mkdtemp()) / f"_wkv_baseline{i}"
    if Path(source).is_dir():
        shutil.copytree(source, dest)
    else:
        dest.mkdir()
        archive = subprocess.run(["git", "archive", f"{source}:kernels"], cwd=REPO, stdout=subprocess.PIPE,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    sys.path.insert(0, str(dest.parent))
    # the op folder, or the flat kernels/triton/ of the versions before it
    for package in ("wkv_op.triton", "triton"):
        if (dest / package.replace(".", "/")).is_dir():
            return importlib.import_module(f"{dest.name}.{package}").chunk_wkv
    raise SystemExit(f"--baseline {source}: no Triton WKV kernels in it")


def parse_variant(text, launch):
    """A --variants entry: `default` or `NAME=VALUE[+NAME=VALUE...]`, NAME `dot` (chunk_wkv's
    dot_precision) or a launch setting, over `launch`. Returns chunk_wkv with them bound."""
    parts = [] if text == "default" else text.split("+")
    dots = [p.split("=", 1)[1] for p in parts if p.startswith("dot=")]
    try:
        launch = WKVLaunch.parse("+".join(p for p in parts if not p.startswith("dot=")), launch)
    except ValueError as exc:
        raise SystemExit(f"--variants: {exc}")
    return functools.partial(chunk_wkv, dot_precision=dots[-1] if dots else None, launch=launch)


def time_variants(variants, baselines, bw, launch, with_fla=True):
    """Headline shape: fla once, then ours per baseline and per variant (over the run's `launch`)."""
    B, T, H, N = TRAIN_SHAPES[0]
    xs = train_inputs(B, T, H, N)
    fb, fbb = train_floor_bytes(B, T, H, N)
    print(f"variants at B{B} T{T} H{H} N{N} (bf16); floor fwd {fb / bw * 1e3:.3f} ms, "
          f"fwd+bwd {fbb / bw * 1e3:.3f} ms", flush=True)
    print("| variant | fwd ms | fwd+bwd ms | rel diff o vs first | rel diff grads vs first |\n"
          "|---|---|---|---|---|", flush=True)
    rows, first = [], None
    # fla first: its row is the reference, and a run cut short by a time limit still has it
    if with_fla and chunk_rwkv6 is not None:
        with torch.no_grad():
            t_f = bench(lambda: fla_chunk(*xs))
        t_fb = bench(fwd_bwd(fla_chunk, xs))
        rows.append({"variant": "fla chunk_rwkv6", "fwd": t_f, "fwdbwd": t_fb})
        print(f"| fla chunk_rwkv6 | {t_f:.3f} | {t_fb:.3f} | | |", flush=True)
    runs = [(f"baseline {source}", load_baseline(source, i)) for i, source in enumerate(baselines)]
    runs += [(v, parse_variant(v, launch)) for v in variants]
    for name, f in runs:
        try:
            o, ht = f(*xs)
            grads = torch.autograd.grad([o, ht], xs, [do_cache[o.shape], dht_cache[ht.shape]])
            out = [o.float()] + [g.float() for g in grads[:4]]
            if first is None:
                first = out
            rel = [((a - b).norm() / b.norm()).item() for a, b in zip(out, first)]
            with torch.no_grad():
                t_f = bench(lambda: f(*xs))
            t_fb = bench(fwd_bwd(f, xs))
            row = {"variant": name, "fwd": t_f, "fwdbwd": t_fb, "rel": rel}
            rows.append(row)
            print(f"| {name} | {t_f:.3f} | {t_fb:.3f} | {rel[0]:.1e} | "
                  f"{' '.join(f'{x:.1e}' for x in rel[1:])} |", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"| {name} | failed: {exc!r} |", flush=True)
    return rows


def compile_kernels(train, decode, launch):
    """Call fla's and our kernels once at every shape, untimed: compiles (and, for fla, autotunes)
    everything and fills Triton's disk cache. fla's training kernels alone take minutes on a cold
    GPU: run this in the background while tests/gpu runs, and the timed run after it starts warm."""
    import time
    t0 = time.time()
    for B, T, H, N in train:
        xs = train_inputs(B, T, H, N)
        fwd_bwd(functools.partial(chunk_wkv, launch=launch), xs)()
        if chunk_rwkv6 is not None:
            fwd_bwd(fla_chunk, xs)()
    for B, H, N in decode:
        r, k, v, w, u = inputs(B, 1, H, N)
        state = torch.randn(B, H, N, N, device="cuda")
        wkv_decode_(r, k, v, w, u, state)
        if fused_recurrent_rwkv6 is not None:
            fla_decode(r, k, v, w, u, state)
    torch.cuda.synchronize()
    print(f"compiled every kernel in {time.time() - t0:.0f} s", flush=True)


def profile_kernels(shape, launch, steps=5):
    """CUDA time per kernel of chunk_wkv's forward + backward at `shape` (B, T, H, N; torch profiler,
    mean over `steps` steps), and the share of chunks the forward flagged for the level kernels."""
    from torch.profiler import ProfilerActivity, profile
    B, T, H, N = shape
    xs = train_inputs(B, T, H, N)
    ours = functools.partial(chunk_wkv, launch=launch)
    step = fwd_bwd(ours, xs)
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / steps / 1e3) for e in prof.key_averages()]
    print(f"per-kernel CUDA ms per fwd+bwd at B{B} T{T} H{H} N{N}, {launch}:")
    for name, ms in sorted(rows, key=lambda x: -x[1]):
        if ms > 0.001:
            print(f"  {ms:8.3f}  {name[:90]}")
    with torch.no_grad(), forward_outputs() as calls:
        ours(*xs)
    print(f"  chunks flagged for the level kernels: {calls[0][3].float().mean().item():.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="headline shape and decode B=1 only")
    ap.add_argument("--no-torch", action="store_true", help="skip the chunked PyTorch path")
    ap.add_argument("--json", default=None)
    ap.add_argument("--variants", default=None,
                    help="default,NAME=VALUE+NAME=VALUE,... (headline shape only)")
    ap.add_argument("--baseline", default=None,
                    help="git revisions or kernels folders (comma-separated) whose chunk_wkv is timed "
                         "alongside --variants, at its own default launch settings")
    ap.add_argument("--profile", action="store_true", help="per-kernel CUDA times at one shape (--shape)")
    ap.add_argument("--shape", default=",".join(map(str, TRAIN_SHAPES[0])),
                    help="B,T,H,N for --profile (default: the headline shape)")
    ap.add_argument("--compile-only", action="store_true",
                    help="run every kernel once untimed (compile, autotune, fill the disk cache) and exit")
    ap.add_argument("--launch", default="default",
                    help="launch settings NAME=VALUE+... over the defaults (WKVLaunch) for the whole run")
    args = ap.parse_args()
    try:
        launch = WKVLaunch.parse(args.launch)
    except ValueError as exc:
        raise SystemExit(f"--launch: {exc}")
    props = torch.cuda.get_device_properties(0)
    bw = copy_bandwidth()
    commit = git_commit()
    print(f"device {props.name}, torch {torch.__version__}, triton {triton.__version__}, "
          f"commit {commit or '?'}, {launch}, copy bandwidth {bw / 1e12:.2f} TB/s, fla: "
          f"{'ok' if FLA_ERROR is None else FLA_ERROR}", flush=True)
    if args.profile:
        profile_kernels(tuple(int(x) for x in args.shape.split(",")), launch)
        return
    train = TRAIN_SHAPES[:1] if args.quick or args.variants else TRAIN_SHAPES
    decode = DECODE_SHAPES[:1] if args.quick else DECODE_SHAPES
    if args.compile_only:
        compile_kernels(train, [] if args.variants else decode, launch)
        return
    if args.variants:
        baselines = args.baseline.split(",") if args.baseline else []
        vrows = time_variants(args.variants.split(","), baselines, bw, launch)
        if args.json:
            Path(args.json).write_text(json.dumps({"device": props.name, "commit": commit, "bw": bw,
                                                   "variants": vrows}, indent=1))
        return
    rows, drows = [], []
    print(DECODE_HEAD, flush=True)
    for shape in decode:
        drows.append(time_decode(*shape, bw))
        print(decode_line(drows[-1]), flush=True)
    print(TRAIN_HEAD, flush=True)
    for i, shape in enumerate(train):
        rows.append(time_train(*shape, bw, with_torch=not args.no_torch and i == 0, launch=launch))
        for line in train_lines(rows[-1]):
            print(line, flush=True)
        if "ours_vs_fla_rel" in rows[-1]:
            print(f"  ||o_ours - o_fla|| / ||o_fla|| = {rows[-1]['ours_vs_fla_rel']:.2e}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"device": props.name, "commit": commit, "bw": bw,
                                                   "train": rows, "decode": drows}, indent=1))
    print("\nsummary")
    print(DECODE_HEAD)
    for r in drows:
        print(decode_line(r))
    print(TRAIN_HEAD)
    for r in rows:
        for line in train_lines(r):
            print(line)


if __name__ == "__main__":
    main()
