"""The recorder's spool: raw frames of an episode on disk until its videos are encoded (ROS-free).

Encoding two colour and two depth 640x480 streams at 30 fps takes more than one of two CPU
cores; done in the recording path, frames were dropped whenever the encoder fell behind. So
the recorder, like LeRobot, writes each sampled frame raw first (a few cheap ``write`` calls)
and encodes behind it, at a lower priority; the spool of an episode is deleted once the episode
is saved.

Layout of one episode's spool, ``<spool_root>/episode_<index>/``:

- ``meta.json`` (written atomically at the start): task, operator, source, fps, the state and
  action sizes and the streams (name, height, width, colour or depth) in record order.
- ``frames.bin``: one fixed-size record per frame, appended: a header block (float64 capture
  time, float32 state, float32 action) then each stream's pixels (HxWx3 uint8 RGB or HxW
  uint16 mm), every block padded to 64 bytes. A record is complete or ignored: a crash loses
  at most the frame being written.
- ``stop.json`` (written atomically when the episode is stopped with save): the outcome. A
  spool without it is an episode a crash cut short.

Disk use: the raw bytes of every episode not yet saved (``record_bytes`` per frame: 3.07 MB
for 2 x 640x480 colour + 2 x 640x480 depth, i.e. 5.5 GB per minute at 30 fps).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from roboalign_ros.data import storage

SPOOL_VERSION = 1
META, FRAMES, STOP = "meta.json", "frames.bin", "stop.json"
_ALIGN = 64


def _padded(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def spool_name(episode_index: int) -> str:
    """Directory name of an episode's spool (``episode_000007``)."""
    return f"episode_{episode_index:06d}"


class SpoolLayout:
    """Byte layout of one frame record (see the module docstring)."""

    def __init__(self, state_dim: int, action_dim: int,
                 streams: Sequence[tuple[str, int, int, bool]]):
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.streams = [(str(n), int(h), int(w), bool(d)) for n, h, w, d in streams]
        self.header_bytes = 8 + 4 * (self.state_dim + self.action_dim)
        self._blocks = [(n, (h, w) if d else (h, w, 3), np.dtype(np.uint16 if d else np.uint8))
                        for n, h, w, d in self.streams]
        self.offsets: dict[str, int] = {}
        offset = _padded(self.header_bytes)
        for name, shape, dtype in self._blocks:
            self.offsets[name] = offset
            offset += _padded(int(np.prod(shape)) * dtype.itemsize)
        self.record_bytes = offset

    def pack(self, stamp: float, state: np.ndarray, action: np.ndarray,
             images: Mapping[str, np.ndarray]) -> list:
        """Buffers to write for one frame, in order (views of ``images``, no pixel copies)."""
        header = np.zeros(_padded(self.header_bytes), np.uint8)
        header[:8] = np.frombuffer(np.float64(stamp).tobytes(), np.uint8)
        body = np.concatenate([np.asarray(state, np.float32).reshape(-1),
                               np.asarray(action, np.float32).reshape(-1)])
        if body.size != self.state_dim + self.action_dim:
            raise ValueError(f"state/action: {body.size} values, the spool expects "
                             f"{self.state_dim} + {self.action_dim}")
        header[8:self.header_bytes] = body.view(np.uint8)
        parts: list = [header]
        for name, shape, dtype in self._blocks:
            img = images[name]
            if img.shape != shape or img.dtype != dtype:
                raise ValueError(f"images[{name!r}]: expected {dtype} {shape}, got {img.dtype} "
                                 f"{img.shape}")
            data = np.ascontiguousarray(img).reshape(-1).view(np.uint8)
            parts.append(data)
            pad = _padded(data.size) - data.size
            if pad:
                parts.append(bytes(pad))
        return parts

    def unpack(self, record: bytes) -> tuple[float, np.ndarray, np.ndarray,
                                             dict[str, np.ndarray]]:
        """(stamp, state, action, images) of one record (the images are views of ``record``)."""
        stamp = float(np.frombuffer(record, np.float64, 1)[0])
        # a copy: a view would keep the whole record (MBs of pixels) alive with the rows
        body = np.frombuffer(record, np.float32, self.state_dim + self.action_dim, 8).copy()
        images = {name: np.frombuffer(record, dtype, int(np.prod(shape)),
                                      self.offsets[name]).reshape(shape)
                  for name, shape, dtype in self._blocks}
        return stamp, body[:self.state_dim], body[self.state_dim:], images


class EpisodeSpool:
    """Append-only spool of one episode, written by one thread.

    Another thread reads it meanwhile with :class:`SpoolReader`.
    """

    def __init__(self, path: Path, meta: dict[str, Any], layout: SpoolLayout):
        self.path, self.meta, self.layout = Path(path), meta, layout
        self.frames = 0
        self._file = None

    @classmethod
    def create(cls, spool_root: str | Path, episode_index: int, *, task: str, operator: str,
               source: str, fps: int, state_dim: int, action_dim: int,
               streams: Sequence[tuple[str, int, int, bool]]) -> EpisodeSpool:
        """Start the spool of episode ``episode_index`` (a leftover of that name is replaced)."""
        path = Path(spool_root) / spool_name(episode_index)
        if path.exists():
            shutil.rmtree(path)
        layout = SpoolLayout(state_dim, action_dim, streams)
        meta = {"version": SPOOL_VERSION, "episode_index": int(episode_index), "task": task,
                "operator": operator, "source": source, "fps": int(fps),
                "state_dim": layout.state_dim, "action_dim": layout.action_dim,
                "streams": [list(s) for s in layout.streams],
                "record_bytes": layout.record_bytes}
        spool = cls(path, meta, layout)
        try:
            storage.write_atomic(path / META, json.dumps(meta).encode())
            spool._file = storage.open_for_write(path / FRAMES)
        except BaseException:
            spool.remove()
            raise
        return spool

    def append(self, stamp: float, state: np.ndarray, action: np.ndarray,
               images: Mapping[str, np.ndarray]) -> int:
        """Write one frame; returns the number of frames in the spool."""
        for part in self.layout.pack(stamp, state, action, images):
            view = memoryview(part).cast("B")
            while view.nbytes:  # a short write goes on where it stopped
                n = self._file.write(view)
                view = view[n:]
        self._file.flush()  # in the file now: the encoder reads it, a crash keeps it
        self.frames += 1
        return self.frames

    def finish(self, success: bool | None) -> None:
        """The episode is stopped for saving: close the frames and record its outcome."""
        self.close()
        storage.write_atomic(self.path / STOP, json.dumps({
            "frames": self.frames, "success": success}).encode())

    def close(self) -> None:
        """Close the frames file (what was written stays)."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()

    def remove(self) -> None:
        """Delete the spool (never raises)."""
        try:
            self.close()
        except OSError:
            pass
        shutil.rmtree(self.path, ignore_errors=True)


class SpoolReader:
    """Reads the frames of a spool, also while it is being written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / META).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: no readable {META} ({exc})") from exc
        if self.meta.get("version") != SPOOL_VERSION:
            raise ValueError(f"{self.path}: spool version {self.meta.get('version')!r}, this "
                             f"recorder reads {SPOOL_VERSION}")
        self.layout = SpoolLayout(self.meta["state_dim"], self.meta["action_dim"],
                                  self.meta["streams"])
        stop = self.path / STOP
        self.stop: dict[str, Any] | None = json.loads(stop.read_text()) if stop.is_file() \
            else None
        self._fd = os.open(self.path / FRAMES, os.O_RDONLY)

    def complete_frames(self) -> int:
        """Frames fully written so far (a torn last record does not count)."""
        return os.fstat(self._fd).st_size // self.layout.record_bytes

    def frame(self, i: int) -> tuple[float, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(stamp, state, action, images) of frame ``i``."""
        size = self.layout.record_bytes
        record = os.pread(self._fd, size, i * size)
        if len(record) != size:
            raise ValueError(f"{self.path}: frame {i} is not in the spool")
        return self.layout.unpack(record)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def leftover_spools(spool_root: str | Path) -> list[Path]:
    """Spools left by an earlier recorder (crashed, or stopped before encoding finished)."""
    root = Path(spool_root)
    return sorted(p for p in root.glob("episode_*") if p.is_dir()) if root.is_dir() else []


def spool_bytes(spool_root: str | Path) -> int:
    """Bytes in the spool directory."""
    root = Path(spool_root)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
