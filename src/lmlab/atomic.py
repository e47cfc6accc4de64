"""Outputs that appear whole or not at all.

Every folder lmlab writes (a corpus, token shards, a checkpoint) is built under
a hidden temporary name beside its destination and renamed into place only
when complete; a crash or an error at any point leaves nothing half-written
where a reader would take it for finished work.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to ``path`` (same filesystem, so renames are atomic)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def missing_root(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what
    ``mkdir(parents=True)`` would make first), or None when ``path`` exists.

    A command that fails before its output is complete removes this folder,
    and so never deletes one that was there before it ran.
    """
    path = Path(path)
    made = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        made = folder
    return made


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a file for writing that appears whole at ``path`` or not at all.

    Writes go to a temporary sibling, which is fsynced and renamed over
    ``path`` when the block ends normally, and removed if it raises. Text
    modes write UTF-8.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes ('w' or 'wb'), not {mode!r}")
    tmp = sibling(path, "tmp")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a small file atomically: a temporary file, fsync, then rename."""
    with atomic_open(path) as f:
        f.write(text)


def replace_dir(new: Path, out_dir: Path) -> None:
    """Put the finished folder ``new`` at ``out_dir``, replacing what was there.

    Readers see the old folder or the new one, never a mixture (and, for the
    instant between two renames, none).
    """
    for f in new.rglob("*"):
        if f.is_file():
            _fsync(f)  # the data must be on disk before the rename publishes it
    if not out_dir.exists():
        os.replace(new, out_dir)
    else:
        old = sibling(out_dir, "old")
        os.replace(out_dir, old)
        try:
            os.replace(new, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    _fsync(out_dir.parent)


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``out_dir`` if the block succeeds.

    On any exception (Ctrl-C included) the temporary folder is deleted and
    ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(out_dir, "partial")
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_safetensors(tensors: dict[str, Any], path: Path,
                     metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically, through Python's file I/O.

    ``safetensors.torch.save_file`` reports a full disk as a SafetensorError with
    no file name; serializing to bytes and writing them here makes it an OSError
    naming the file, which the CLI prints as one line.
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    with atomic_open(Path(path), "wb") as f:
        f.write(data)
