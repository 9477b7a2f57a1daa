"""Start the package's nodes as separate processes, as a launch file would (no ros2 CLI).

Used by ``roboalign demo`` and ``roboalign eval run``: each node runs ``python -m
roboalign_ros.nodes.<node>`` with the package's parameter file and a few overrides, logs to
``<log_dir>/<node>.log``, and is stopped with SIGINT (then killed if it hangs) on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class NodeProcesses:
    """A set of node processes that are stopped together (use as a context manager)."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._procs: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, node: str, params_file: str | None = None,
              overrides: dict[str, object] | None = None) -> subprocess.Popen:
        """Start ``node`` with ``config/<params_file>`` and ``-p key:=value`` overrides."""
        from roboalign_ros.robot import package_path

        cmd = [sys.executable, "-m", f"roboalign_ros.nodes.{node}", "--ros-args"]
        if params_file:
            cmd += ["--params-file", str(package_path("config", params_file))]
        for key, value in (overrides or {}).items():
            cmd += ["-p", f"{key}:={value}"]
        log = open(self.log_dir / f"{node}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self._procs.append((node, proc, log))
        return proc

    def exited(self) -> list[str]:
        """Names of the nodes whose process has already ended."""
        return [name for name, proc, _ in self._procs if proc.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT every node (they send their last hold and close), kill those that hang."""
        for _, proc, _ in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc, log in self._procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self._procs.clear()

    def __enter__(self) -> NodeProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
