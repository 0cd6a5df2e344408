"""Training numerics: bf16 against fp32 on the same data, and a long bf16 run with strong decays.

    python bench/train_numerics.py --out DIR [--steps 600] [--long-steps 3000]   # CUDA
    python bench/train_numerics.py --out DIR --cpu --steps 20 --long-steps 20     # a quick check (2 x 64, B x T = 2 x 64)

Data: the bytes of this Python's standard library source (installed everywhere, nothing to
download), one token per byte (vocabulary 256); the last 5% is held out. Model: a small Finch and a
small Eagle (6 layers, 512 wide, head size 64), the official initialisation, trained by the shared
trainer (`rwkv_core.train.train`, AdamW, warmup + cosine, L2Wrap) at B x T = 16 x 512.

1. Same data, same initialisation: `"precision": "fp32"` (no autocast, TF32 off) and `"bf16"`
   (autocast, fp32 weights), plus a second fp32 run with another data seed: the spread between the
   two fp32 runs is the noise the bf16-fp32 gap is held against (final loss: the mean of the last
   10% of logged steps; and the validation loss). One plot per architecture: numerics_<arch>.png.
2. Strong decays: the same Finch with every time_decay raised by --decay-shift (3: w = exp(-exp(d))
   per step falls from ~0.9975-0.37 to ~0.95-1e-9), trained --long-steps steps in bf16 with a
   higher lr (3e-3): every logged loss must be finite. numerics_strong_decay.png.

Writes results.json (device, torch, date, commit, command) into --out, rewritten after each run.
"""
import argparse
import dataclasses
import datetime
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from eaglefinch.rwkv_core import RWKV
from eaglefinch.rwkv_core.config import RWKVConfig, TrainConfig
from eaglefinch.rwkv_core.run import Run
from eaglefinch.rwkv_core.train import NextTokenTask, train
from eaglefinch.rwkv_core.files import git_commit
from eaglefinch.research.data import stdlib_splits


def small_model(arch, seed, size, decay_shift=0.0):
    torch.manual_seed(seed)
    cfg = RWKVConfig(arch=arch, n_layer=size["n_layer"], n_embd=size["n_embd"], vocab_size=256, head_size=64,
                     ctx_len=size["ctx_len"])
    model = RWKV(cfg)
    with torch.no_grad():
        for block in model.blocks:
            block.att.time_decay += decay_shift
    return model


def losses_of(run_dir):
    records = Run(run_dir).read_metrics()
    train_losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    return train_losses, val[-1] if val else float("nan")


def one_run(arch, precision, data_seed, steps, data, val, size, work, decay_shift=0.0, lr=6e-4):
    torch.backends.cuda.matmul.allow_tf32 = False   # fp32 means fp32 (TF32 would round to 10 bits)
    torch.backends.cudnn.allow_tf32 = False
    cfg = TrainConfig(max_steps=steps, batch_size=size["batch"], ctx_len=size["ctx_len"], lr_init=lr, lr_final=lr / 10,
                      warmup_steps=min(50, steps // 5 + 1), precision=precision, log_every=1,
                      val_every=steps, val_batches=8, save_every=steps, seed=data_seed)
    model = small_model(arch, seed=0, size=size, decay_shift=decay_shift)   # one initialisation for every run
    out = Path(work) / f"{arch}-{precision}-seed{data_seed}-shift{decay_shift}"
    t0 = time.perf_counter()
    train(NextTokenTask(model), cfg, data, out, val_data=val, progress=False)
    seconds = time.perf_counter() - t0
    curve, val_loss = losses_of(out)
    tail = [loss for _, loss in curve[-max(1, len(curve) // 10):]]
    return {"arch": arch, "precision": precision, "data_seed": data_seed, "steps": steps,
            "decay_shift": decay_shift, "lr": lr, "seconds": seconds, "final_loss": sum(tail) / len(tail),
            "val_loss": val_loss, "all_finite": all(math.isfinite(loss) for _, loss in curve), "curve": curve,
            "train_config": dataclasses.asdict(cfg)}


def plot(runs, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        steps, losses = zip(*r["curve"])
        ax.plot(steps, losses, lw=0.8, label=f"{r['precision']}, data seed {r['data_seed']}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/byte)")
    ax.set_title(title)
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for results.json and the plots")
    ap.add_argument("--steps", type=int, default=600, help="steps of each bf16/fp32 run")
    ap.add_argument("--long-steps", type=int, default=3000, help="steps of the strong-decay run")
    ap.add_argument("--decay-shift", type=float, default=3.0, help="added to every time_decay in the long run")
    ap.add_argument("--data-mb", type=float, default=16.0, help="standard library bytes to use")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (a check of the script, fp32 only)")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu for a check")
    device = "cpu" if args.cpu else "cuda"
    size = (dict(n_layer=2, n_embd=64, batch=2, ctx_len=64) if args.cpu else
            dict(n_layer=6, n_embd=512, batch=16, ctx_len=512))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, val = stdlib_splits(args.data_mb)   # the last 5% held out
    res = {"size": size, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "git_commit": git_commit(), "command": " ".join(sys.argv), "data_bytes": len(data) + len(val), "runs": []}

    def save():
        (out / "results.json").write_text(json.dumps(res, indent=1))

    precisions = ["fp32"] if args.cpu else ["fp32", "bf16"]
    with tempfile.TemporaryDirectory() as work:
        for arch in ("finch", "eagle"):
            runs = []
            for precision, data_seed in [(p, 0) for p in precisions] + [("fp32", 1)]:
                r = one_run(arch, precision, data_seed, args.steps, data, val, size, work)
                runs.append(r)
                res["runs"].append(r)
                save()
                print(f"{arch} {precision} data seed {data_seed}: final loss {r['final_loss']:.4f}, "
                      f"val {r['val_loss']:.4f}, {r['seconds']:.0f} s", flush=True)
            plot(runs, out / f"numerics_{arch}.png", f"{arch}: bf16 vs fp32, same data and initialisation")
            by = {(r["precision"], r["data_seed"]): r for r in runs}
            noise = abs(by["fp32", 1]["final_loss"] - by["fp32", 0]["final_loss"])
            if ("bf16", 0) in by:
                gap = abs(by["bf16", 0]["final_loss"] - by["fp32", 0]["final_loss"])
                val_gap = abs(by["bf16", 0]["val_loss"] - by["fp32", 0]["val_loss"])
                val_noise = abs(by["fp32", 1]["val_loss"] - by["fp32", 0]["val_loss"])
                res[f"{arch}_summary"] = {"bf16_fp32_gap": gap, "fp32_seed_noise": noise,
                                          "val_gap": val_gap, "val_noise": val_noise}
                print(f"{arch}: |bf16 - fp32| final loss {gap:.4f} (val {val_gap:.4f}); two fp32 data seeds "
                      f"differ by {noise:.4f} (val {val_noise:.4f})", flush=True)
        r = one_run("finch", precisions[-1], 0, args.long_steps, data, val, size, work,
                    decay_shift=args.decay_shift, lr=3e-3)
        res["strong_decay"] = r
        save()
        plot([r], out / "numerics_strong_decay.png",
             f"finch, time_decay + {args.decay_shift}, {precisions[-1]}, lr 3e-3")
        print(f"strong decays ({args.long_steps} steps, {precisions[-1]}): all losses finite: {r['all_finite']}, "
              f"final loss {r['final_loss']:.4f}, {r['seconds']:.0f} s", flush=True)
    save()


if __name__ == "__main__":
    main()
