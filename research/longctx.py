"""`eaglefinch research longctx`: does the loss keep falling past the training context, and for which model?

Eagle and Finch of the same shape are trained on windows of T bytes of the standard library's
source (same data, steps and window order per seed), then read held-out windows of 8 x T bytes from
a fresh state, T bytes at a time with the state carried (`rwkv_core.heldout.position_losses`, the
pass `text eval` makes): the mean loss at each position. A curve that keeps falling past T means
the state carries what the model learned to use beyond the length it was trained on.
"""
import statistics

import numpy as np

from eaglefinch.rwkv_core.heldout import log_edges, position_losses, span_means

from .lm import EVAL_BATCH, add_steps_argument, corpus, model_config, runs_bar, seeds_of, train_model
from .report import (claim, claims_markdown, format_mean_spread, markdown_table, pyplot, save_figure,
                     write_report)
from .variants import build_variant

SCALES = {
    # 2 CPU cores: 2 models x 3 seeds in about 8 minutes (RESEARCH.md)
    "tiny": {"model": dict(n_layer=2, n_embd=128, head_size=64, mix_lora_dim=16, decay_lora_dim=16),
             "train": dict(max_steps=800, batch_size=8, ctx_len=64, lr_init=3e-3, lr_final=3e-4, warmup_steps=30),
             "data_mb": 2, "eval_tokens": 2 ** 17, "length_factor": 8},
    # one GPU: trained at 512 bytes, read to 4096
    "small": {"model": dict(n_layer=6, n_embd=512, head_size=64, mix_lora_dim=32, decay_lora_dim=64),
              "train": dict(max_steps=2000, batch_size=16, ctx_len=512, lr_init=6e-4, lr_final=6e-5, warmup_steps=100),
              "data_mb": 16, "eval_tokens": 2 ** 19, "length_factor": 8},
}
ARCHS = ("eagle", "finch")
PLOT_BUCKETS = 40


def add_arguments(parser):
    add_steps_argument(parser)


def spans(T: int, length: int) -> list[tuple[int, int]]:
    """The position spans the table reports: the second half of the training window, then each
    doubling past it: [T/2, T), [T, 2T), [2T, 4T), [4T, 8T)."""
    edges = [T // 2, T]
    while edges[-1] < length:
        edges.append(min(2 * edges[-1], length))
    return list(zip(edges[:-1], edges[1:]))


def run(args, out):
    setting = SCALES[args.scale]
    T = setting["train"]["ctx_len"]
    length = setting["length_factor"] * T
    data = corpus(setting)
    seeds = seeds_of(args)
    results = {"setting": setting, "steps": args.steps or setting["train"]["max_steps"], "seeds": seeds,
               "data": data["about"], "ctx_len": T, "length": length, "models": {a: {"curves": [], "windows": 0}
                                                                                  for a in ARCHS}}
    with runs_bar(len(ARCHS) * len(seeds), "longctx") as bar:
        for seed in seeds:
            for arch in ARCHS:
                bar.set_postfix_str(f"{arch}, seed {seed}")
                cfg = model_config(setting)
                model, record = train_model(lambda: build_variant(arch, cfg), setting, seed, data, args.device,
                                            args.steps)
                curve, windows = position_losses(model, data["val"], length, T, EVAL_BATCH, setting["eval_tokens"])
                r = results["models"][arch]
                r.update(params=record["params"], windows=windows)
                r["curves"].append(curve.tolist())
                r.setdefault("train_loss", []).append(record["train_loss"])
                r.setdefault("seconds", []).append(record["seconds"])
                bar.update(1)

    table_spans = spans(T, length)
    edges = [a for a, _ in table_spans] + [table_spans[-1][1]]
    for r in results["models"].values():   # per seed: the mean loss over each span
        r["spans"] = [[s["loss"] for s in span_means(c, edges)] for c in r["curves"]]
    span_loss = {arch: list(zip(*r["spans"])) for arch, r in results["models"].items()}   # [span][seed]
    within, last = 0, len(table_spans) - 1
    late = f"positions {table_spans[last][0]}-{table_spans[last][1] - 1}"
    results["claims"] = [
        claim(f"{arch.capitalize()}: the loss keeps falling past the training length ({late} against "
              f"{table_spans[within][0]}-{T - 1})", span_loss[arch][last], span_loss[arch][within], "lower")
        for arch in ARCHS]
    results["claims"].append(claim(f"Finch's loss at {late} is lower than Eagle's", span_loss["finch"][last],
                                   span_loss["eagle"][last], "lower"))
    gain = {arch: [a - b for a, b in zip(span_loss[arch][last], span_loss[arch][within])] for arch in ARCHS}
    results["claims"].append(claim(f"Finch gains more than Eagle from context past the training length (the fall "
                                   f"from {table_spans[within][0]}-{T - 1} to {late})", gain["finch"], gain["eagle"],
                                   "lower"))

    headers = ["model", "params"] + [f"loss at {a}-{b - 1}" for a, b in table_spans] + ["final train loss"]
    rows = [[arch, f"{r['params']:,}"] + [format_mean_spread(v) for v in span_loss[arch]]
            + [format_mean_spread(r["train_loss"])] for arch, r in results["models"].items()]
    table = markdown_table(headers, rows)
    notes = (f"Trained on windows of T = {T} bytes; held-out windows of {length} bytes "
             f"({results['models']['finch']['windows']} of them), each from a fresh state, read {T} at a time with "
             f"the state carried. Loss in nats/byte, mean ± standard deviation over seeds of the mean over each span "
             f"of positions; differences paired by seed, with their 95% interval.\n\n"
             + claims_markdown(results["claims"]))
    write_report(out, args, f"Long context: loss by position up to {length // T} x the training length", results,
                 table, [plot_positions(results, out)], notes)


def plot_positions(results, out) -> str:
    plt = pyplot()
    T, length = results["ctx_len"], results["length"]
    edges = log_edges(length, PLOT_BUCKETS)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arch, color in zip(ARCHS, ("tab:orange", "tab:blue")):
        per_seed = np.array([[s["loss"] for s in span_means(c, edges)] for c in results["models"][arch]["curves"]])
        mean, spread = per_seed.mean(0), per_seed.std(0, ddof=1) if len(per_seed) > 1 else np.zeros(per_seed.shape[1])
        # a bucket covers contexts start + 1 .. end: plotted at their geometric middle on the log axis
        x = [np.sqrt((a + 1) * b) for a, b in zip(edges[:-1], edges[1:])]
        ax.plot(x, mean, marker="o", ms=3, color=color, label=f"{arch} (mean of {len(per_seed)} seeds)")
        ax.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.2)
    ax.axvline(T, color="tab:red", ls="--", label=f"training ctx_len = {T}")
    ax.set_xscale("log")
    ax.set_xlabel("bytes of context (position + 1)")
    ax.set_ylabel("held-out loss (nats/byte)")
    lows = [statistics.fmean(c[length // 2:]) for r in results["models"].values() for c in r["curves"]]
    ax.set_ylim(top=max(lows) * 1.6)   # the first few positions' losses would flatten the rest
    ax.set_title(f"held-out loss by position, trained at {T}, state carried to {length}")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, out, "longctx.png")
