"""Shutdown helper shared by the nodes' close() (until run_node does it for every node)."""

from __future__ import annotations

import signal
import threading


def ignore_repeated_interrupts() -> None:
    """Ignore further SIGINTs from here on (call first thing in a node's close()).

    Under ``ros2 launch`` Ctrl-C reaches a node twice: the terminal signals the process group
    and launch forwards its own SIGINT. The second one interrupted close() with a
    KeyboardInterrupt (traceback, exit code -2), or killed the process during interpreter
    finalization, where Python puts SIG_DFL back for its own handlers; SIG_IGN stays. SIGTERM
    is left alone: launch sends it when a node has not stopped, and it should still interrupt.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
