"""Exceptions raised by the dataset writer and reader."""

from __future__ import annotations

import errno

__all__ = ["DatasetError", "DatasetFormatError", "DiskFullError", "RecordingError"]

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DatasetError(Exception):
    """Base class of every error of `roboalign_ros.data`."""


class DatasetFormatError(DatasetError, ValueError):
    """A dataset on disk is missing, damaged or not in the LeRobot v3.0 layout."""


class RecordingError(DatasetError, RuntimeError):
    """Recording could not continue; episodes saved before it are intact."""


class DiskFullError(RecordingError, OSError):
    """The disk (or quota) is full: recording stopped, earlier episodes are intact."""


def is_disk_full(exc: BaseException) -> bool:
    """Return True when `exc` (or an exception it wraps) reports a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
