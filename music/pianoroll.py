"""Piano-roll pictures of notes, and the MIDI + PNG pair that generation writes."""

from __future__ import annotations

from pathlib import Path

import mido
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eaglefinch.music.tokenizer import DRUMS, Note, midi_to_notes, write_midi
from eaglefinch.rwkv_core.files import atomic_path


def save_pianoroll(notes: list[Note], path: Path | str, title: str | None = None) -> Path:
    """Draw notes as bars (time in seconds against pitch, one colour per instrument) into a PNG.

    Uses matplotlib's Agg canvas directly (no pyplot state, no display needed); the file is
    written atomically. An empty note list gives an empty, labelled plot. Returns the path.
    """
    path = Path(path)
    duration = max((n.end for n in notes), default=0.0)
    # about 4 seconds per inch, within readable bounds
    figure = Figure(figsize=(min(30.0, max(6.0, duration / 4)), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    instruments = sorted({n.instrument for n in notes})
    for index, inst in enumerate(instruments):
        own = [n for n in notes if n.instrument == inst]
        ax.barh(
            y=[n.pitch for n in own],
            width=[n.end - n.start for n in own],
            left=[n.start for n in own],
            height=0.8,
            edgecolor="white",
            linewidth=0.3,  # keeps repeated notes of one key apart
            color=f"C{index % 10}",
            label="drums" if inst == DRUMS else f"program {inst}",
        )
    if notes:
        ax.set_ylim(min(n.pitch for n in notes) - 2, max(n.pitch for n in notes) + 2)
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no notes", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def save_midi_and_pianoroll(midi: mido.MidiFile, path: Path | str, title: str | None = None) -> tuple[Path, Path]:
    """Write a generated piece: the MIDI file at `path` and its piano roll beside it (same name, .png).

    The piano roll is drawn from the file as read back by mido, so a file mido cannot read fails
    here (MidiError) rather than later. Returns (midi path, png path).
    """
    midi_path = write_midi(midi, path)
    png_path = save_pianoroll(midi_to_notes(midi_path), midi_path.with_suffix(".png"), title)
    return midi_path, png_path
