"""DeepSpeed data-parallel scaling: the text trainer on 1 and 2 GPUs, loss curves and tokens/s.

    python bench/deepspeed_scaling.py prepare --out DATA          # on any machine: Python's stdlib -> token shards
    python bench/deepspeed_scaling.py run --data DATA --out OUT   # on the GPU machine (needs 2 GPUs)
    torchrun --nproc_per_node 2 bench/deepspeed_scaling.py allreduce   # NCCL bandwidth at the gradient's size

`prepare` tokenises the .py files of the running Python's standard library (one document per file,
World tokenizer), so the corpus needs no download. `run` trains a small Finch (L6 C512, trimmed
vocabulary) through `eaglefinch text train --deepspeed` under the deepspeed launcher, case by case:

    1gpu_b32     1 GPU, 32 windows a step                 tokens/s baseline
    2gpu_b32     2 GPUs, 32 windows each (64 a step)      weak scaling: tokens/s over 1gpu_b32
    1gpu_b64     1 GPU, 64 windows a step                 the same global batch as 2gpu_b32: loss curve
    2gpu_b32_z2  as 2gpu_b32 with ZeRO-2, fewer steps     tokens/s
    2gpu_b32_z3  as 2gpu_b32 with ZeRO-3, fewer steps     tokens/s

tokens/s is the median of the logged steps after the first fifth of a run (Triton compilation and
warm-up excluded). The two runs with a global batch of 64 see different windows (each rank samples its
own), so their losses differ by sampling noise only: the script prints the mean train loss over the last
fifth of the steps with its standard error, and the validation loss on the same held-out windows.
Everything goes to OUT (per-case run folders and logs, summary.json, loss_curves.png); a table is printed last.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = {"arch": "finch", "n_layer": 6, "n_embd": 512, "head_size": 64, "vocab_size": 65536,
         "mix_lora_dim": 32, "decay_lora_dim": 64, "ctx_len": 512}
# (name, GPUs, windows per GPU, ZeRO stage, steps)
CASES = [("1gpu_b32", 1, 32, 1, 200), ("2gpu_b32", 2, 32, 1, 200), ("1gpu_b64", 1, 64, 1, 200),
         ("2gpu_b32_z2", 2, 32, 2, 60), ("2gpu_b32_z3", 2, 32, 3, 60)]


def prepare_stdlib(out):
    """Token shards of the standard library's .py files (~8M tokens for Python 3.11)."""
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


def train_config(batch, steps):
    return {"model": MODEL,
            "train": {"max_steps": steps, "decay_steps": 200, "batch_size": batch, "ctx_len": 512, "lr_init": 1e-3,
                      "lr_final": 1e-4, "warmup_steps": 20, "log_every": 5, "val_every": 100, "val_batches": 128 // batch,
                      "save_every": 10_000},
            "text": {"trim_vocab": True}}


def run_case(name, gpus, batch, stage, steps, data, out, port, timeout=240):
    """Train one case under the deepspeed launcher; returns its summary (or the error)."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.json"
    config.write_text(json.dumps(train_config(batch, steps), indent=1))
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(gpus), "--master_port", str(port),
           "--no_local_rank", "--module", "eaglefinch", "text", "train", "--config", str(config), "--data", str(data),
           "--out", str(folder / "run"), "--deepspeed", str(ROOT / "configs" / "deepspeed" / f"zero{stage}.json")]
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        # its own process group, so that a stuck run's ranks can be stopped with it
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    summary = {"case": name, "gpus": gpus, "batch_per_gpu": batch, "zero": stage, "steps": steps,
               "wall_s": round(time.time() - t0, 1), "rc": rc}
    metrics_path = folder / "run" / "metrics.jsonl"
    if rc != 0 or not metrics_path.exists():
        return summary
    from eaglefinch.rwkv_core.train import read_metrics
    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    late = [r["loss"] for r in train if r["step"] > 0.8 * steps]
    summary.update(
        tokens_per_s=statistics.median(r["tokens_per_s"] for r in train if r["step"] > 0.2 * steps),
        loss_last_fifth=statistics.mean(late),
        loss_last_fifth_se=statistics.stdev(late) / len(late) ** 0.5,
        val_loss={r["step"]: r["val_loss"] for r in records if "val_loss" in r},
        curve=[(r["step"], r["loss"]) for r in train])
    return summary


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if "curve" in r and r["steps"] == 200:
            points = [(s, loss) for s, loss in r["curve"] if s >= 20]  # past the steep start
            ax.plot(*zip(*points), label=f"{r['case']} (global batch {r['gpus'] * r['batch_per_gpu']})")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(data, out, budget_s):
    """All CASES that fit the GPUs, each started only while more than 150 s of `budget_s` remain."""
    import torch
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}", flush=True)
    results = []
    for i, case in enumerate(CASES):
        left = budget_s - (time.time() - start)
        if case[1] > torch.cuda.device_count() or left < 150:
            print(f"skipped {case[0]}", flush=True)
            continue
        results.append(run_case(*case, data, out, port=29600 + i, timeout=min(240, left)))
        print({k: v for k, v in results[-1].items() if k != "curve"}, flush=True)
        (out / "summary.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "loss_curves.png")
    base = next((r["tokens_per_s"] for r in results if r["case"] == "1gpu_b32" and "tokens_per_s" in r), float("nan"))
    print("\n| case | GPUs | windows/GPU | ZeRO | steps | tokens/s | × 1gpu_b32 | train loss, last fifth | val loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "tokens_per_s" not in r:
            print(f"| {r['case']} | failed: rc {r['rc']} (see {r['case']}.log) |")
            continue
        val = ", ".join(f"{v:.4f} @{s}" for s, v in r["val_loss"].items())
        print(f"| {r['case']} | {r['gpus']} | {r['batch_per_gpu']} | {r['zero']} | {r['steps']} | "
              f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f} | "
              f"{r['loss_last_fifth']:.4f} ± {r['loss_last_fifth_se']:.4f} | {val} |")


def allreduce_bandwidth(numel=47_000_000, iters=20):
    """One rank of `torchrun --nproc_per_node 2 bench/deepspeed_scaling.py allreduce`: the NCCL all-reduce
    and all-gather of one bf16 gradient of the benchmark model's size (~47M parameters), median ms."""
    import torch
    import torch.distributed as dist
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    x = torch.randn(numel, device="cuda", dtype=torch.bfloat16)
    gathered = torch.empty(numel, device="cuda", dtype=torch.bfloat16)  # every rank sends numel // world
    for name, op in (("all_reduce", lambda: dist.all_reduce(x)),
                     ("all_gather", lambda: dist.all_gather_into_tensor(gathered, x[: numel // world]))):
        times = []
        for _ in range(iters + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            op()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        ms = statistics.median(times[3:])
        bus = 2 * (world - 1) / world if name == "all_reduce" else (world - 1) / world  # NCCL's bus-bandwidth factor
        if rank == 0:
            print(f"{name} {numel * 2 / 1e6:.0f} MB bf16 over {world} GPUs: {ms:.2f} ms, "
                  f"bus bandwidth {numel * 2 * bus / ms / 1e6:.0f} GB/s", flush=True)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True, type=Path)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True, type=Path)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--budget-s", type=float, default=510, help="start no case after budget_s - 150 s")
    sub.add_parser("allreduce", help="NCCL bandwidth at the model's gradient size (start it with torchrun)")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare_stdlib(args.out)
    elif args.command == "allreduce":
        allreduce_bandwidth()
    else:
        run(args.data.resolve(), args.out.resolve(), args.budget_s)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
