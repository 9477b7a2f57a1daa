"""The recorder's encoder process: spooled frames -> the dataset's videos and episodes (ROS-free).

:class:`~roboalign_ros.recording.session.RecordingSession` starts one
(``python -m roboalign_ros.recording.encoder CONFIG``) at a lower CPU priority and drives it with
JSON lines: commands on its stdin, events on its stdout. A process of its own, not threads in
the recorder: encoder threads share the recorder's GIL, and a niced thread holding it while the
kernel runs others stalls the subscription callbacks (measured beside two CPU burners: a
callback thread's wake-up gap reached 98 ms with niced encoder threads, 10 ms with a niced
encoder process).

It follows each episode's spool (``recording/spool.py``) as the frames arrive, encodes them
with `DatasetWriter` (streams in parallel) and saves the episode once it is stopped; then it
deletes the spool. It exits when its stdin closes (the recorder ended: what is not saved stays
in the spool for the next start) or after a recording error, which it reports first.

Commands: ``{"cmd": "job", "index", "path", "task", "operator", "source"}`` (an episode to
follow; ``"stopped": true, "success"`` for a spool left by an earlier run), ``{"cmd": "stop",
"index", "frames", "success"}``, ``{"cmd": "discard", "index"}``.
Events: ``ready`` (``episodes``), ``progress`` (``index``, ``encoded``), ``dropped``
(``index``, ``reason``), ``saved`` (``index``, ``episode``, ``frames``), ``discarded``
(``index``: none of its files is left), ``failed`` (``index``, ``error``, ``fatal``).
"""

from __future__ import annotations

import json
import queue
import shutil
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from roboalign_ros.data import DatasetWriter, RecordingError
from roboalign_ros.data import lerobot_format as fmt

from . import spool as sp
from .threads import lower_priority

POLL_S = 0.01  # while waiting for frames: how often the spool's size is looked at
DISCARD_WAIT_S = 5.0  # a spool gone before it was opened: the "discard" sent before it


class _Episode:
    def __init__(self, cmd: dict[str, Any]):
        self.index, self.path = int(cmd["index"]), Path(cmd["path"])
        self.task, self.operator, self.source = cmd["task"], cmd["operator"], cmd["source"]
        self.stopped, self.discarded = bool(cmd.get("stopped")), False
        self.frames: int | None = cmd.get("frames")  # known once stopped
        self.success = cmd.get("success")


class Encoder:
    """The process's state: its writer, the episodes it was given, the command queue."""

    def __init__(self, config: dict[str, Any], out=sys.stdout):
        self.c = config
        self.out = out
        self.commands: queue.Queue = queue.Queue()
        self.episodes: dict[int, _Episode] = {}
        self.order: deque[int] = deque()
        self.writer: DatasetWriter | None = None
        self.current: int | None = None   # the episode whose video files are open
        self.closed = False
        if (Path(self.c["root"]) / fmt.INFO_PATH).exists():
            self.writer = DatasetWriter.open(
                self.c["root"], gop=self.c["gop"], crf=self.c["crf"],
                encoder_threads=self.c["encoder_threads"],
                stream_workers=self.c["stream_workers"])

    def emit(self, event: str, **fields) -> None:
        """One event line to the recorder."""
        self.out.write(json.dumps({"event": event, **fields}) + "\n")
        self.out.flush()

    def read_commands(self, stream) -> None:
        """Feed the command queue from ``stream`` (a thread); None marks its end."""
        for line in stream:
            if line.strip():
                self.commands.put(json.loads(line))
        self.commands.put(None)

    def pump(self, block: bool) -> None:
        """Apply the commands waiting (``block``: wait up to POLL_S for one)."""
        try:
            cmd = self.commands.get(timeout=POLL_S) if block else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            if cmd is None:
                self.closed = True
            elif cmd["cmd"] == "job":
                ep = _Episode(cmd)
                self.episodes[ep.index] = ep
                self.order.append(ep.index)
            elif cmd["cmd"] == "stop":
                ep = self.episodes[int(cmd["index"])]
                ep.stopped, ep.frames, ep.success = True, int(cmd["frames"]), cmd.get("success")
            elif cmd["cmd"] == "discard":
                ep = self.episodes[int(cmd["index"])]
                ep.discarded = True
                if ep.index != self.current:  # no file of it open: nothing to delete
                    self.emit("discarded", index=ep.index)
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return

    def run(self) -> int:
        """Encode episodes in order until stdin closes; the exit code."""
        self.emit("ready", episodes=self.writer.num_episodes if self.writer else 0)
        try:
            while not self.closed:
                if not self.order:
                    self.pump(block=True)
                    continue
                ep = self.episodes[self.order[0]]
                try:
                    self.encode(ep)
                except RecordingError as exc:
                    self.emit("failed", index=ep.index, error=str(exc), fatal=True)
                    return 1
                except Exception as exc:  # noqa: BLE001 - a bug: reported, the spool stays
                    self.emit("failed", index=ep.index, fatal=True,
                              error=f"encoding episode {ep.index} failed: "
                                    f"{type(exc).__name__}: {exc}")
                    return 1
                self.order.popleft()
                del self.episodes[ep.index]
            return 0
        finally:
            if self.writer is not None:
                self.writer.close()  # an episode not saved is dropped; its spool stays

    def encode(self, ep: _Episode) -> None:
        """Follow ``ep``'s spool, encode its frames, save it once stopped (or drop it)."""
        if ep.discarded:
            return
        try:
            reader = sp.SpoolReader(ep.path)
        except (ValueError, OSError):
            # discarded and deleted before it was opened here: the recorder sent "discard"
            # before deleting, so it is on its way
            deadline = time.monotonic() + DISCARD_WAIT_S
            while not ep.discarded and not self.closed and time.monotonic() < deadline:
                self.pump(block=True)
            if ep.discarded or self.closed:
                return
            raise
        try:
            w = self.writer_for(reader)
            w.start_episode(ep.task, operator=ep.operator, source=ep.source)
            self.current = ep.index
            i = 0
            while True:
                available = reader.complete_frames()
                if ep.frames is not None:
                    available = min(available, ep.frames)
                self.pump(block=i >= available and not ep.stopped)
                if self.closed or ep.discarded:
                    w.discard_episode()
                    if ep.discarded:
                        self.emit("discarded", index=ep.index)
                    return
                if i < available:
                    stamp, state, action, images = reader.frame(i)
                    try:
                        w.add_frame(state, action, images, timestamp=stamp)
                    except ValueError as exc:  # counted, never fatal
                        self.emit("dropped", index=ep.index, reason=f"bad_frame:{exc}")
                    i += 1
                    self.emit("progress", index=ep.index, encoded=i)
                elif ep.stopped and (ep.frames is None or i >= ep.frames):
                    break
            if w.frames_in_episode == 0:
                w.discard_episode()
                shutil.rmtree(ep.path, ignore_errors=True)
                self.emit("failed", index=ep.index, fatal=False,
                          error="the episode has no frames: discarded")
                return
            saved = w.save_episode(success=ep.success)
        finally:
            self.current = None
            reader.close()
        shutil.rmtree(ep.path, ignore_errors=True)
        self.emit("saved", index=ep.index, episode=saved.index, frames=saved.length)

    def writer_for(self, reader: sp.SpoolReader) -> DatasetWriter:
        """The dataset's writer; the first episode creates the dataset (its image sizes)."""
        if self.writer is None:
            c = self.c
            shapes = {n: (h, w) for n, h, w, _ in reader.layout.streams}
            self.writer = DatasetWriter.create(
                c["root"], c["fps"], c["state_names"], c["action_names"],
                {cam: shapes[cam] for cam in c["cameras"]}, c["robot_type"], codec=c["codec"],
                gop=c["gop"], crf=c["crf"], encoder_threads=c["encoder_threads"],
                depth_cameras={cam: shapes[cam] for cam in c["depth_cameras"]},
                lerobot_depth=c["lerobot_depth"],
                stream_workers=c["stream_workers"])
        return self.writer


def die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the recorder dies (best effort elsewhere)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    import os

    if os.getppid() != parent:  # it died before the request
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m roboalign_ros.recording.encoder CONFIG_JSON``."""
    config = json.loads((argv or sys.argv[1:])[0])
    die_with_parent(int(config["parent"]))
    lower_priority(int(config["nice"]))  # before any thread: they all inherit it
    out = sys.stdout
    sys.stdout = sys.stderr  # events only on the real stdout; anything printed goes to stderr
    try:
        encoder = Encoder(config, out)
    except (RecordingError, OSError, ValueError) as exc:
        out.write(json.dumps({"event": "failed", "index": -1, "fatal": True,
                              "error": f"opening the dataset: {exc}"}) + "\n")
        out.flush()
        return 1
    threading.Thread(target=encoder.read_commands, args=(sys.stdin,), daemon=True).start()
    return encoder.run()


if __name__ == "__main__":
    raise SystemExit(main())
