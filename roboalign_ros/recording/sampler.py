"""Fixed-rate sampling of asynchronous streams by nearest stamp, with a maximum skew (ROS-free).

Streams are pushed as ``(stamp, value)`` from any thread; :meth:`FrameSampler.poll` turns them
into frames on a fixed grid ``t_k = t0 + k / fps`` once ``now >= t_k + delay`` (the delay lets
samples stamped after ``t_k`` arrive, so "nearest" can look both ways). Two kinds of stream:

- ``nearest`` (cameras, joint states): the sample whose stamp is closest to ``t_k``; a frame
  whose sample is missing or further than ``max_skew`` from ``t_k`` is dropped and counted.
- ``hold`` (commands): the latest sample received at or before ``t_k`` (what a controller was
  executing at that time). A value may be an object with ``at(t)`` (a trajectory or an action
  chunk gives the target for ``t``; ``None`` = expired). Past ``max_age`` a hold sample is stale:
  the frame is dropped, or ``stale_value`` is used when one is given (a Servo twist that timed
  out commands zero motion). An ``optional`` hold stream with nothing received by ``t_k``
  yields ``None`` instead of dropping the frame.

Nothing is ever interpolated or invented: every value of a frame is a received sample.

>>> s = FrameSampler(fps=30, max_skew=0.02, delay=0.05)
>>> s.add_stream("scene"); s.add_stream("joints")
>>> s.push("scene", 10.001, img); s.push("joints", 10.000, q)
>>> s.start(10.0); s.poll(now=10.06)   # -> [SampledFrame(time=10.0, values=..., dropped=None)]
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
from collections import Counter
from typing import Any

import numpy as np

NEAREST, HOLD = "nearest", "hold"
_EPS = 1e-9  # grid times are sums of floats: compare with a little slack


@dataclasses.dataclass(frozen=True)
class SampledFrame:
    """One grid point: the values of every stream, or the reason it was dropped."""

    time: float
    values: dict[str, Any]
    stamps: dict[str, float]
    skew: float  # largest |stamp - time| over the nearest-stamp streams
    dropped: str | None = None  # e.g. "missing:scene", "skew:joints", "stale:trajectory"


@dataclasses.dataclass
class _Stream:
    kind: str
    max_skew: float | None
    max_age: float | None
    stale_value: Any
    optional: bool
    stamps: list[float] = dataclasses.field(default_factory=list)
    values: list[Any] = dataclasses.field(default_factory=list)
    out_of_order: int = 0


class FrameSampler:
    """Synchronise streams onto a fixed-fps grid by nearest stamp (thread-safe)."""

    def __init__(self, fps: float, max_skew: float, delay: float | None = None,
                 history: float | None = None):
        """Make a sampler.

        ``fps`` grid rate, ``max_skew`` (s) default limit, ``delay`` (s, default max_skew +
        1/fps) between a grid time and its sampling, ``history`` (s) of samples kept (at least
        what the delay and skew need).
        """
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: must be > 0, got {fps!r}")
        if not (np.isfinite(max_skew) and max_skew > 0):
            raise ValueError(f"max_skew: must be > 0 s, got {max_skew!r}")
        self.fps = float(fps)
        self.period = 1.0 / self.fps
        self.max_skew = float(max_skew)
        self.delay = self.max_skew + self.period if delay is None else float(delay)
        if not self.delay >= 0:
            raise ValueError(f"delay: must be >= 0 s, got {delay!r}")
        needed = 2 * (self.delay + self.max_skew) + 0.5
        self.history = needed if history is None else max(float(history), needed)
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._k = 0
        self._end: float | None = None
        self.drops: Counter[str] = Counter()
        self.received: Counter[str] = Counter()  # samples pushed per stream, since creation

    # ------------------------------------------------------------------ configuration

    def add_stream(self, name: str, kind: str = NEAREST, *, max_skew: float | None = None,
                   max_age: float | None = None, stale_value: Any = None,
                   optional: bool = False) -> None:
        """Register a stream (``kind`` ``nearest`` or ``hold``; see the module docstring)."""
        if kind not in (NEAREST, HOLD):
            raise ValueError(f"kind: must be {NEAREST!r} or {HOLD!r}, got {kind!r}")
        if name in self._streams:
            raise ValueError(f"name: stream {name!r} already registered")
        self._streams[name] = _Stream(kind, max_skew, max_age, stale_value, optional)

    @property
    def streams(self) -> list[str]:
        """Registered stream names."""
        return list(self._streams)

    # ------------------------------------------------------------------ input

    def push(self, name: str, stamp: float, value: Any) -> None:
        """Add a sample (any thread). Out-of-order samples are inserted in stamp order."""
        s = self._streams[name]
        stamp = float(stamp)
        with self._lock:
            self.received[name] += 1
            if s.stamps and stamp < s.stamps[-1]:
                s.out_of_order += 1
                i = bisect.bisect_right(s.stamps, stamp)
                s.stamps.insert(i, stamp)
                s.values.insert(i, value)
            else:
                s.stamps.append(stamp)
                s.values.append(value)
            # trim old samples; a hold stream keeps the last one before the window (a command
            # sent long ago is still what the controller executes)
            limit = s.stamps[-1] - self.history
            if s.stamps[0] < limit and len(s.stamps) > 1:
                if s.kind == HOLD:
                    cut = bisect.bisect_right(s.stamps, limit) - 1
                else:
                    cut = min(bisect.bisect_left(s.stamps, limit), len(s.stamps) - 1)
                if cut > 64 or (cut > 0 and cut * 2 > len(s.stamps)):
                    del s.stamps[:cut]
                    del s.values[:cut]

    def latest(self, name: str) -> tuple[float, Any] | None:
        """Newest ``(stamp, value)`` of a stream, or None."""
        s = self._streams[name]
        with self._lock:
            return (s.stamps[-1], s.values[-1]) if s.stamps else None

    def clear(self, name: str) -> None:
        """Forget every sample of a stream."""
        s = self._streams[name]
        with self._lock:
            s.stamps.clear()
            s.values.clear()

    # ------------------------------------------------------------------ grid

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of the last grid point before :meth:`stop`."""
        return self._t0 is not None

    def start(self, t0: float) -> None:
        """Begin a grid at ``t0`` (drop counters restart)."""
        with self._lock:
            self._t0, self._k, self._end = float(t0), 0, None
            self.drops = Counter()

    def stop(self, t_end: float) -> None:
        """No grid points after ``t_end``; :meth:`poll` still delivers those up to it."""
        with self._lock:
            self._end = float(t_end)

    def halt(self) -> None:
        """Stop the grid now (undelivered grid points are forgotten)."""
        with self._lock:
            self._t0, self._end = None, None

    def next_time(self) -> float | None:
        """Time of the next grid point to be sampled (None when not running)."""
        return None if self._t0 is None else self._t0 + self._k * self.period

    def done(self) -> bool:
        """Return True once every grid point up to the stop time has been delivered."""
        t = self.next_time()
        return t is None or (self._end is not None and t > self._end)

    def poll(self, now: float, flush: bool = False) -> list[SampledFrame]:
        """Sample every grid point ``t <= now - delay`` not sampled yet (and ``<= stop``).

        ``flush`` (after :meth:`stop`): sample up to the stop time without waiting the delay.
        """
        out: list[SampledFrame] = []
        with self._lock:
            if self._t0 is None:
                return out
            horizon = math.inf if flush and self._end is not None else now - self.delay
            while True:
                t = self._t0 + self._k * self.period
                if t > horizon + _EPS or (self._end is not None and t > self._end + _EPS):
                    break
                frame = self._sample(t)
                if frame.dropped:
                    self.drops[frame.dropped] += 1
                out.append(frame)
                self._k += 1
        return out

    def sample(self, t: float) -> SampledFrame:
        """Sample every stream at ``t`` (no grid bookkeeping; for tests and tools)."""
        with self._lock:
            return self._sample(t)

    def _sample(self, t: float) -> SampledFrame:
        values: dict[str, Any] = {}
        stamps: dict[str, float] = {}
        skew = 0.0
        dropped = None
        for name, s in self._streams.items():
            if s.kind == NEAREST:
                i = bisect.bisect_left(s.stamps, t)
                cands = [j for j in (i - 1, i) if 0 <= j < len(s.stamps)]
                if not cands:
                    dropped = dropped or f"missing:{name}"
                    continue
                j = min(cands, key=lambda j: abs(s.stamps[j] - t))
                err = abs(s.stamps[j] - t)
                limit = self.max_skew if s.max_skew is None else s.max_skew
                skew = max(skew, err)
                if err > limit:
                    dropped = dropped or f"skew:{name}"
                    continue
                values[name], stamps[name] = s.values[j], s.stamps[j]
            else:
                j = bisect.bisect_right(s.stamps, t) - 1
                if j < 0:
                    if s.optional:
                        values[name] = None
                    else:
                        dropped = dropped or f"missing:{name}"
                    continue
                value = s.values[j]
                stale = s.max_age is not None and t - s.stamps[j] > s.max_age
                if not stale and hasattr(value, "at"):
                    value = value.at(t)
                    stale = value is None
                if stale:
                    if s.stale_value is None:
                        dropped = dropped or f"stale:{name}"
                        continue
                    value = s.stale_value
                values[name], stamps[name] = value, s.stamps[j]
        if dropped:
            return SampledFrame(t, {}, {}, skew, dropped)
        return SampledFrame(t, values, stamps, skew)
