"""Token datasets shared by every modality: uint16 shards on disk, random training windows, ordered eval windows.

A split lives in its own folder, written by `ShardWriter` and read by `TokenDataset`:

    <out_dir>/<split>/index.json        format, token and document counts, the caller's metadata
    <out_dir>/<split>/shard_000000.bin  raw little-endian uint16 token ids, `shard_tokens` per file
    ...

The shards, laid end to end, are one token stream: every document followed by the separator 0
(RWKV-LM's end-of-document token; the World tokenizer never produces it). A training window of
ctx_len + 1 tokens may start anywhere, so it can cross document and shard boundaries, as in RWKV-LM.
Shards are memory-mapped, so a corpus larger than RAM only costs the pages a batch touches.

`read_binidx` / `BinidxDataset` read the Megatron / RWKV-LM `.bin` + `.idx` pair the same way:
RWKV-LM's json2binidx also ends every document with token 0 and samples the `.bin` as one stream.

All problems with the data raise `DataError` (a ValueError) with the path and what is wrong.
"""
import contextlib
import dataclasses
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from eaglefinch.kernels import to_device

from .files import remove_stale_temporaries, temporary_beside

SEPARATOR = 0
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per shard file
INDEX_NAME = "index.json"
FORMAT_NAME = "eaglefinch-token-shards"
FORMAT_VERSION = 1
MAX_TOKEN_ID = np.iinfo(np.uint16).max


class DataError(ValueError):
    """A token dataset, or the input for one, is missing, malformed or too small."""


@dataclasses.dataclass(frozen=True)
class Batch:
    """What the trainer feeds a task: input ids [B, T] and their next-token targets [B, T].

    Domains subclass it with fields of their own (visual: images, their spans, a loss mask); every
    tensor or list field has the batch as its first dimension. `to(device)` moves every tensor
    field and leaves the others as they are; `rows(a, b)` keeps samples a to b of every field."""

    inputs: torch.Tensor
    targets: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.inputs.numel()

    def to(self, device) -> "Batch":
        """On `device`. To a GPU the CPU tensors go through pinned memory without blocking: the host
        queues the copy and goes on, instead of waiting for the GPU's queue to drain."""
        moved = {f.name: to_device(getattr(self, f.name), device) for f in dataclasses.fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)

    def rows(self, start: int, stop: int) -> "Batch":
        """Samples start .. stop - 1 (every tensor and list field cut along its first dimension)."""
        cut = {f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)
               if isinstance(getattr(self, f.name), (torch.Tensor, list))}
        return dataclasses.replace(self, **cut)


def split_of(key: str, val_fraction: float) -> str:
    """Assign a document to "train" or "val" from a stable hash of its key (e.g. "books/a.txt#3").

    The same key always lands in the same split, on every machine and Python run (blake2b, not
    Python's salted `hash`), and about `val_fraction` of all keys land in "val".
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise DataError(f"val_fraction must be in [0, 1], got {val_fraction}")
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()  # file names need not be UTF-8
    u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    return "val" if u < val_fraction else "train"


def temp_dir_beside(final: Path) -> Path:
    """Create a hidden, uniquely named folder next to `final`, to be renamed onto it when complete.

    Same parent, so the rename is atomic; plain mkdir, so the permissions follow the umask.
    """
    tmp = temporary_beside(final)
    tmp.mkdir(parents=True)
    return tmp


@contextlib.contextmanager
def folder_written_whole(final, overwrite: bool = False):
    """Yield a temporary folder beside `final` to write into; it becomes `final` when the block succeeds.

    `final` must be absent or an empty folder, or any folder with overwrite=True: the old one is
    set aside and deleted only once the new one is in place. If the block raises, the temporary
    folder is removed and `final` is left as it was, so a failed run leaves nothing behind.

        with folder_written_whole("runs/data") as tmp:
            (tmp / "stats.json").write_text("{}")
    """
    final = Path(final)
    if final.exists() and not (final.is_dir() and (overwrite or not any(final.iterdir()))):
        raise DataError(f"{final} exists and is not an empty folder" + ("" if overwrite else " (--overwrite replaces it)"))
    remove_stale_temporaries(final.parent, final.name)  # what a killed writer of `final` left
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        if final.exists() and any(final.iterdir()):
            old = temp_dir_beside(final)
            final.replace(old)
            tmp.replace(final)
            shutil.rmtree(old)
        else:
            tmp.replace(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class ShardWriter:
    """Stream documents into `<out_dir>/<split>/` as uint16 shards plus `index.json`.

    Everything is written into a hidden temporary folder beside the final one and renamed into
    place by `close()`, so a reader never sees a half-written split. Used as a context manager,
    an exception inside the block removes the temporary folder and leaves nothing behind.

        with ShardWriter("data", "train", metadata={"vocab_size": 65536}) as w:
            for doc in docs:
                w.add(tokenizer.encode(doc))

    Args:
        out_dir: dataset folder (created if missing); the split goes into `out_dir/split`, which
            must not exist yet.
        split: split name, e.g. "train" or "val".
        shard_tokens: tokens per shard file; the last shard holds the remainder. A document may
            continue into the next shard.
        metadata: JSON-serialisable dict stored in the index (tokenizer name, vocab size, ...).
    """

    def __init__(self, out_dir, split: str, shard_tokens: int = DEFAULT_SHARD_TOKENS, metadata: dict | None = None):
        if not split or Path(split).name != split or split.startswith("."):
            raise DataError(f"split must be a plain folder name, got {split!r}")
        if int(shard_tokens) != shard_tokens or shard_tokens < 1:
            raise DataError(f"shard_tokens must be a positive integer, got {shard_tokens}")
        self.metadata = dict(metadata or {})
        try:
            json.dumps(self.metadata)
        except (TypeError, ValueError) as e:
            raise DataError(f"metadata must be JSON-serialisable: {e}") from None
        self.split = split
        self.shard_tokens = int(shard_tokens)
        self.final_dir = Path(out_dir) / split
        if self.final_dir.exists():
            raise DataError(f"{self.final_dir} already exists; remove it or write to another folder")
        remove_stale_temporaries(self.final_dir.parent, split)  # what a killed writer of this split left
        self.tmp_dir = temp_dir_beside(self.final_dir)
        self.shards = []  # one {"file", "tokens", "docs"} per finished shard
        self.tokens = 0
        self.docs = 0
        self._file = None
        self._shard_len = 0
        self._shard_docs = 0
        self._done = False

    def add(self, doc_tokens) -> None:
        """Append one document (a sequence of ids in [1, 65535]) followed by the separator 0."""
        if self._done:
            raise DataError("ShardWriter is already closed")
        ids = np.asarray(doc_tokens)
        if ids.ndim != 1 or ids.size == 0:
            raise DataError(f"a document must be a non-empty 1-D sequence of token ids, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise DataError(f"token ids must be integers, got dtype {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi > MAX_TOKEN_ID:
            bad = lo if lo < 0 else hi
            raise DataError(f"token id {bad} does not fit the uint16 shards (ids must be < {MAX_TOKEN_ID + 1})")
        if lo == SEPARATOR:
            raise DataError(f"token id {SEPARATOR} inside a document: it is reserved as the document separator")
        self._write(np.append(ids, SEPARATOR).astype(np.uint16))
        self.tokens += ids.size + 1
        self.docs += 1

    def _write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self._file is None:
                self._file = open(self.tmp_dir / self._shard_name(len(self.shards)), "wb")
            piece = tokens[: self.shard_tokens - self._shard_len]
            self._file.write(piece.astype("<u2").tobytes())
            self._shard_len += piece.size
            # a document is counted in the shard that holds its separator
            self._shard_docs += int(np.count_nonzero(piece == SEPARATOR))
            tokens = tokens[piece.size :]
            if self._shard_len == self.shard_tokens:
                self._finish_shard()

    @staticmethod
    def _shard_name(i: int) -> str:
        return f"shard_{i:06d}.bin"

    def _finish_shard(self) -> None:
        self._file.close()
        self.shards.append({"file": self._shard_name(len(self.shards)), "tokens": self._shard_len, "docs": self._shard_docs})
        self._file, self._shard_len, self._shard_docs = None, 0, 0

    def close(self) -> Path:
        """Finish the last shard, write the index and move the split into place. Returns its folder."""
        if self._done:
            return self.final_dir
        try:
            if self._file is not None:
                self._finish_shard()
            index = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "dtype": "uint16",
                "separator": SEPARATOR,
                "split": self.split,
                "tokens": self.tokens,
                "docs": self.docs,
                "shards": self.shards,
                "metadata": self.metadata,
            }
            (self.tmp_dir / INDEX_NAME).write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
            if self.final_dir.exists():
                raise DataError(f"{self.final_dir} appeared while writing; not overwriting it")
            # one rename publishes the whole split
            self.tmp_dir.rename(self.final_dir)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.final_dir

    def abort(self) -> None:
        """Drop everything written so far; the final folder is never created."""
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class TokenStream:
    """One token stream made of 1-D integer arrays laid end to end, cut into ctx_len windows.

    A window is ctx_len + 1 consecutive tokens: x is the first ctx_len, y the last ctx_len, so
    y[t] is the token that follows x[t]. The separator 0 is an ordinary token of the stream.
    """

    def __init__(self, arrays, name: str):
        self.name = name
        self.arrays = [a for a in arrays if len(a)]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])  # where each array starts
        if len(self) == 0:
            raise DataError(f"{name} is empty (0 tokens)")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream as int64, across array boundaries."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) outside a stream of {len(self)} tokens")
        pieces = []
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while length > 0:
            local = start - int(self.offsets[i])
            piece = self.arrays[i][local : local + length]
            pieces.append(piece)
            start, length, i = start + len(piece), length - len(piece), i + 1
        return np.concatenate(pieces).astype(np.int64)

    def _check_ctx_len(self, batch_size: int, ctx_len: int) -> None:
        if batch_size < 1 or ctx_len < 1:
            raise DataError(f"batch_size and ctx_len must be >= 1, got {batch_size} and {ctx_len}")
        if len(self) < ctx_len + 1:
            raise DataError(f"{self.name} has {len(self)} tokens; ctx_len={ctx_len} needs at least {ctx_len + 1}")

    def batch_at(self, starts, ctx_len: int) -> Batch:
        """The windows of ctx_len + 1 tokens at `starts`, as a Batch of [len(starts), ctx_len] int64 CPU tensors."""
        w = torch.from_numpy(np.stack([self.window(int(s), ctx_len + 1) for s in starts]))
        return Batch(w[:, :-1].contiguous(), w[:, 1:].contiguous())

    def sample_indices(self, batch_size: int, ctx_len: int, generator: torch.Generator | None = None) -> list[int]:
        """batch_size uniformly random window starts (a CPU torch.Generator makes them repeatable)."""
        self._check_ctx_len(batch_size, ctx_len)
        # the last valid start is len - (ctx_len + 1)
        return torch.randint(0, len(self) - ctx_len, (batch_size,), generator=generator).tolist()

    def sample_batch(self, batch_size: int, ctx_len: int, generator: torch.Generator | None = None) -> Batch:
        """Draw batch_size windows at uniformly random starts: `batch_at(sample_indices(...))`.

        The two halves exist apart so that the processes of a data-parallel run can draw one global
        batch's starts alike and each read only its own windows (`rwkv_core.train.rank_batch`).

        Returns:
            a Batch of [batch_size, ctx_len] int64 CPU tensors (inputs, targets).
        """
        return self.batch_at(self.sample_indices(batch_size, ctx_len, generator), ctx_len)

    def iter_indices(self, batch_size: int, ctx_len: int):
        """Yield the window starts of `iter_batches`' batches, a list per batch (for a process of
        several to read only its share of each with `batch_at`)."""
        self._check_ctx_len(batch_size, ctx_len)
        n_windows = (len(self) - 1) // ctx_len
        for first in range(0, n_windows, batch_size):
            last = min(first + batch_size, n_windows)
            yield [i * ctx_len for i in range(first, last)]

    def iter_batches(self, batch_size: int, ctx_len: int):
        """Yield Batches over non-overlapping windows in stream order, for validation and evaluation.

        Window i starts at i * ctx_len, so every target token is scored exactly once; the last
        (len - 1) % ctx_len targets, too few for a window, are left out. The last batch may be smaller.
        """
        for starts in self.iter_indices(batch_size, ctx_len):
            yield self.batch_at(starts, ctx_len)


class TokenDataset(TokenStream):
    """The split written by `ShardWriter` at `<data_dir>/<split>/`, memory-mapped.

    Attributes:
        docs: number of documents; metadata: the dict given to the writer; index: the whole index.
    """

    def __init__(self, data_dir, split: str):
        folder = Path(data_dir) / split
        index_path = folder / INDEX_NAME
        if not index_path.is_file():
            raise DataError(f"no '{split}' split in {data_dir}: {index_path} not found (write one with ShardWriter)")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            fmt, version, shards = index["format"], index["version"], index["shards"]
            self.docs, self.metadata = int(index["docs"]), index["metadata"]
            files = [(folder / s["file"], int(s["tokens"])) for s in shards]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{index_path} is not a valid index: {e!r}") from None
        if fmt != FORMAT_NAME or version != FORMAT_VERSION:
            raise DataError(f"{index_path}: expected {FORMAT_NAME} v{FORMAT_VERSION}, found {fmt} v{version}")
        arrays = []
        for path, tokens in files:
            size = path.stat().st_size if path.is_file() else None
            if size != 2 * tokens:
                raise DataError(f"shard {path} is missing or has the wrong size ({size} bytes, expected {2 * tokens})")
            arrays.append(np.memmap(path, dtype="<u2", mode="r", shape=(tokens,)))
        self.index = index
        super().__init__(arrays, name=f"split '{split}' of {data_dir}")


# Megatron-LM / RWKV-LM binidx: dtype codes used for token ids; 6 and 7 are float codes, never tokens.
BINIDX_MAGIC = b"MMIDIDX\x00\x00"
BINIDX_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
_BINIDX_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, doc_idx length


def read_binidx(prefix) -> np.ndarray:
    """Memory-map the token stream of a Megatron / RWKV-LM `<prefix>.bin` + `<prefix>.idx` pair.

    The `.idx` holds a header (9-byte magic b"MMIDIDX\\0\\0", u64 version 1, u8 dtype code, u64
    sequence count n, u64 doc_idx length), then int32 sizes[n] (tokens per sequence), int64
    pointers[n] (byte offsets into `.bin`) and int64 doc_idx. The `.bin` is the sequences back to
    back. Like RWKV-LM, this returns the whole `.bin` as one 1-D array, after checking that the
    sequences tile it exactly.
    """
    idx_path, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for path in (idx_path, bin_path):
        if not path.is_file():
            raise DataError(f"binidx file not found: {path}")
    with open(idx_path, "rb") as f:
        header = f.read(_BINIDX_HEADER.size)
    if len(header) < _BINIDX_HEADER.size or header[:9] != BINIDX_MAGIC:
        raise DataError(f"{idx_path} is not a binidx index (bad magic)")
    _, version, code, n_seqs, n_docs = _BINIDX_HEADER.unpack(header)
    if version != 1:
        raise DataError(f"{idx_path}: unsupported binidx version {version}")
    if code not in BINIDX_DTYPES:
        raise DataError(f"{idx_path}: dtype code {code} is not an integer token type {sorted(BINIDX_DTYPES)}")
    dtype = np.dtype(BINIDX_DTYPES[code]).newbyteorder("<")
    idx_size = _BINIDX_HEADER.size + 12 * n_seqs + 8 * n_docs
    if idx_path.stat().st_size != idx_size:
        raise DataError(f"{idx_path} has {idx_path.stat().st_size} bytes; its header implies {idx_size}")
    bin_size = bin_path.stat().st_size
    if n_seqs == 0 or bin_size == 0:
        raise DataError(f"binidx {prefix} holds no tokens")
    sizes = np.memmap(idx_path, dtype="<i4", mode="r", offset=_BINIDX_HEADER.size, shape=(n_seqs,))
    pointers = np.memmap(idx_path, dtype="<i8", mode="r", offset=_BINIDX_HEADER.size + 4 * n_seqs, shape=(n_seqs,))
    # first and last sequence bound the .bin exactly: O(1) instead of scanning billions of sizes
    end = int(pointers[-1]) + int(sizes[-1]) * dtype.itemsize
    if int(pointers[0]) != 0 or end != bin_size:
        raise DataError(f"{bin_path} has {bin_size} bytes but the index says its sequences span [{int(pointers[0])}, {end})")
    return np.memmap(bin_path, dtype=dtype, mode="r", shape=(bin_size // dtype.itemsize,))


class BinidxDataset(TokenStream):
    """A Megatron / RWKV-LM binidx pair as a token stream, with the same sample_batch / iter_batches."""

    def __init__(self, prefix):
        super().__init__([read_binidx(prefix)], name=f"binidx {prefix}")
