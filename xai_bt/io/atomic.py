"""Atomic, durable file writes: a temporary file beside the target, fsync, `os.replace`; and the sweep that
removes what a killed writer left behind.

Readers see the old file or the new one, never half of one. Temporary names are ``.<target name>.<random>.tmp``,
so a later run can tell whose leftovers they are (`temp_owner`) and remove only its own (`sweep_temporaries`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["TMP_SUFFIX", "write_atomic", "move_atomic", "temp_dir", "fsync_dir", "temp_owner", "sweep_temporaries"]

#: Temporary names end with this, so a sweep after a kill can find them: ``.<target name>.<random>.tmp``.
TMP_SUFFIX = ".tmp"


def write_atomic(target: str | os.PathLike, data: bytes | Callable[[Any], Any], sync_dir: bool = True,
                 durable: bool = True) -> Path:
    """Write `data` (bytes, or a function writing to a binary file) to a temporary file beside `target`,
    fsync it, then `os.replace` it into place: readers see the old file or the new one, never half.

    `sync_dir=False` leaves the folder's fsync to a caller writing many files; `durable=False` skips every
    fsync (still atomic, but a power cut may lose the file: for caches that can be rebuilt)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            data(fh) if callable(data) else fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir and durable:
        fsync_dir(target.parent)
    return target


def move_atomic(source: Path, target: Path) -> Path:
    """fsync a finished file written elsewhere in the same folder, then rename it into place."""
    with open(source, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(source, 0o666 & ~_umask())
    os.replace(source, target)
    return target


def temp_dir(out: Path, name: str) -> Path:
    """A private temporary folder in `out` (same file system, so renames out of it are atomic)."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=out))


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_owner(name: str) -> str | None:
    """The target name a temporary file or folder was made for (`.<name>.<random>.tmp` -> name)."""
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return None
    parts = name[1:-len(TMP_SUFFIX)].rsplit(".", 1)
    return parts[0] if len(parts) == 2 and parts[0] else None


def sweep_temporaries(folder: str | os.PathLike, owned: Callable[[str], bool] = lambda name: True) -> int:
    """Remove leftovers of killed writers in `folder` whose target name `owned` accepts; returns how many.
    Pass `owned` when other processes (other shards) may be writing into the same folder."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        owner = temp_owner(entry.name)
        if owner is None or not owned(owner):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed


def _umask() -> int:
    """The process umask (read by setting and restoring it), for the mode a plain `open` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
