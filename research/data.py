"""A real corpus that installs everywhere: the source of this Python's standard library, as bytes.

    train, val = stdlib_splits(limit_mb=2)        # TokenStreams of byte ids (vocabulary 256)

Nothing to download: the .py files of the running interpreter's standard library (its tests and
site-packages left out), sorted by path and concatenated, one token per byte. The bytes differ a
little between Python versions, so results record the version and the byte count.
"""
import sysconfig
from pathlib import Path

import numpy as np

from eaglefinch.rwkv_core.data import TokenStream

VOCAB_SIZE = 256   # one id per byte value
VAL_FRACTION = 0.05


def stdlib_bytes(limit_mb: float) -> np.ndarray:
    """The standard library's .py files, sorted by path, concatenated up to limit_mb, as uint8."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        data = path.read_bytes()
        chunks.append(data + b"\n\n")
        size += len(data) + 2
        if size >= limit_mb * 2 ** 20:
            break
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()


def stdlib_splits(limit_mb: float, val_fraction: float = VAL_FRACTION) -> tuple[TokenStream, TokenStream]:
    """(train, val) token streams of `stdlib_bytes(limit_mb)`: the last val_fraction held out."""
    tokens = stdlib_bytes(limit_mb)
    cut = int(len(tokens) * (1 - val_fraction))
    return TokenStream([tokens[:cut]], "stdlib train"), TokenStream([tokens[cut:]], "stdlib val")
