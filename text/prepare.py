"""Tokenise text files into train/val token shards (see rwkv_core/data.py for the format).

    stats = prepare(["corpus/"], "runs/data", WorldTokenizer(), metadata={"tokenizer": "rwkv_vocab_v20230424"})

Inputs are `.txt` files (one document per file; a file longer than max_doc_chars is cut at
paragraph breaks), `.jsonl` files (one document per line, in the "text" field) and folders of them
(searched recursively in sorted order; other files are ignored). `extensions` takes other text
files (source code, Markdown, ...): every suffix but `.jsonl` is read like `.txt`, and "*" takes
every file (in folders, hidden files and folders such as .git are then left out). Files are read in pieces and
documents go straight to the shard writers, so the corpus never has to fit in RAM.

Bad data is skipped with one warning line each and counted in the returned stats: empty files,
binary files (NUL bytes), invalid UTF-8, malformed JSONL lines, empty documents. Each file is
checked in a quick first pass, so a bad file is skipped whole, never half-tokenised. A missing input
path, an unsupported input file or a corpus with no usable document raises DataError, and then no
output folder is left behind: everything is written to a temporary folder renamed into place at the end.
"""
import codecs
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from eaglefinch.rwkv_core.data import DEFAULT_SHARD_TOKENS, DataError, ShardWriter, folder_written_whole, split_of

SUFFIXES = (".txt", ".jsonl")   # what prepare takes by default
EVERY_FILE = "*"
DEFAULT_MAX_DOC_CHARS = 1_000_000
SKIP_REASONS = ("empty_file", "binary_file", "invalid_utf8", "bad_jsonl_line", "empty_doc")
_READ_BYTES = 1 << 20


def find_files(inputs, extensions=SUFFIXES) -> list[tuple[Path, str]]:
    """Expand input files and folders to (path, key) pairs, checking them all before any work.

    `extensions`: the suffixes taken (".md" or "md"), or "*" for every file. The key names a file
    independently of where the corpus lives ("corpus/sub/a.txt" for a file found in folder
    "corpus"); it seeds the train/val split.
    """
    wanted = tuple(e if e == EVERY_FILE or e.startswith(".") else f".{e}" for e in extensions)
    every = EVERY_FILE in wanted
    files = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"input path does not exist: {path}")
        if path.is_dir():
            found = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file() and (every or p.suffix in wanted))
            if every:  # .git and the like are not part of a corpus
                found = [rel for rel in found if not any(part.startswith(".") for part in rel.parts)]
            files += [(path / rel, printable(f"{path.resolve().name}/{rel.as_posix()}")) for rel in found]
        elif every or path.suffix in wanted:
            files.append((path, printable(path.name)))
        else:
            raise DataError(f"unsupported input file {path}: expected {' or '.join(wanted)} or a folder")
    if not files:
        raise DataError(f"no {' or '.join(wanted)} files found in {[str(i) for i in inputs]}")
    return files


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (they arrive as surrogates) become \\x escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def check_file(path: Path) -> str | None:
    """Why a file must be skipped ("empty_file", "binary_file", "invalid_utf8"), or None if it is usable text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    has_text = False
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            if b"\x00" in chunk:
                return "binary_file"
            try:
                has_text = decoder.decode(chunk).strip() != "" or has_text
            except UnicodeDecodeError:
                return "invalid_utf8"
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "invalid_utf8"
    return None if has_text else "empty_file"


def txt_documents(f, max_doc_chars: int):
    """Yield the text of a binary-mode UTF-8 file as one or more documents.

    The whole file is one document unless it is longer than max_doc_chars: then a document ends at
    the first blank line past max_doc_chars, or at any line end past 2 * max_doc_chars when no
    blank line comes. Joining the documents gives back the file exactly.
    """
    lines, chars = [], 0
    for raw in f:
        line = raw.decode("utf-8")
        lines.append(line)
        chars += len(line)
        if (chars >= max_doc_chars and line.strip() == "") or chars >= 2 * max_doc_chars:
            yield "".join(lines)
            lines, chars = [], 0
    if lines:
        yield "".join(lines)


def jsonl_records(f):
    """Yield (line number, text, None) or (line number, None, problem) for each non-blank line of a binary-mode JSONL file."""
    for number, raw in enumerate(f, start=1):
        line = raw.decode("utf-8").strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield number, None, f"invalid JSON ({e.msg})"
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            yield number, None, 'expected an object with a string "text" field'
            continue
        yield number, record["text"], None


def prepare(
    inputs,
    out_dir,
    tokenizer,
    val_fraction: float = 0.01,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
    metadata: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    extensions=None,
) -> dict:
    """Tokenise `inputs` into `<out_dir>/train` and `<out_dir>/val` (read them with TokenDataset).

    A split that receives no document is left out (val/ for a tiny corpus or val_fraction=0).

    Args:
        inputs: paths of .txt / .jsonl files and folders of them.
        extensions: the file suffixes taken (default .txt and .jsonl); .jsonl is read as JSON lines,
            any other suffix as plain text; "*" takes every file.
        out_dir: output folder; it must be absent or empty unless overwrite=True, in which case
            the old folder is replaced only once the new one is complete.
        tokenizer: any object with `encode(str) -> list[int]`, ids in [1, 65535].
        val_fraction: share of documents for "val", chosen by `split_of` on the document key
            (a .txt file goes whole to one split; a .jsonl line on its own).
        shard_tokens: tokens per shard file.
        max_doc_chars: .txt files longer than this are cut into several documents.
        metadata: stored in both index files (tokenizer name, vocab size, ...).
        progress: show a tqdm bar over the input bytes and print a summary.

    Returns:
        stats: {"files", "docs", "tokens", "splits": {"train"|"val": {"docs", "tokens"}},
        "skipped": {reason: count}}, also written to `<out_dir>/stats.json`.
    """
    files = find_files(inputs, extensions or SUFFIXES)
    if not 0 <= val_fraction <= 1:
        raise DataError(f"val_fraction must be in [0, 1], got {val_fraction}")
    with folder_written_whole(out_dir, overwrite) as tmp_dir:
        stats = _tokenize(files, tmp_dir, tokenizer, val_fraction, shard_tokens, max_doc_chars, metadata, progress)
        if stats["docs"] == 0:
            raise DataError(f"no usable document in {[str(i) for i in inputs]}; skipped: {stats['skipped']}")
        (tmp_dir / "stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
    if progress:
        print(f"prepared {stats['docs']:,} documents, {stats['tokens']:,} tokens from {stats['files']} files "
              f"into {out_dir} (train {stats['splits']['train']}, val {stats['splits']['val']}); skipped {stats['skipped']}")
    return stats


def _tokenize(files, out_dir, tokenizer, val_fraction, shard_tokens, max_doc_chars, metadata, progress) -> dict:
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    used_files = 0
    total_bytes = sum(path.stat().st_size for path, _ in files)
    with ExitStack() as stack:
        writers = {s: stack.enter_context(ShardWriter(out_dir, s, shard_tokens, metadata)) for s in ("train", "val")}
        bar = stack.enter_context(tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress))

        def warn(message):
            tqdm.write(f"warning: {message}", file=sys.stderr)

        def add(text, key, where):
            ids = tokenizer.encode(text) if text and not text.isspace() else []
            if len(ids) == 0:
                skipped["empty_doc"] += 1
                warn(f"{where}: empty document, skipped")
                return
            writers[split_of(key, val_fraction)].add(ids)

        for path, key in files:
            reason = check_file(path)
            if reason is not None:
                skipped[reason] += 1
                warn(f"{path}: {reason.replace('_', ' ')}, skipped")
                bar.update(path.stat().st_size)
                continue
            used_files += 1
            with open(path, "rb") as f:
                seen = 0  # bytes of this file already counted by the progress bar
                if path.suffix != ".jsonl":
                    for text in txt_documents(f, max_doc_chars):
                        add(text, key, path)
                        bar.update(f.tell() - seen)
                        seen = f.tell()
                else:
                    for number, text, problem in jsonl_records(f):
                        if problem is None:
                            add(text, f"{key}#{number}", f"{path}:{number}")
                        else:
                            skipped["bad_jsonl_line"] += 1
                            warn(f"{path}:{number}: malformed JSONL line, {problem}; skipped")
                        bar.update(f.tell() - seen)
                        seen = f.tell()
                bar.update(f.tell() - seen)
        for name, writer in writers.items():
            if writer.docs == 0:
                # no folder rather than an empty split that TokenDataset would refuse
                writer.abort()
                warn(f"no {name} split: no document hashed into it with val_fraction={val_fraction}")
    splits = {s: {"docs": w.docs, "tokens": w.tokens} for s, w in writers.items()}
    return {
        "files": used_files,
        "docs": sum(s["docs"] for s in splits.values()),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "splits": splits,
        "skipped": skipped,
    }
