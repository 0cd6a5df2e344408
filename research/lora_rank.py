"""`eaglefinch research lora-rank`: Finch's two LoRAs swept, held-out loss against their dimension.

Finch computes its per-token decay with a LoRA of dimension `decay_lora_dim` and its five
data-dependent lerps (ddlerp) with one of dimension `mix_lora_dim` (RWKVConfig). Each sweep varies
one and holds the other at the setting's value; rank 0 is the LoRA taken out, which is exactly the
ablation's static decay or static shift (research/variants.py; the tests check that a rank-0 LoRA
and the variant compute the same). Same data, steps and per-seed window order for every model;
held-out loss in nats per byte, mean and spread over seeds.
"""
import statistics

from .cli import add_steps_argument
from .lm import corpus, heldout_loss, model_config, runs_bar, seeds_of, train_model
from .report import (claim, claims_markdown, format_difference, format_mean_spread, markdown_table,
                     paired_difference, pyplot, resumable, save_figure, write_report)
from .variants import build_variant

SCALES = {
    # 7 models x 3 seeds: 478 s on 2 CPU cores of a busy shared machine (RESEARCH.md)
    "tiny": {"model": dict(n_layer=2, n_embd=128, head_size=64, mix_lora_dim=16, decay_lora_dim=16),
             "train": dict(max_steps=300, batch_size=8, ctx_len=64, lr_init=3e-3, lr_final=3e-4, warmup_steps=30),
             "data_mb": 2, "eval_tokens": 2 ** 15, "ranks": (0, 4, 16, 64)},
    # one GPU; the released Finch models use 32 and 64 at widths 2048-4096 (64 and 128 at 7B/14B)
    "small": {"model": dict(n_layer=6, n_embd=512, head_size=64, mix_lora_dim=32, decay_lora_dim=64),
              "train": dict(max_steps=2000, batch_size=16, ctx_len=512, lr_init=6e-4, lr_final=6e-5, warmup_steps=100),
              "data_mb": 16, "eval_tokens": 2 ** 19, "ranks": (0, 8, 32, 64, 128)},
}
# sweep: (the config field it varies, the variant that is its rank 0)
SWEEPS = {"decay": ("decay_lora_dim", "static-decay"), "ddlerp": ("mix_lora_dim", "static-shift")}


def add_arguments(parser):
    add_steps_argument(parser)


def models_of(setting: dict):
    """({(sweep, rank): the name of the model trained for it}, {name: (variant, model config)}).
    The setting's own ranks are one model, "default", in both sweeps."""
    points, models = {}, {}
    for sweep, (field, static) in SWEEPS.items():
        for rank in sorted({*setting["ranks"], setting["model"][field]}):
            name = "default" if rank == setting["model"][field] else f"{sweep}-{rank}"
            points[sweep, rank] = name
            models[name] = (static, model_config(setting)) if rank == 0 else ("finch", model_config(setting, **{field: rank}))
    return points, models


def run(args, out):
    setting = SCALES[args.scale]
    data = corpus(setting)
    seeds = seeds_of(args)
    points, models = models_of(setting)
    heldout, params, seconds = {name: [] for name in models}, {}, {name: [] for name in models}
    with runs_bar(len(models) * len(seeds), "lora-rank") as bar:
        for seed in seeds:
            for name, (variant, cfg) in models.items():
                bar.set_postfix_str(f"{name}, seed {seed}")
                def one_run():
                    model, record = train_model(lambda: build_variant(variant, cfg), setting, seed, data, args.device,
                                                args.steps)
                    return {**record, "heldout_loss": heldout_loss(model, setting, data)}
                record = resumable(args, out, f"{name}-seed{seed}", one_run, setting)
                heldout[name].append(record["heldout_loss"])
                params[name] = record["params"]
                seconds[name].append(record["seconds"])
                bar.update(1)

    results = {"setting": setting, "steps": args.steps or setting["train"]["max_steps"], "seeds": seeds,
               "data": data["about"], "sweeps": {}}
    rows = []
    for sweep, (field, _) in SWEEPS.items():
        sweep_points = []
        for (s, rank), name in points.items():
            if s != sweep:
                continue
            sweep_points.append({"rank": rank, "model": name, "params": params[name], "heldout_loss": heldout[name],
                                 "vs_default": paired_difference(heldout[name], heldout["default"]),
                                 "seconds": seconds[name]})
            rows.append([f"{sweep} ({field})", rank if rank else "0 (static)", f"{params[name]:,}",
                         format_mean_spread(heldout[name]),
                         "" if name == "default" else format_difference(sweep_points[-1]["vs_default"]),
                         f"{statistics.fmean(seconds[name]):.0f}"])
        best = min(sweep_points, key=lambda p: statistics.fmean(p["heldout_loss"]))
        results["sweeps"][sweep] = {"field": field, "default": setting["model"][field], "points": sweep_points,
                                    "best_rank": best["rank"]}
    claims = []
    for sweep, (field, _) in SWEEPS.items():
        losses = {p["rank"]: p["heldout_loss"] for p in results["sweeps"][sweep]["points"]}
        d, top = setting["model"][field], max(losses)
        claims.append(claim(f"the {sweep} LoRA helps: rank {d} (the setting's) against rank 0 (static)",
                            losses[d], losses[0], "lower"))
        if top != d:
            claims.append(claim(f"a larger {sweep} LoRA helps: rank {top} against {d}", losses[top], losses[d], "lower"))
    results["claims"] = claims
    table = markdown_table(["sweep", "rank", "params", "held-out loss (nats/byte)",
                            "minus the setting's (95% interval)", "s/run"], rows)
    best = ", ".join(f"{sweep}: rank {s['best_rank']}" for sweep, s in results["sweeps"].items())
    notes = (f"The setting's ranks: decay {setting['model']['decay_lora_dim']}, ddlerp {setting['model']['mix_lora_dim']} "
             f"(one model, in both sweeps). Lowest mean held-out loss: {best}. Mean ± standard deviation over seeds; "
             f"differences paired by seed, with their 95% interval.\n\n" + claims_markdown(claims))
    write_report(out, args, "LoRA rank: Finch's decay and ddlerp LoRAs swept", results, table,
                 [plot_ranks(results, out)], notes)


def plot_ranks(results, out) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for (sweep, s), color in zip(results["sweeps"].items(), ("tab:blue", "tab:green")):
        ranks = [p["rank"] for p in s["points"]]
        means = [statistics.fmean(p["heldout_loss"]) for p in s["points"]]
        spreads = [statistics.stdev(p["heldout_loss"]) if len(p["heldout_loss"]) > 1 else 0.0 for p in s["points"]]
        ax.errorbar(ranks, means, yerr=spreads, marker="o", capsize=3, color=color,
                    label=f"{sweep} LoRA ({s['field']}; others at the setting's)")
    ax.set_xscale("symlog", linthresh=1)   # rank 0 (no LoRA) sits left of the log scale
    ranks = sorted({p["rank"] for s in results["sweeps"].values() for p in s["points"]})
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("LoRA dimension (0: static, no LoRA)")
    ax.set_ylabel("held-out loss (nats/byte)")
    ax.set_title(f"{results['steps']} steps, mean and spread over {len(results['seeds'])} seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out, "lora_rank.png")
