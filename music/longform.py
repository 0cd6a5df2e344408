"""Music past the training window: how a model's loss and its music hold up when the state is carried.

    model, tokenizer = MusicRun.open("runs/music").load()
    results = long_eval(model, tokenizer, "runs/music-data", ctx_len=256, seconds=600)
    save_long_eval(results, "runs/music")      # long_eval.json and long_eval.png

Three measurements (nothing is ever re-read: every token goes through the model once per condition):

1. Loss by position, held out: windows of `windows` x ctx_len tokens of the split (its pieces laid
   end to end, separators included), each read from the initial state ctx_len tokens at a time with
   the state carried. The same tokens are also scored with the state reset every ctx_len tokens,
   which is what training saw. Equal curves past ctx_len mean the carried state neither helps nor
   harms; a carried curve climbing away from the reset one means the state degrades.
2. Note density, segment by segment: a piece of `seconds` generated from `<start>` in one pass, cut
   into segments of `segment` seconds (a note belongs to the segment of its onset), against the
   held-out pieces laid end to end and cut the same way (their 10th-90th percentile band).
3. Pitch-class drift: the Jensen-Shannon distance of each segment's pitch-class histogram to the
   pooled histogram of all held-out pieces, for the generated piece and for the held-out segments.
"""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eaglefinch.rwkv_core.data import TokenDataset
from eaglefinch.rwkv_core.files import atomic_path
from eaglefinch.rwkv_core.heldout import count_windows, first_windows, span_means, window_losses
from eaglefinch.rwkv_core.sampling import SamplerConfig

from .evaluate import check_data_tokenizer, split_pieces
from .generate import generate_music
from .metrics import js_distance, pitch_class_histogram
from .tokenizer import Note, midi_to_notes

RESULTS_FILE = "long_eval.json"
PLOT_FILE = "long_eval.png"
BAND = (10, 90)  # percentiles of the held-out segments drawn as the band to stay in
CURVE_BUCKETS_PER_WINDOW = 8  # points of the plotted loss curve per ctx_len


@torch.no_grad()
def carried_and_reset_losses(model, stream, ctx_len: int, windows: int, batch_size: int = 8,
                             max_tokens: int | None = None):
    """(carried [L], reset [L], number of windows): the mean loss at each position 0..L-1 of windows
    of L = windows x ctx_len targets, read ctx_len tokens at a time with the state carried through
    the window, and with the state reset to the initial one every ctx_len tokens (same targets)."""
    length = windows * ctx_len
    n = count_windows(stream, length, max_tokens, option="--windows")
    device = model.emb.weight.device
    model.eval()
    carried = torch.zeros(length, dtype=torch.float64)
    reset = torch.zeros(length, dtype=torch.float64)
    for x, y in first_windows(stream, length, batch_size, n):
        x, y = x.to(device), y.to(device)
        carried += window_losses(model, x, y, ctx_len).double().sum(0).cpu()
        # each ctx_len piece a sequence of its own, from the initial state
        pieces = window_losses(model, x.reshape(-1, ctx_len), y.reshape(-1, ctx_len), ctx_len)
        reset += pieces.view(x.shape[0], length).double().sum(0).cpu()
    return (carried / n).numpy(), (reset / n).numpy(), n


def end_to_end(pieces: list[list[Note]]) -> list[Note]:
    """The pieces played one after another: each starts where the previous one's last note ended."""
    notes, offset = [], 0.0
    for piece in pieces:
        notes += [dataclasses.replace(n, start=n.start + offset, end=n.end + offset) for n in piece]
        offset += max((n.end for n in piece), default=0.0)
    return notes


def segment_stats(notes: list[Note], segment: float, reference_histogram, length: float | None = None) -> list[dict]:
    """{"start" (s), "density" (onsets per second), "distance" (JS distance of the segment's pitch-class
    histogram to reference_histogram; None without pitched notes)} for each whole segment of
    `segment` seconds from 0 to `length` (default: the last note's end); a note counts in the
    segment of its onset."""
    length = max((n.end for n in notes), default=0.0) if length is None else length
    n_segments = int(length // segment)
    groups = [[] for _ in range(n_segments)]
    for n in notes:
        k = int(n.start // segment)
        if k < n_segments:
            groups[k].append(n)
    stats = []
    for k, group in enumerate(groups):
        histogram = pitch_class_histogram(group)
        stats.append({"start": k * segment, "density": len(group) / segment,
                      "distance": js_distance(histogram, reference_histogram) if histogram.any() else None})
    return stats


def band(values) -> list[float] | None:
    """The BAND percentiles of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    return [float(np.percentile(values, q)) for q in BAND] if values else None


def long_eval(model, tokenizer, data_dir, split: str = "val", *, ctx_len: int, windows: int = 8,
              seconds: float = 600.0, segment: float = 30.0, sampler=SamplerConfig(), seed: int = 0,
              batch_size: int = 8, max_tokens: int | None = None, progress: bool = True) -> dict:
    """The three measurements of the module docstring on `<data_dir>/<split>`.

    Returns {"split", "data", "ctx_len", "window_tokens", "loss": {"windows", "spans": per ctx_len span
    {"start", "end", "carried", "reset"}, "curve": {"edges", "carried", "reset"} (bucket means for the
    plot)}, "segment": seconds, "generated": {"seconds", "tokens", "tokens_per_second", "notes",
    "segments"}, "heldout": {"pieces", "seconds", "segments", "density_band", "distance_band"}}.
    """
    if not 0 < segment <= seconds:
        raise ValueError(f"segment must be in (0, seconds = {seconds:g}], got {segment:g}")
    check_data_tokenizer(data_dir, split, tokenizer)
    data = TokenDataset(data_dir, split)
    carried, reset, n = carried_and_reset_losses(model, data, ctx_len, windows, batch_size, max_tokens)
    length = windows * ctx_len
    spans = [*range(0, length, ctx_len), length]
    edges = [*range(0, length, ctx_len // CURVE_BUCKETS_PER_WINDOW or 1), length]

    heldout_pieces = split_pieces(tokenizer, data, max_tokens=len(data), progress=progress)
    heldout = end_to_end(heldout_pieces)
    reference = pitch_class_histogram(heldout)
    heldout_segments = segment_stats(heldout, segment, reference)

    ids = generate_music(model, tokenizer, [[tokenizer.START]], seconds, sampler, seed=seed, progress=progress)[0]
    generated = midi_to_notes(tokenizer.decode(ids))
    return {
        "split": split,
        "data": str(data_dir),
        "ctx_len": ctx_len,
        "window_tokens": length,
        "loss": {
            "windows": n,
            "spans": [{"start": a, "end": b, "carried": float(carried[a:b].mean()), "reset": float(reset[a:b].mean())}
                      for a, b in zip(spans[:-1], spans[1:])],
            "curve": {"edges": edges, "carried": [s["loss"] for s in span_means(carried, edges)],
                      "reset": [s["loss"] for s in span_means(reset, edges)]},
        },
        "segment": segment,
        "generated": {"seconds": seconds, "tokens": len(ids), "tokens_per_second": len(ids) / seconds,
                      "notes": len(generated), "segments": segment_stats(generated, segment, reference, seconds)},
        "heldout": {"pieces": len(heldout_pieces), "seconds": max((n.end for n in heldout), default=0.0),
                    "segments": heldout_segments,
                    "density_band": band(s["density"] for s in heldout_segments),
                    "distance_band": band(s["distance"] for s in heldout_segments)},
    }


def plot_long_eval(results: dict, path) -> Path:
    """The three measurements in one PNG (three panels), written atomically."""
    figure = Figure(figsize=(8, 10), dpi=100)
    FigureCanvasAgg(figure)
    loss_ax, density_ax, distance_ax = figure.subplots(3, 1)
    ctx_len, curve = results["ctx_len"], results["loss"]["curve"]
    middles = [(a + b) / 2 for a, b in zip(curve["edges"][:-1], curve["edges"][1:])]
    loss_ax.plot(middles, curve["carried"], marker="o", ms=2, label="state carried through the window")
    loss_ax.plot(middles, curve["reset"], marker="o", ms=2, label=f"state reset every {ctx_len} tokens (as trained)")
    for k in range(1, results["window_tokens"] // ctx_len):
        loss_ax.axvline(k * ctx_len, color="grey", ls=":", lw=0.8)
    loss_ax.set_xlabel(f"position in the window (tokens; dotted: multiples of the training ctx_len {ctx_len})")
    loss_ax.set_ylabel("held-out loss (nats/token)")
    loss_ax.set_title(f"{results['split']}: {results['loss']['windows']} windows of {results['window_tokens']} tokens")
    loss_ax.legend(fontsize="small")

    generated, heldout, segment = results["generated"], results["heldout"], results["segment"]
    window_seconds = ctx_len / generated["tokens_per_second"]
    for ax, key, label, band_key in ((density_ax, "density", "notes per second", "density_band"),
                                     (distance_ax, "distance", "pitch-class JS distance to held-out", "distance_band")):
        starts = [s["start"] + segment / 2 for s in generated["segments"]]
        values = [math.nan if s[key] is None else s[key] for s in generated["segments"]]
        ax.plot(starts, values, marker="o", ms=3, label=f"generated in one pass ({generated['seconds']:g} s)")
        if heldout[band_key] is not None:
            low, high = heldout[band_key]
            ax.axhspan(low, high, color="tab:green", alpha=0.2,
                       label=f"held-out segments, {BAND[0]}th-{BAND[1]}th percentile")
        ax.set_xlabel(f"time (s), segments of {segment:g} s; one training window = {window_seconds:.1f} s of this piece")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def save_long_eval(results: dict, out_dir) -> tuple[Path, Path]:
    """Write long_eval.json and long_eval.png into out_dir, each atomically; returns their paths."""
    out_dir = Path(out_dir)
    json_path = out_dir / RESULTS_FILE
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    return json_path, plot_long_eval(results, out_dir / PLOT_FILE)


def summary(results: dict) -> str:
    """A few lines for the terminal."""
    loss, generated, heldout = results["loss"], results["generated"], results["heldout"]
    lines = [f"held-out loss by position ({loss['windows']} windows of {results['window_tokens']} tokens), "
             f"state carried / reset every {results['ctx_len']}:"]
    lines += [f"  {s['start']:>6}-{s['end'] - 1:<6} {s['carried']:.4f} / {s['reset']:.4f}" for s in loss["spans"]]

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines.append(f"generated {generated['seconds']:g} s in one pass: {generated['tokens']:,} tokens "
                 f"({generated['tokens_per_second']:.1f}/s), {generated['notes']:,} notes; per {results['segment']:g} s "
                 f"segment (held-out band {BAND[0]}th-{BAND[1]}th percentile):")
    density, distance = heldout["density_band"], heldout["distance_band"]
    lines.append(f"  notes/s: held-out {fmt(density and density[0])}-{fmt(density and density[1])}; generated "
                 + " ".join(fmt(s["density"]) for s in generated["segments"]))
    lines.append(f"  pitch-class distance: held-out {fmt(distance and distance[0])}-{fmt(distance and distance[1])}; "
                 "generated " + " ".join(fmt(s["distance"]) for s in generated["segments"]))
    return "\n".join(lines)
