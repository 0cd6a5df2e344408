"""A folder of MIDI files -> train/val token shards for the music model, with augmentation.

    stats = prepare("midi/", "runs/music-data", MidiTokenizer())

Output: `<out_dir>/train` and `<out_dir>/val` written by `rwkv_core.data.ShardWriter` (read them
with `TokenDataset`; the index metadata holds the tokenizer, `MidiTokenizer.from_dict(
metadata["tokenizer"])` rebuilds it) and `stats.json`; a split that gets no file is left out.
Everything is written into a temporary folder renamed into place at the end, so a failed run
leaves nothing behind.

Each file goes whole to one split, chosen by `split_of` on its path, so augmented copies never
leak across. Training files are encoded once per (transposition, tempo factor); validation files
once, unchanged. Unusable files (unreadable, truncated, a tempo of 0, too long: any MidiError) are
counted, named on stderr and skipped.

With a conditioning tokenizer, each field of a training copy's header (instruments, tempo, key)
is left out with probability `header_dropout` (drawn from a stable hash of the path and copy), so
that the model learns to follow a request naming any of them; held-out copies keep the whole header.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from eaglefinch.music.tokenizer import DRUMS, Header, MidiError, MidiTokenizer, midi_to_notes, read_midi
from eaglefinch.rwkv_core.data import DEFAULT_SHARD_TOKENS, DataError, ShardWriter, folder_written_whole, split_of

MIDI_SUFFIXES = (".mid", ".midi")
DEFAULT_TRANSPOSITIONS = (-3, -2, -1, 0, 1, 2, 3)
DEFAULT_TEMPO_FACTORS = (0.9, 1.0, 1.1)
HEADER_DROPOUT = 0.2  # chance that a training copy's header leaves out a field


def find_midi_files(folder: Path | str) -> list[tuple[Path, str]]:
    """Every .mid/.midi file under `folder` (recursively, sorted) with its split key "<folder name>/<relative path>"."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"MIDI folder not found: {folder}")
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)
    return [(folder / rel, f"{folder.resolve().name}/{rel}") for rel in found if (folder / rel).is_file()]


def prepare(
    folder: Path | str,
    out_dir: Path | str,
    tokenizer: MidiTokenizer | None = None,
    transpositions: Iterable[int] = DEFAULT_TRANSPOSITIONS,
    tempo_factors: Iterable[float] = DEFAULT_TEMPO_FACTORS,
    val_fraction: float = 0.1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
    overwrite: bool = False,
    header_dropout: float = HEADER_DROPOUT,
) -> dict:
    """Tokenize every MIDI file under `folder` into `<out_dir>/train` and `<out_dir>/val`.

    Args:
        folder: searched recursively for .mid / .midi files.
        out_dir: output folder; must be absent or empty unless `overwrite`, in which case the old
            folder is replaced once the new one is complete (a failed run leaves it as it was).
        tokenizer: a MidiTokenizer (default config if None); stored in both index files.
        transpositions: semitones for training copies (drums stay); a transposition that would
            move a pitch out of 0..127 is skipped for that file and counted.
        tempo_factors: speed factors for training copies (>1 is faster).
        val_fraction: share of files for "val" (by a stable hash of the path).
        shard_tokens, progress: as for `rwkv_core.data.ShardWriter`; a tqdm bar over files.
        header_dropout: with a conditioning tokenizer, the chance that a training copy's header
            leaves out each of its fields.

    Returns:
        stats: {"files", "docs", "tokens", "notes", "splits": {"train"|"val": {"docs", "tokens",
        "notes"}}, "skipped": {"unreadable", "empty", "transpositions"}, "unreadable": {key: reason}},
        also written to `<out_dir>/stats.json`. "tokens" count the separators, "notes" the notes
        (for loss per note). Raises DataError when nothing usable is found.
    """
    tokenizer = tokenizer or MidiTokenizer()
    if overwrite and Path(folder).resolve().is_relative_to(Path(out_dir).resolve()):
        raise DataError(f"{out_dir} holds the MIDI folder {folder}: overwriting it would delete the input")
    files = find_midi_files(folder)
    if not files:
        raise DataError(f"no .mid or .midi files under {folder}")
    augmentations = {"train": [(t, f) for t in transpositions for f in tempo_factors], "val": [(0, 1.0)]}
    metadata = {"tokenizer": tokenizer.to_dict(), "vocab_size": tokenizer.vocab_size}
    with folder_written_whole(out_dir, overwrite) as tmp_dir:
        stats = _tokenize(files, tmp_dir, tokenizer, augmentations, val_fraction, shard_tokens, metadata, progress,
                          header_dropout)
        if stats["docs"] == 0:
            raise DataError(f"no usable MIDI file under {folder}; skipped: {stats['skipped']}")
        (tmp_dir / "stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
    if progress:
        print(f"prepared {stats['docs']:,} documents, {stats['tokens']:,} tokens, {stats['notes']:,} notes "
              f"from {stats['files']} files into {out_dir}; skipped {stats['skipped']}")
    return stats


def _tokenize(files, out_dir, tokenizer, augmentations, val_fraction, shard_tokens, metadata, progress,
              header_dropout) -> dict:
    skipped = {"unreadable": 0, "empty": 0, "transpositions": 0}
    unreadable = {}
    notes = {"train": 0, "val": 0}
    with ExitStack() as stack:
        writers = {s: stack.enter_context(ShardWriter(out_dir, s, shard_tokens, metadata)) for s in ("train", "val")}
        for path, key in tqdm(files, desc="tokenizing", unit="file", disable=not progress):
            split = split_of(key, val_fraction)
            try:  # the whole file, so that a file failing late (in any copy) adds nothing
                copies, out_of_range = _encode_copies(path, tokenizer, augmentations[split])
            except MidiError as exc:
                skipped["unreadable"] += 1
                unreadable[key] = str(exc)
                tqdm.write(f"warning: {exc}; skipped", file=sys.stderr)
                continue
            if copies is None:
                skipped["empty"] += 1
                continue
            skipped["transpositions"] += out_of_range
            for copy, ids in enumerate(copies):
                if split == "train" and tokenizer.config.conditioning:
                    ids = _drop_header_fields(tokenizer, ids, random.Random(f"{key}/{copy}"), header_dropout)
                writers[split].add(ids)
                notes[split] += tokenizer.count_notes(ids)
        for name, writer in writers.items():
            if writer.docs == 0:  # no folder rather than an empty split that TokenDataset would refuse
                writer.abort()
                if any(w.docs for w in writers.values()):  # with no document at all, prepare() says so
                    tqdm.write(f"warning: no {name} split: no file hashed into it with val_fraction={val_fraction}",
                               file=sys.stderr)
    splits = {s: {"docs": w.docs, "tokens": w.tokens, "notes": notes[s]} for s, w in writers.items()}
    return {
        "files": len(files),
        "docs": sum(s["docs"] for s in splits.values()),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "notes": sum(notes.values()),
        "splits": splits,
        "skipped": skipped,
        "unreadable": unreadable,
    }


def _drop_header_fields(tokenizer, ids, rng: random.Random, p: float) -> list[int]:
    """`ids` with each field of their header left out with probability p."""
    header = tokenizer.read_header(ids)
    dropped = [rng.random() < p for _ in range(3)]
    return tokenizer.with_header(ids, Header(() if dropped[0] else header.instruments,
                                             None if dropped[1] else header.tempo_bin, None if dropped[2] else header.key))


def _encode_copies(path, tokenizer, augmentations) -> tuple[list[list[int]] | None, int]:
    """The token ids of one file's copies, one per (transposition, tempo factor), and how many
    transpositions were left out for moving a pitch out of 0..127; (None, 0) for a file without notes.

    Raises MidiError for a file that is not usable MIDI.
    """
    midi = read_midi(path)
    piece = midi_to_notes(midi, tokenizer.config.sustain)
    if not piece:
        return None, 0
    pitches = {n.pitch for n in piece if n.instrument != DRUMS}  # drums are never transposed
    copies, out_of_range = [], 0
    for transpose, tempo_factor in augmentations:
        if any(not 0 <= p + transpose <= 127 for p in pitches):
            out_of_range += 1
            continue
        copies.append(tokenizer.encode(midi, transpose=transpose, tempo_factor=tempo_factor))
    return copies, out_of_range
