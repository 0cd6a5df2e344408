"""`eaglefinch research ablation`: what each part of Finch is worth, in held-out loss.

Finch full; without token shift; with Eagle's static lerp instead of ddlerp; with a static decay
(no decay LoRA); Eagle; and Finch at head sizes 32 and 128 beside its 64 (equal width, equal
parameter count). Variants: research/variants.py. Every model gets the same bytes of the standard
library's source, the same steps and, per seed, the same order of training windows and (where
they share weights) the same initial weights; held-out loss in nats per byte on the last 5% of
the corpus, mean and spread over seeds, each variant's difference to Finch paired by seed.
"""
import statistics

from .cli import add_steps_argument
from .lm import (corpus, heldout_loss, mean_curve, model_config, runs_bar, seeds_of,
                 train_model)
from .report import (claim, claims_markdown, format_difference, format_mean_spread, markdown_table,
                     paired_difference, pyplot, resumable, save_figure, write_report)
from .variants import build_variant

SCALES = {
    # 7 models x 3 seeds: 591 s on 2 CPU cores of a busy shared machine (RESEARCH.md)
    "tiny": {"model": dict(n_layer=2, n_embd=128, head_size=64, mix_lora_dim=16, decay_lora_dim=16),
             "train": dict(max_steps=300, batch_size=8, ctx_len=64, lr_init=3e-3, lr_final=3e-4, warmup_steps=30),
             "data_mb": 2, "eval_tokens": 2 ** 15},
    # one GPU: 6 layers x 512, 2000 steps of 16 x 512 bytes (16M bytes, 1.3 passes over the whole corpus)
    "small": {"model": dict(n_layer=6, n_embd=512, head_size=64, mix_lora_dim=32, decay_lora_dim=64),
              "train": dict(max_steps=2000, batch_size=16, ctx_len=512, lr_init=6e-4, lr_final=6e-5, warmup_steps=100),
              "data_mb": 16, "eval_tokens": 2 ** 19},
}

# name: (variant of research/variants.py, head size or None for the setting's, what it is)
MODELS = {
    "finch": ("finch", None, "Finch (RWKV-6) as published: the reference"),
    "no-shift": ("no-shift", None, "no token shift: the previous token is never mixed in"),
    "static-shift": ("static-shift", None, "Eagle-style static lerp instead of ddlerp"),
    "static-decay": ("static-decay", None, "static decay: no decay LoRA"),
    "eagle": ("eagle", None, "Eagle (RWKV-5.2)"),
    "finch-head32": ("finch", 32, "Finch, head size 32 (twice the heads)"),
    "finch-head128": ("finch", 128, "Finch, head size 128 (half the heads)"),
}

CLAIMS = [  # (the paper's claim, the model that lacks the part, the direction of its loss against Finch's)
    ("token shift helps (without it the loss is higher)", "no-shift", "higher"),
    ("data-dependent token shift (ddlerp) beats a static lerp", "static-shift", "higher"),
    ("data-dependent decay beats a static decay", "static-decay", "higher"),
    ("Finch beats Eagle at equal data and steps", "eagle", "higher"),
]


def add_arguments(parser):
    add_steps_argument(parser)


def build(name: str, setting: dict):
    variant, head_size, _ = MODELS[name]
    cfg = model_config(setting, **({"head_size": head_size} if head_size else {}))
    return lambda: build_variant(variant, cfg)


def run(args, out):
    setting = SCALES[args.scale]
    data = corpus(setting)
    seeds = seeds_of(args)
    records = {name: [] for name in MODELS}
    with runs_bar(len(MODELS) * len(seeds), "ablation") as bar:
        for seed in seeds:
            for name in MODELS:
                bar.set_postfix_str(f"{name}, seed {seed}")
                def one_run():
                    model, record = train_model(build(name, setting), setting, seed, data, args.device, args.steps)
                    return {**record, "heldout_loss": heldout_loss(model, setting, data)}
                records[name].append(resumable(args, out, f"{name}-seed{seed}", one_run, setting))
                bar.update(1)

    heldout = {name: [r["heldout_loss"] for r in rs] for name, rs in records.items()}
    results = {"setting": setting, "steps": args.steps or setting["train"]["max_steps"], "seeds": seeds,
               "data": data["about"], "models": {}, "claims": []}
    for name, rs in records.items():
        variant, head_size, about = MODELS[name]
        results["models"][name] = {
            "about": about, "head_size": head_size or setting["model"]["head_size"], "params": rs[0]["params"],
            "heldout_loss": heldout[name], "train_loss": [r["train_loss"] for r in rs],
            "seconds": [r["seconds"] for r in rs], "vs_finch": paired_difference(heldout[name], heldout["finch"]),
            "curves": [r["curve"] for r in rs]}
    results["claims"] = [claim(text, heldout[name], heldout["finch"], expect) for text, name, expect in CLAIMS]

    rows = []
    for name, r in results["models"].items():
        rows.append([name, r["about"], r["head_size"], f"{r['params']:,}", format_mean_spread(r["heldout_loss"]),
                     "" if name == "finch" else format_difference(r["vs_finch"]),
                     format_mean_spread(r["train_loss"]), f"{statistics.fmean(r['seconds']):.0f}"])
    table = markdown_table(["model", "what", "head", "params", "held-out loss (nats/byte)",
                            "minus Finch's (95% interval)", "final train loss", "s/run"], rows)
    notes = ("Mean ± standard deviation over seeds; the difference to Finch is paired by seed, with its 95% "
             "interval (Student's t).\n\n" + claims_markdown(results["claims"]))
    plots = [plot_losses(results, out), plot_curves(results, out)]
    write_report(out, args, "Ablation: Finch's parts in held-out loss", results, table, plots, notes)


def plot_losses(results, out) -> str:
    """Left: each model's held-out loss (seeds as dots, mean and spread); right: its difference to
    Finch's, paired by seed, with the 95% interval (what the claims are judged on)."""
    plt = pyplot()
    names = list(results["models"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(names):
        r = results["models"][name]
        losses, d = r["heldout_loss"], r["vs_finch"]
        color = "tab:blue" if name == "finch" else "black"
        left.errorbar(i, statistics.fmean(losses), yerr=statistics.stdev(losses) if len(losses) > 1 else 0,
                      fmt="s", color=color, capsize=4)
        left.plot([i] * len(losses), losses, "o", color=color, ms=3, alpha=0.5)
        if name != "finch":
            diffs = [a - b for a, b in zip(losses, results["models"]["finch"]["heldout_loss"])]
            if d["low"] is not None:
                right.errorbar(i, d["mean"], yerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="s",
                               color="black", capsize=4)
            right.plot([i] * len(diffs), diffs, "o", color="black", ms=3, alpha=0.5)
    right.axhline(0, color="tab:blue", lw=1)
    for ax in (left, right):
        ax.set_xticks(range(len(names)), names, rotation=25)
        ax.grid(alpha=0.3, axis="y")
    left.set_ylabel("held-out loss (nats/byte)")
    left.set_title("mean ± spread over seeds (dots)")
    right.set_ylabel("minus Finch's, same seed")
    right.set_title("difference to Finch: 95% interval (dots: seeds)")
    fig.suptitle(f"Ablation, {results['steps']} steps, {len(results['seeds'])} seeds")
    return save_figure(fig, out, "ablation.png")


def plot_curves(results, out) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, r in results["models"].items():
        steps, losses = zip(*mean_curve(r["curves"]))
        ax.plot(steps, losses, label=name, lw=2 if name == "finch" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/byte), mean over seeds")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out, "ablation_curves.png")
