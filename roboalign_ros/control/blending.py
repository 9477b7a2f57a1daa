"""Blending of successive, overlapping chunks into one target per control tick.

Modes (``BlendMode``):

- ``latest``: the newest chunk that covers ``now`` wins. Simple; jumps at each switch by
  however much consecutive plans disagree.
- ``temporal_ensemble``: ACT-style. Every chunk that covers ``now`` votes with weight
  ``exp(-k * age)``, ``age = now - chunk.stamp`` in seconds. ``k > 0`` favours fresh
  predictions; ``k < 0`` reproduces ACT's preference for older ones; ``k = 0`` is a mean.
- ``rtc``: real-time-chunking-style switching done at execution time. A new chunk becomes
  active at the first tick it covers, and over ``rtc_blend_s`` the output crossfades from
  the plan that was being executed to the new one (weight 0 -> 1, linear or smoothstep),
  so the command is continuous at the switch. The fade is shortened to end no later than
  the old plan so it never crossfades from a plan that ran out. (RTC proper also inpaints
  the overlap at inference time; that is the policy's job, this is the executor's half.)
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from .chunk import Chunk

BlendMode = Literal['latest', 'temporal_ensemble', 'rtc']
BLEND_MODES = ('latest', 'temporal_ensemble', 'rtc')


class _Active:
    """A chunk plus the crossfade state the ``rtc`` mode keeps for it."""

    __slots__ = ('chunk', 'start', 'fade')

    def __init__(self, chunk: Chunk):
        self.chunk = chunk
        self.start: float | None = None  # time it first contributed (rtc)
        self.fade = 0.0                   # crossfade duration decided at activation (rtc)


class ActionBlender:
    """Keeps the chunks that may still contribute and blends them at ``sample(now)``.

    Chunks must be added in non-decreasing stamp order (the executor enforces it).
    Cost per sample is O(active chunks), typically 1-5; nothing is copied per tick.
    """

    def __init__(self, action_dim: int, mode: BlendMode = 'rtc', ensemble_k: float = 0.0,
                 rtc_blend_s: float = 0.2, rtc_shape: Literal['linear', 'smooth'] = 'smooth',
                 max_active: int = 32):
        if mode not in BLEND_MODES:
            raise ValueError(f'mode: must be one of {BLEND_MODES}, got {mode!r}')
        if rtc_shape not in ('linear', 'smooth'):
            raise ValueError(f"rtc_shape: must be 'linear' or 'smooth', got {rtc_shape!r}")
        if not rtc_blend_s >= 0:
            raise ValueError(f'rtc_blend_s: must be >= 0, got {rtc_blend_s}')
        if max_active < 1:
            raise ValueError(f'max_active: must be >= 1, got {max_active}')
        self.mode = mode
        self.ensemble_k = float(ensemble_k)
        self.rtc_blend_s = float(rtc_blend_s)
        self.rtc_smooth = rtc_shape == 'smooth'
        self.max_active = max_active
        self.action_dim = action_dim
        self._active: list[_Active] = []
        self._row = np.empty(action_dim)   # scratch: one chunk's sample

    def __len__(self) -> int:
        return len(self._active)

    @property
    def chunks(self) -> list[Chunk]:
        """The chunks currently held, oldest first."""
        return [a.chunk for a in self._active]

    def add(self, chunk: Chunk) -> None:
        """Queue ``chunk``; it contributes from the first sample time it covers."""
        if chunk.action_dim != self.action_dim:
            raise ValueError(f'actions: action_dim {chunk.action_dim} != {self.action_dim}')
        if self._active and chunk.stamp < self._active[-1].chunk.stamp:
            raise ValueError('stamp: chunks must arrive in non-decreasing stamp order')
        self._active.append(_Active(chunk))
        if len(self._active) > self.max_active:
            del self._active[0]

    def clear(self) -> None:
        """Forget every chunk (instruction change, e-stop)."""
        self._active.clear()

    def sample(self, now: float, out: np.ndarray | None = None) -> np.ndarray | None:
        """Blended target at ``now`` (written into ``out`` if given), or None if none covers."""
        active = self._active
        # Chunks that ended can never contribute again; stamps are ordered, ends need not be.
        if active and any(a.chunk.end_time < now for a in active):
            active[:] = [a for a in active if a.chunk.end_time >= now]
        if not active:
            return None
        if out is None:
            out = np.empty(self.action_dim)
        if self.mode == 'latest':
            ok = self._latest(now, out)
        elif self.mode == 'temporal_ensemble':
            ok = self._ensemble(now, out)
        else:
            ok = self._rtc(now, out)
        return out if ok else None

    def _latest(self, now: float, out: np.ndarray) -> bool:
        active = self._active
        for idx in range(len(active) - 1, -1, -1):
            if active[idx].chunk.sample_into(now, out):
                del active[:idx]  # older chunks are superseded for good
                return True
        return False

    def _ensemble(self, now: float, out: np.ndarray) -> bool:
        total = 0.0
        row, k = self._row, self.ensemble_k
        for a in self._active:
            if a.chunk.sample_into(now, row):
                w = math.exp(-k * (now - a.chunk.stamp))
                if total == 0.0:
                    np.multiply(row, w, out=out)
                else:
                    row *= w
                    out += row
                total += w
        if total == 0.0:
            return False
        out /= total
        return True

    def _rtc(self, now: float, out: np.ndarray) -> bool:
        # Fold oldest -> newest: value = (1 - w_i) * value + w_i * chunk_i(now).
        have = False
        prev_end = -math.inf  # latest end among the plans folded so far
        row = self._row
        settled = -1          # newest index whose fade is complete: older ones are dead
        for idx, a in enumerate(self._active):
            c = a.chunk
            if not c.sample_into(now, row):
                continue  # not started yet (stamp slightly ahead)
            if a.start is None:
                a.start = now
                a.fade = max(0.0, min(self.rtc_blend_s, prev_end - now)) if have else 0.0
            w = 1.0 if a.fade <= 0.0 else min(1.0, (now - a.start) / a.fade)
            if self.rtc_smooth:
                w = w * w * (3.0 - 2.0 * w)
            if not have or w >= 1.0:
                out[:] = row
                have = True
                if w >= 1.0:
                    settled = idx
            else:
                out *= 1.0 - w
                row *= w
                out += row
            prev_end = max(prev_end, c.end_time)
        if settled > 0:
            del self._active[:settled]
        return have
