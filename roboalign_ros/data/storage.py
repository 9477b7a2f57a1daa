"""Crash-safe file primitives: temp files, fsync, atomic rename.

Every byte the dataset writer puts on disk goes through `open_for_write`, so a full disk
surfaces in one place (and tests can simulate it there).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import DiskFullError, RecordingError, is_disk_full

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    """Return the temp file used while `path` is being written (same directory)."""
    return path.with_name(path.name + TMP_SUFFIX)


def open_for_write(path: Path) -> BinaryIO:
    """Open `path` for binary writing, creating parent directories (the single write seam)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")  # noqa: SIM115 - caller closes


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def close_synced(f: BinaryIO) -> None:
    """Flush, fsync and close a file opened with `open_for_write`."""
    try:
        f.flush()
        os.fsync(f.fileno())
    finally:
        f.close()


def write_tmp(path: Path, data: bytes) -> Path:
    """Write `data` to the temp file of `path`, fsync it, and return the temp path."""
    tmp = tmp_path(path)
    try:
        f = open_for_write(tmp)
        try:
            f.write(data)
        except BaseException:
            with contextlib.suppress(OSError):
                f.close()
            raise
        close_synced(f)
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def commit(tmp: Path, path: Path) -> None:
    """Atomically move a finished temp file into place and persist the rename."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp file + fsync + os.replace)."""
    commit(write_tmp(path, data), path)


def remove_quietly(path: Path) -> None:
    """Delete a file if it exists, ignoring errors (used while cleaning up)."""
    with contextlib.suppress(OSError):
        path.unlink()


@contextlib.contextmanager
def recording_errors(what: str) -> Iterator[None]:
    """Turn I/O failures into `DiskFullError` (disk/quota full) or `RecordingError`."""
    try:
        yield
    except (DiskFullError, RecordingError):
        raise
    except Exception as exc:  # PyAV / pyarrow may wrap the OSError
        if is_disk_full(exc):
            raise DiskFullError(
                f"disk full while {what}: recording stopped; earlier episodes are intact "
                f"({exc})"
            ) from exc
        if isinstance(exc, (OSError, RuntimeError)) or type(exc).__module__.startswith("av"):
            raise RecordingError(f"I/O error while {what}: {exc}") from exc
        raise
