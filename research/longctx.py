"""`eaglefinch research longctx`: does the loss keep falling past the training context, and for which model?

Eagle and Finch of the same shape are trained on windows of T bytes of the standard library's
source (same data, steps and window order per seed). Then the same held-out bytes are read two ways:

- long: windows of 8 x T bytes from a fresh state, read T at a time with the state carried (as
  `text eval` reads its long windows): the byte at position p has p + 1 bytes of context;
- short: each span [kT, (k+1)T) of those windows read again from a fresh state T bytes earlier, so
  every byte past the first span has T + 1 to 2T bytes of context, about what training showed.

The per-position curve of the long reading is what `text eval` plots; but positions differ in
content as well as in context, so the claims compare the two readings of the same bytes: long
minus short is what the context beyond 2T bytes is worth, free of what the bytes are.
"""
import statistics

import numpy as np

from eaglefinch.rwkv_core.heldout import count_windows, log_edges, losses_at, span_means

from .cli import add_steps_argument
from .lm import EVAL_BATCH, corpus, model_config, runs_bar, seeds_of, train_model
from .report import (claim, claims_markdown, format_mean_spread, markdown_table, pyplot, resumable,
                     save_figure, write_report)
from .variants import build_variant

SCALES = {
    # 2 models x 3 seeds: 301 s on 2 CPU cores of a busy shared machine (RESEARCH.md)
    "tiny": {"model": dict(n_layer=2, n_embd=128, head_size=64, mix_lora_dim=16, decay_lora_dim=16),
             "train": dict(max_steps=600, batch_size=8, ctx_len=64, lr_init=3e-3, lr_final=3e-4, warmup_steps=30),
             "data_mb": 2, "eval_tokens": 2 ** 16, "length_factor": 8},
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


def long_and_short(model, stream, T: int, length: int, n_windows: int):
    """(long, short): per-byte losses [n_windows, length] of the same held-out bytes, read in windows
    of `length` from a fresh state (long), and each span [kT, (k+1)T) re-read from a fresh state T
    bytes before it (short: T + 1 to 2T bytes of context; the first span is read alike in both)."""
    starts = [i * length for i in range(n_windows)]
    long = losses_at(model, stream, starts, length, T, EVAL_BATCH)
    short = long.clone()
    for k in range(1, length // T):
        again = losses_at(model, stream, [s + (k - 1) * T for s in starts], 2 * T, T, EVAL_BATCH)
        short[:, k * T:(k + 1) * T] = again[:, T:]
    return long, short


def run(args, out):
    setting = SCALES[args.scale]
    T = setting["train"]["ctx_len"]
    length = setting["length_factor"] * T
    data = corpus(setting)
    n_windows = count_windows(data["val"], length, setting["eval_tokens"], "eval_tokens")
    seeds = seeds_of(args)
    table_spans = spans(T, length)
    results = {"setting": setting, "steps": args.steps or setting["train"]["max_steps"], "seeds": seeds,
               "data": data["about"], "ctx_len": T, "length": length, "windows": n_windows, "spans": table_spans,
               "models": {arch: {"curves": [], "short_curves": [], "long": [], "short": [], "train_loss": [],
                                 "seconds": []} for arch in ARCHS}}
    with runs_bar(len(ARCHS) * len(seeds), "longctx") as bar:
        for seed in seeds:
            for arch in ARCHS:
                bar.set_postfix_str(f"{arch}, seed {seed}")
                def one_run():
                    cfg = model_config(setting)
                    model, record = train_model(lambda: build_variant(arch, cfg), setting, seed, data, args.device,
                                                args.steps)
                    long, short = long_and_short(model, data["val"], T, length, n_windows)
                    return {**record, "curve": long.double().mean(0).tolist(), "short_curve": short.double().mean(0).tolist(),
                            # per span: the mean loss of its bytes, read long and read short
                            "long": [long[:, a:b].double().mean().item() for a, b in table_spans],
                            "short": [short[:, a:b].double().mean().item() for a, b in table_spans]}
                record = resumable(args, out, f"{arch}-seed{seed}", one_run, setting)
                r = results["models"][arch]
                r["params"] = record["params"]
                r["curves"].append(record["curve"])
                r["short_curves"].append(record["short_curve"])
                for key in ("long", "short", "train_loss", "seconds"):
                    r[key].append(record[key])
                bar.update(1)

    def per_span(arch, reading):   # [span][seed]
        return list(zip(*results["models"][arch][reading]))

    def gain(arch, i):             # long minus short over span i, per seed
        return [a - b for a, b in zip(per_span(arch, "long")[i], per_span(arch, "short")[i])]

    last = len(table_spans) - 1
    late = f"{table_spans[last][0]}-{table_spans[last][1] - 1}"
    results["claims"] = [
        claim(f"{arch.capitalize()}: context past the training length lowers the loss (bytes at positions {late} with "
              f"all the context before them, against the same bytes with {T + 1}-{2 * T} bytes of it)",
              per_span(arch, "long")[last], per_span(arch, "short")[last], "lower") for arch in ARCHS]
    results["claims"] += [
        claim(f"Finch's loss at positions {late} (all the context) is lower than Eagle's", per_span("finch", "long")[last],
              per_span("eagle", "long")[last], "lower"),
        claim(f"Finch gains more than Eagle from the context past {2 * T} bytes (at positions {late})",
              gain("finch", last), gain("eagle", last), "lower")]

    headers = (["model", "params"] + [f"loss at {a}-{b - 1}" for a, b in table_spans]
               + [f"{a}-{b - 1}: all minus {T + 1}-{2 * T} bytes of context" for a, b in table_spans[2:]]
               + ["final train loss"])
    rows = [[arch, f"{r['params']:,}"] + [format_mean_spread(v) for v in per_span(arch, "long")]
            + [format_mean_spread(gain(arch, i), 3) for i in range(2, len(table_spans))]
            + [format_mean_spread(r["train_loss"])] for arch, r in results["models"].items()]
    table = markdown_table(headers, rows)
    notes = (f"Trained on windows of T = {T} bytes; {n_windows} held-out windows of {length} bytes, each from a "
             f"fresh state, read {T} at a time with the state carried (\"loss at\": the mean over those positions). "
             f"The same bytes re-read with only {T + 1}-{2 * T} bytes of context before them give the last columns: "
             f"negative means the longer context helped. Loss in nats/byte, mean ± standard deviation over seeds; "
             f"differences paired by seed, with their 95% interval.\n\n" + claims_markdown(results["claims"]))
    write_report(out, args, f"Long context: loss by position up to {length // T} x the training length", results,
                 table, [plot_positions(results, out)], notes)


def plot_positions(results, out) -> str:
    """Left: loss by position (the long reading; dashed: the same bytes read short). Right: long minus
    short past 2T, where the two readings differ only in how much context came before."""
    plt = pyplot()
    T, length = results["ctx_len"], results["length"]
    edges = log_edges(length, PLOT_BUCKETS)
    x = np.array([np.sqrt((a + 1) * b) for a, b in zip(edges[:-1], edges[1:])])   # geometric middles of the buckets
    past = np.array(edges[:-1]) >= 2 * T
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for arch, color in zip(ARCHS, ("tab:orange", "tab:blue")):
        r = results["models"][arch]
        long = np.array([[s["loss"] for s in span_means(c, edges)] for c in r["curves"]])
        short = np.array([[s["loss"] for s in span_means(c, edges)] for c in r["short_curves"]])
        for ax, values, where in ((left, long, slice(None)), (right, long - short, past)):
            mean = values.mean(0)[where]
            spread = values.std(0, ddof=1)[where] if len(values) > 1 else np.zeros_like(mean)
            ax.plot(x[where], mean, marker="o", ms=3, color=color, label=f"{arch} (mean of {len(values)} seeds)")
            ax.fill_between(x[where], mean - spread, mean + spread, color=color, alpha=0.2)
        left.plot(x, short.mean(0), ls="--", color=color, lw=1, label=f"{arch}, the same bytes read short")
    left.axvline(T, color="tab:red", ls="--", lw=1, label=f"training ctx_len = {T}")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("bytes of context (position + 1)")
        ax.grid(alpha=0.3)
    right.axhline(0, color="black", lw=1)
    lows = [statistics.fmean(c[length // 2:]) for r in results["models"].values() for c in r["curves"]]
    left.set_ylim(top=max(lows) * 1.6)   # the first few positions' losses would flatten the rest
    left.set_ylabel("held-out loss (nats/byte)")
    left.set_title(f"by position, trained at {T}, state carried to {length}")
    right.set_ylabel(f"all the context minus {T + 1}-{2 * T} bytes of it")
    right.set_title("the same bytes read long and short")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    return save_figure(fig, out, "longctx.png")
