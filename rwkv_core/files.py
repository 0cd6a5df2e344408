"""Writing files so that a crash never leaves a half-written one: every file of a run, every output.

`atomic_path(path)` gives a temporary name beside `path` and renames it onto `path` only when the
block succeeds; a reader sees the old file or the new one, never a torn one. The new file gets
the permissions an ordinary `open(path, "w")` would give (0666 less the umask), not the 0600 of a
temporary file.

Temporaries are named `.NAME.<random>.tmp` beside their target NAME (files here, folders in
`data.folder_written_whole`). A process killed mid-write leaves one behind; whoever next owns the
folder removes them with `remove_stale_temporaries` (a run when it starts, a data writer before
it writes its output).
"""
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from pathlib import Path


def temporary_beside(path) -> Path:
    """A fresh hidden name next to `path` for a temporary file or folder that will replace it."""
    path = Path(path)
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def remove_stale_temporaries(folder, name: str | None = None) -> None:
    """Remove the temporaries (`temporary_beside`) that killed writers left in `folder`: those for
    the target `name`, or for any target. Nothing else is touched; a missing folder is fine."""
    target = re.escape(name) if name is not None else r".+"
    pattern = re.compile(rf"\.{target}\.[0-9a-z_]+\.tmp")
    if not Path(folder).is_dir():
        return
    for entry in Path(folder).iterdir():
        if pattern.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` to write to; it replaces `path` only if the block succeeds.

    The parent folder must exist: a missing one is a mistake in the path, not something to create.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    tmp = temporary_beside(path)
    # created with 0666 less the umask, as open(path, "w") would; the mode is set again at the end,
    # since some writers (safetensors) replace the file with one of their own (0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, obj) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def git_commit() -> str | None:
    """The short hash of the checkout this package runs from (+ "-dirty" when tracked files changed),
    for benchmark and experiment records; None for an installed copy outside a git checkout."""
    checkout = Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, timeout=10)
    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode or Path(top.stdout.strip()).resolve() != checkout:   # e.g. a wheel inside a repo's .venv
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return git("rev-parse", "--short", "HEAD").stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
