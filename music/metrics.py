"""Statistics of symbolic music, for comparing generated pieces with held-out ones.

All functions take `Note` lists (times in seconds) as read by `music.tokenizer.midi_to_notes`.
Drum notes have no pitch class, so the pitch statistics leave them out; rhythm statistics
(density, inter-onset intervals) count them. Loss per token and per note come from the model;
`MidiTokenizer.count_notes` gives the note count to divide by.
"""

from __future__ import annotations

import numpy as np

from eaglefinch.music.tokenizer import DRUMS, Note

ONSET_TOLERANCE = 1e-3  # onsets closer than 1 ms are one onset (the notes of a chord)
DENSITY_PERCENTILES = (10, 90)  # the range of a corpus's note densities that `density_range` gives


def pitch_class_histogram(notes: list[Note]) -> np.ndarray:
    """Share of non-drum notes in each pitch class C, C#, ..., B: shape [12], sums to 1 (zeros if none)."""
    counts = np.bincount([n.pitch % 12 for n in notes if n.instrument != DRUMS], minlength=12).astype(float)
    total = counts.sum()
    return counts / total if total else counts


def pitch_class_entropy(notes: list[Note]) -> float:
    """Entropy in bits of the pitch-class histogram: 0 for one pitch class, log2(12) for all equally."""
    p = pitch_class_histogram(notes)
    p = p[p > 0]
    return float((p * np.log2(1 / p)).sum())


def note_density(notes: list[Note]) -> float:
    """Notes per second, from the first onset to the last offset (0 for an empty or instant piece)."""
    if not notes:
        return 0.0
    span = max(n.end for n in notes) - min(n.start for n in notes)
    return len(notes) / span if span > 0 else 0.0


def density_range(pieces: list[list[Note]]) -> tuple[float, float]:
    """The 10th and 90th percentiles (`DENSITY_PERCENTILES`) of the note density of pieces (those
    with notes): the usual range of a corpus, to compare a generated piece with."""
    densities = [note_density(piece) for piece in pieces if piece]
    if not densities:
        raise ValueError("no piece with notes to take a density range from")
    return tuple(float(np.percentile(densities, q)) for q in DENSITY_PERCENTILES)


def piece_report(notes: list[Note], training_range: tuple[float, float] | None = None) -> str:
    """One line on a piece: its length (to its last note's end), note count and density; with
    `training_range` (from `density_range`), whether the density lies in it."""
    length = max((n.end for n in notes), default=0.0)
    density = note_density(notes)
    line = f"{length:.1f} s, {len(notes)} notes, {density:.1f} notes/s"
    if training_range is None:
        return line
    low, high = training_range
    where = "below" if density < low else "above" if density > high else "within"
    low_q, high_q = DENSITY_PERCENTILES
    return f"{line}: {where} the training pieces' {low:.1f}-{high:.1f} notes/s ({low_q}th-{high_q}th percentile)"


def inter_onset_intervals(notes: list[Note]) -> np.ndarray:
    """Seconds between consecutive distinct onsets (the notes of a chord share one onset)."""
    onsets = np.sort(np.array([n.start for n in notes], dtype=float))
    if onsets.size == 0:
        return onsets
    distinct = onsets[np.concatenate(([True], np.diff(onsets) > ONSET_TOLERANCE))]
    return np.diff(distinct)


def ioi_stats(intervals: np.ndarray) -> dict:
    """Mean, median and standard deviation of inter-onset intervals (NaN when there are none)."""
    if intervals.size == 0:
        return {"ioi_mean": float("nan"), "ioi_median": float("nan"), "ioi_std": float("nan")}
    return {
        "ioi_mean": float(intervals.mean()),
        "ioi_median": float(np.median(intervals)),
        "ioi_std": float(intervals.std()),
    }


def music_stats(notes: list[Note]) -> dict:
    """Summary of one piece: note count, pitch-class histogram and entropy, density, IOI mean/median/std."""
    return {
        "notes": len(notes),
        "pitch_class_histogram": pitch_class_histogram(notes).tolist(),
        "pitch_class_entropy": pitch_class_entropy(notes),
        "note_density": note_density(notes),
        **ioi_stats(inter_onset_intervals(notes)),
    }


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance in bits between two histograms (normalised here): 0 equal, 1 disjoint."""
    p = np.asarray(p, dtype=float) / np.sum(p)
    q = np.asarray(q, dtype=float) / np.sum(q)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / m[mask])).sum())

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def compare_note_sets(generated: list[list[Note]], reference: list[list[Note]]) -> dict:
    """Compare two sets of pieces (e.g. generated vs held-out), pooled over each set.

    Returns the pitch-class histogram JS distance and overlap (sum of minima, 1 = identical), and
    for each set its pitch-class entropy, mean note density and IOI mean/median/std (intervals
    pooled over its pieces). A set without pitched notes is an error.
    """
    sides = {"generated": generated, "reference": reference}
    result = {}
    histograms = {}
    for side, pieces in sides.items():
        pooled = [n for piece in pieces for n in piece]
        histograms[side] = pitch_class_histogram(pooled)
        if not histograms[side].any():
            raise ValueError(f"the {side} set has no pitched notes")
        ioi = np.concatenate([inter_onset_intervals(piece) for piece in pieces])
        result[f"pitch_class_entropy_{side}"] = pitch_class_entropy(pooled)
        result[f"note_density_{side}"] = float(np.mean([note_density(piece) for piece in pieces]))
        result.update({f"{key}_{side}": value for key, value in ioi_stats(ioi).items()})
    result["pitch_class_js_distance"] = js_distance(histograms["generated"], histograms["reference"])
    result["pitch_class_overlap"] = float(np.minimum(histograms["generated"], histograms["reference"]).sum())
    return result
