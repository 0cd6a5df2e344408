"""Writing files so that a crash never leaves a half-written one: every file of a run, every output.

`atomic_path(path)` gives a temporary name beside `path` and renames it onto `path` only when the
block succeeds; a reader sees the old file or the new one, never a torn one. The new file gets
the permissions an ordinary `open(path, "w")` would give (0666 less the umask), not the 0600 of a
temporary file.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` to write to; it replaces `path` only if the block succeeds.

    The parent folder must exist: a missing one is a mistake in the path, not something to create.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
