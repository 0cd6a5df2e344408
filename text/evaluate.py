"""Held-out evaluation of a text model: loss, bits per byte, and loss against position in long windows.

    model, tokenizer = TextRun.open("runs/text").load()
    results = evaluate(model, "runs/data", "val", tokenizer=tokenizer, ctx_len=128)
    save_results(results, run)     # eval.json and eval_positions.png

Two passes over the split, each over non-overlapping windows laid end to end from the start of the
token stream (as the trainer's validation does):

1. Windows of the training ctx_len, each from the model's initial state: the mean loss (nats per
   token) and bits per byte. Bits per byte = total nats / ln 2 / total UTF-8 bytes of the scored
   target tokens, with each token's bytes taken from the tokenizer's `decode_bytes`, so a trimmed
   vocabulary counts the same bytes as the full one. The document separator (id 0) is scored like
   any token, since predicting where a document ends is part of modelling the text, but it has no
   bytes: its nats are charged to the bytes of the text around it.
2. Windows of max_len (default 4 x ctx_len), run ctx_len tokens at a time with the recurrent state
   carried, so memory does not grow with the window: the mean loss at each position, i.e. how well
   the model predicts the next token after position + 1 tokens of context. A curve that keeps
   falling past ctx_len means the model uses context longer than it was trained on.

Windows start wherever the previous one ended, so like training windows they may begin inside a
document and run across document separators.
"""
import json
import math
from pathlib import Path

import numpy as np
import torch

from eaglefinch.rwkv_core.files import atomic_path
from eaglefinch.rwkv_core.data import MAX_TOKEN_ID, SEPARATOR, DataError, TokenDataset
from eaglefinch.rwkv_core.heldout import heldout_nats, log_edges, position_losses, span_means

from .subset import SubsetTokenizer
from .tokenizer import WorldTokenizer

RESULTS_FILE = "eval.json"
PLOT_FILE = "eval_positions.png"
PLOT_BUCKETS = 48        # log-spaced position buckets of the smoothed curve


def _id_map(tokenizer, model_vocab: int, data_name: str):
    """A function turning (x, y) batches of the ids stored in the shards (World ids) into model ids:
    the identity for the World vocabulary, a lookup for a trimmed one. A batch with an id the model
    has no output for raises DataError."""
    if isinstance(tokenizer, SubsetTokenizer):
        if tokenizer.vocab_size != model_vocab:
            raise ValueError(f"the model has {model_vocab} outputs but its vocab_subset.json {tokenizer.vocab_size} ids")
        table = torch.full((MAX_TOKEN_ID + 1,), -1, dtype=torch.long)  # -1 where the model has no id
        table[torch.tensor(tokenizer.ids)] = torch.arange(len(tokenizer.ids))
        outside = (f"{data_name} has tokens outside the model's trimmed vocabulary; evaluate on data whose tokens "
                   f"the run was trained with (e.g. its own val split)")
    else:
        table = None
        outside = (f"{data_name} has token ids beyond the model's {model_vocab} outputs; a trimmed-vocabulary run "
                   f"needs its vocab_subset.json, other models data prepared for their vocabulary")

    def map_ids(x, y):
        if table is not None:
            x, y = table[x], table[y]
        if min(x.min(), y.min()) < 0 or max(x.max(), y.max()) >= model_vocab:
            raise DataError(outside)
        return x, y

    return map_ids


def evaluate(model, data_dir, split: str = "val", tokenizer=None, ctx_len: int | None = None,
             max_len: int | None = None, batch_size: int = 8, max_tokens: int | None = None,
             progress: bool = True) -> dict:
    """Score `model` on `<data_dir>/<split>` (token shards written by `text.prepare.prepare`).

    Args:
        model: an RWKV; it is put in eval mode and runs on its own device.
        tokenizer: what the shards' ids decode with (WorldTokenizer, the default, or the run's
            SubsetTokenizer: the shards then hold World ids, mapped to the model's trimmed ids).
        ctx_len: the training context length (default: the model config's ctx_len).
        max_len: window length of the per-position curve (default 4 * ctx_len).
        max_tokens: score at most this many target tokens in each pass (whole windows, at least one).

    Returns:
        {"split", "data", "ctx_len", "max_len",
         "tokens", "bytes", "separators": scored targets, their UTF-8 bytes, how many are id 0,
         "loss": nats/token, "bits_per_token", "bits_per_byte" (None if the targets have no bytes),
         "positions": {"windows", "loss": mean loss at each position 0..max_len-1,
                       "segments": mean per ctx_len-long span, "buckets": log-spaced spans for the plot}}
    """
    tokenizer = tokenizer or WorldTokenizer()
    ctx_len = ctx_len or model.cfg.ctx_len
    max_len = max_len or 4 * ctx_len
    if batch_size < 1 or ctx_len < 1 or max_len < 1:
        raise ValueError(f"batch_size, ctx_len and max_len must be >= 1, got {batch_size}, {ctx_len}, {max_len}")
    stream = TokenDataset(data_dir, split)
    map_ids = _id_map(tokenizer, model.cfg.vocab_size, stream.name)

    # pass 1: training-length windows, each from a fresh state
    nats, counts = heldout_nats(model, stream, ctx_len, batch_size, max_tokens, map_ids, progress)
    tokens = int(counts.sum())
    n_bytes = sum(int(counts[i]) * len(tokenizer.decode_bytes([i])) for i in counts.nonzero().flatten().tolist())

    # pass 2: long windows in ctx_len chunks with the state carried
    curve, n_long = position_losses(model, stream, max_len, ctx_len, batch_size, max_tokens, map_ids, progress,
                                    option="--max-len")

    return {
        "split": split,
        "data": str(data_dir),
        "ctx_len": ctx_len,
        "max_len": max_len,
        "tokens": tokens,
        "bytes": n_bytes,
        "separators": int(counts[SEPARATOR]),
        "loss": nats / tokens,
        "bits_per_token": nats / tokens / math.log(2),
        "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else None,
        "positions": {
            "windows": n_long,
            "loss": curve.tolist(),
            "segments": span_means(curve, [*range(0, max_len, ctx_len), max_len]),
            "buckets": span_means(curve, log_edges(max_len, PLOT_BUCKETS)),
        },
    }


def save_results(results: dict, out_dir) -> tuple[Path, Path]:
    """Write eval.json and eval_positions.png into out_dir, each atomically. Returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    json_path, plot_path = out_dir / RESULTS_FILE, out_dir / PLOT_FILE
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(results, indent=1))

    pos = results["positions"]
    # x = tokens of context the prediction had (position + 1), so the axis can be logarithmic
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(pos["loss"]) + 1), pos["loss"], color="tab:blue", alpha=0.25, lw=0.8,
            label="each position")
    # a bucket covers contexts start + 1 .. end: plot it at their geometric middle on the log axis
    ax.plot([math.sqrt((b["start"] + 1) * b["end"]) for b in pos["buckets"]], [b["loss"] for b in pos["buckets"]],
            color="tab:blue", marker="o", ms=3, label="bucket mean")
    ax.axvline(results["ctx_len"], color="tab:red", ls="--", label=f"training ctx_len = {results['ctx_len']}")
    ax.set_xscale("log")
    ax.set_xlabel("tokens of context (position + 1)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{results['split']}: {pos['windows']} windows of {results['max_len']} tokens, state carried")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(plot_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return json_path, plot_path


def summary(results: dict) -> str:
    """A few lines for the terminal: headline numbers and the loss per ctx_len span of long windows."""
    bpb = results["bits_per_byte"]
    lines = [f"{results['split']}: {results['tokens']:,} tokens, {results['bytes']:,} bytes in windows of "
             f"{results['ctx_len']}: loss {results['loss']:.4f} nats/token, "
             f"{'n/a' if bpb is None else f'{bpb:.4f}'} bits/byte",
             f"loss by position ({results['positions']['windows']} windows of {results['max_len']}, state carried):"]
    lines += [f"  {s['start']:>7}-{s['end'] - 1:<7} {s['loss']:.4f}" for s in results["positions"]["segments"]]
    return "\n".join(lines)
