"""CPU priority of the recorder's background threads (ROS-free)."""

from __future__ import annotations

import contextlib
import os
import threading


def lower_priority(increment: int) -> None:
    """Add ``increment`` to the calling thread's nice value (at most 19; best effort).

    Linux keeps a nice value per thread, and threads started from this one inherit it: the
    recorder's inputs then get the CPU before its encoder and bag writer when cores are short.
    """
    if increment and hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid,
                           min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
