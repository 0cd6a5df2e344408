"""The embedded music data set: scores from music21's corpus, converted to MIDI once and cached.

music21 ships its corpus inside the wheel (no network needed). Parsing a score and writing it
as MIDI costs about a quarter of a CPU-second per Bach chorale (110 CPU-seconds for all 410),
and much more for a quartet, so the result is cached on disk; a second call only converts what
is missing. ABC tunes are returned as raw text for a byte-level model.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mido
from tqdm import tqdm

DEFAULT_CACHE_DIR = Path("~/.cache/eaglefinch/music21-midi").expanduser()

# music21 quartets as MusicXML; the .krn copies of some movements duplicate them
_QUARTET_PATTERNS = (
    "beethoven/opus*.mxl",
    "beethoven/opus*/movement*.mxl",
    "haydn/opus*/movement*.mxl",
    "mozart/k80/*.mxl",
    "mozart/k155/*.mxl",
    "mozart/k156/*.mxl",
    "mozart/k458/*.mxl",
)


@dataclass
class ConversionReport:
    """What `convert_scores` did: output files (sorted) and the sources that failed, with the reason."""

    midi_files: list[Path] = field(default_factory=list)
    converted: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def corpus_root() -> Path:
    """The folder of music21's bundled corpus (found without importing music21, which takes seconds)."""
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("music21 is not installed: pip install music21 (its wheel carries the corpus)")
    return Path(spec.submodule_search_locations[0]) / "corpus"


def bach_chorales() -> list[Path]:
    """The Bach chorale scores in music21's corpus (410 MusicXML files; the 3 .krn duplicates are left out)."""
    root = corpus_root() / "bach"
    return sorted(p for p in root.iterdir() if p.suffix in (".mxl", ".xml"))


def string_quartets() -> list[Path]:
    """String-quartet movements by Beethoven, Haydn and Mozart in music21's corpus (MusicXML)."""
    root = corpus_root()
    return sorted({p for pattern in _QUARTET_PATTERNS for p in root.glob(pattern)})


def abc_tunes(ascii_only: bool = True) -> list[str]:
    """Every tune of the corpus's .abc files as raw ABC text, one string per `X:` section.

    Deterministic order (sorted files, then file order). Text before a file's first `X:` line is
    a file comment and is dropped. With `ascii_only`, tunes holding a non-ASCII character are
    dropped, so that a byte-level model with a 128-symbol vocabulary can take every tune as is.
    """
    tunes = []
    for path in sorted(corpus_root().rglob("*.abc")):
        # a tune starts at its X: (reference number) line
        pieces = re.split(r"^(?=X:)", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        tunes += [piece.strip() + "\n" for piece in pieces if piece.startswith("X:")]
    if ascii_only:
        tunes = [t for t in tunes if t.isascii()]
    return tunes


def midi_name(score: Path) -> Path:
    """The cache path (relative) of a corpus score: its corpus path with the suffix `.mid`."""
    root = corpus_root()
    relative = score.relative_to(root) if score.is_relative_to(root) else Path(score.name)
    return relative.with_suffix(".mid")


def convert_scores(
    scores: list[Path],
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    workers: int = 2,
    progress: bool = True,
) -> ConversionReport:
    """Convert music21 scores to MIDI files under `cache_dir`, skipping those already there.

    Resumable: each file is written to a temporary name and renamed when complete, so an
    interrupted run leaves no partial file. Scores music21 cannot parse or write are counted in
    `report.failed` and skipped. `workers > 1` converts in that many processes.
    """
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    targets = {score: cache_dir / midi_name(score) for score in scores}
    if len(set(targets.values())) != len(targets):
        raise ValueError("two scores map to the same MIDI file name; pass one format per piece")
    report = ConversionReport()
    todo = [(str(s), str(t)) for s, t in targets.items() if not t.exists()]
    report.cached = len(targets) - len(todo)
    bar = tqdm(total=len(todo), desc="music21 -> MIDI", unit="score", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            _collect(report, pool.map(_convert_one, todo), bar)
    else:
        _collect(report, map(_convert_one, todo), bar)
    bar.close()
    report.midi_files = sorted(t for t in targets.values() if t.exists())
    report.seconds = time.perf_counter() - start
    return report


def default_midi_folder(cache_dir: Path | str = DEFAULT_CACHE_DIR, workers: int = 2) -> Path:
    """The embedded default data set: the Bach chorales as MIDI, converted on first use. Returns its folder."""
    report = convert_scores(bach_chorales(), cache_dir, workers=workers)
    if not report.midi_files:
        raise RuntimeError(f"no Bach chorale could be converted to MIDI ({len(report.failed)} failures)")
    return Path(cache_dir) / "bach"


def _collect(report: ConversionReport, results, bar: tqdm) -> None:
    """Count (source, error or None) results into the report as they arrive."""
    for source, error in results:
        if error is None:
            report.converted += 1
        else:
            report.failed[source] = error
        bar.update()


def _convert_one(job: tuple[str, str]) -> tuple[str, str | None]:
    """Parse one score and write it as MIDI; returns (source, None) or (source, error message)."""
    from music21 import converter  # imported here: it takes seconds, and only conversion needs it

    source, target = job
    target_path = Path(target)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target_path.parent, suffix=".tmp")
    os.close(fd)
    try:
        converter.parse(source).write("midi", fp=tmp)
        # a score with no notes converts "successfully" to an empty file: not useful data
        if not any(m.type == "note_on" and m.velocity > 0 for m in mido.MidiFile(tmp)):
            return source, "no notes"
        os.replace(tmp, target_path)
        return source, None
    except Exception as exc:  # music21 raises many kinds (parse, repeat expansion, export)
        return source, f"{type(exc).__name__}: {exc}"
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
