"""Action chunks: the unit a policy emits, validated once and sampled in time.

Row ``i`` of a chunk is the target for time ``stamp + i * dt`` where ``stamp`` is the
observation time (CONVENTIONS.md). Sampling interpolates linearly between rows, so the
executor can run at any control rate, and rows already in the past are skipped: that is
the delay compensation (the policy's inference latency is absorbed by starting mid-chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ACTION_SPACES = ('joint_position', 'ee_delta')


class ChunkError(ValueError):
    """A chunk was refused; ``field`` names the offending field, ``code`` the counter key."""

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(f'{field}: {message}')
        self.field = field
        self.code = code or field


@dataclass(frozen=True, eq=False)
class Chunk:
    """A validated, immutable action chunk (float32 ``[H, D]``).

    Construction checks what the chunk alone can tell (shape, finiteness, dt, names);
    :func:`validate_chunk` checks it against the robot and the clock.
    """

    stamp: float
    dt: float
    actions: np.ndarray
    dimension_names: tuple[str, ...]
    action_space: str = 'joint_position'
    sequence: int = 0
    # Derived, cached so that sampling does no attribute arithmetic beyond one multiply.
    end_time: float = field(init=False)
    _inv_dt: float = field(init=False, repr=False)

    def __post_init__(self):
        setattr_ = object.__setattr__
        if not (isinstance(self.stamp, (int, float)) and math.isfinite(self.stamp)):
            raise ChunkError('stamp', f'must be a finite number of seconds, got {self.stamp!r}')
        if not (isinstance(self.dt, (int, float)) and math.isfinite(self.dt) and self.dt > 0):
            raise ChunkError('dt', f'must be finite and > 0, got {self.dt!r}')
        if self.action_space not in ACTION_SPACES:
            raise ChunkError('action_space', f'must be one of {ACTION_SPACES}, '
                             f'got {self.action_space!r}')
        try:
            actions = np.array(self.actions, dtype=np.float32)  # own copy: callers may reuse
        except (TypeError, ValueError) as exc:
            raise ChunkError('actions', f'not numeric: {exc}') from None
        if actions.ndim != 2:
            raise ChunkError('actions', f'must be 2-D [horizon, action_dim], got shape '
                             f'{actions.shape}', code='shape')
        if actions.shape[0] == 0 or actions.shape[1] == 0:
            raise ChunkError('actions', f'horizon and action_dim must be > 0, got shape '
                             f'{actions.shape}', code='shape')
        bad = ~np.isfinite(actions)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ChunkError('actions', f'non-finite value {actions[row, col]} at row {row}, '
                             f'column {col}', code='nonfinite')
        names = tuple(str(n) for n in self.dimension_names)
        if len(names) != actions.shape[1]:
            raise ChunkError('dimension_names', f'{len(names)} names for action_dim '
                             f'{actions.shape[1]}')
        actions.setflags(write=False)
        setattr_(self, 'actions', actions)
        setattr_(self, 'dimension_names', names)
        setattr_(self, 'stamp', float(self.stamp))
        setattr_(self, 'dt', float(self.dt))
        setattr_(self, 'sequence', int(self.sequence))
        setattr_(self, 'end_time', self.stamp + (actions.shape[0] - 1) * self.dt)
        setattr_(self, '_inv_dt', 1.0 / self.dt)

    @property
    def horizon(self) -> int:
        """Number of rows H."""
        return self.actions.shape[0]

    @property
    def action_dim(self) -> int:
        """Number of columns D."""
        return self.actions.shape[1]

    def covers(self, t: float) -> bool:
        """Whether ``t`` lies inside the chunk's time span [stamp, end_time]."""
        return self.stamp <= t <= self.end_time

    def first_future_row(self, now: float) -> int:
        """Index of the first row whose target time is >= ``now`` (rows before it are past)."""
        i = math.ceil((now - self.stamp) * self._inv_dt - 1e-9)
        return min(max(i, 0), self.horizon)

    def remaining(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Delay compensation for trajectory backends: ``(times, rows)`` not yet in the past.

        Returns views, no copy; ``times`` are absolute seconds.
        """
        i = self.first_future_row(now)
        times = self.stamp + self.dt * np.arange(i, self.horizon)
        return times, self.actions[i:]

    def sample_into(self, t: float, out: np.ndarray) -> bool:
        """Write the target at time ``t`` (linear interpolation between rows) into ``out``.

        Returns False, leaving ``out`` untouched, when ``t`` is outside the chunk.
        """
        if t < self.stamp or t > self.end_time:
            return False
        x = (t - self.stamp) * self._inv_dt
        i = int(x)
        a = self.actions
        if i >= a.shape[0] - 1:
            out[:] = a[-1]
            return True
        f = x - i
        # out = a[i] + f * (a[i+1] - a[i]) without temporaries beyond one small row.
        np.subtract(a[i + 1], a[i], out=out)
        out *= f
        out += a[i]
        return True

    def sample(self, t: float) -> np.ndarray | None:
        """Allocating convenience wrapper around :meth:`sample_into` (float64 row or None)."""
        out = np.empty(self.action_dim)
        return out if self.sample_into(t, out) else None


@dataclass
class ChunkLimits:
    """Acceptance rules for chunks, checked against the configured robot and clock."""

    dimension_names: tuple[str, ...]
    action_space: str = 'joint_position'
    max_horizon: int = 200
    max_duration: float = 10.0    # s, H * dt above this is not a plausible plan
    max_dt: float = 0.5           # s between rows; coarser plans are not trackable
    max_future: float = 0.05      # s, clock skew tolerated for stamps ahead of now
    max_age: float = 1.0          # s, observations older than this are not acted on


def validate_chunk(chunk: Chunk, now: float, limits: ChunkLimits) -> None:
    """Raise :class:`ChunkError` if ``chunk`` may not be executed at time ``now``."""
    if chunk.action_space != limits.action_space:
        raise ChunkError('action_space', f'{chunk.action_space!r} but executor runs '
                         f'{limits.action_space!r}')
    if chunk.dimension_names != tuple(limits.dimension_names):
        raise ChunkError('dimension_names', f'{list(chunk.dimension_names)} != configured '
                         f'{list(limits.dimension_names)}')
    if chunk.horizon > limits.max_horizon:
        raise ChunkError('actions', f'horizon {chunk.horizon} > max_horizon '
                         f'{limits.max_horizon}', code='oversized')
    if chunk.dt > limits.max_dt:
        raise ChunkError('dt', f'{chunk.dt} s > max_dt {limits.max_dt} s')
    duration = chunk.horizon * chunk.dt
    if duration > limits.max_duration:
        raise ChunkError('dt', f'horizon * dt = {duration:.3f} s > max_duration '
                         f'{limits.max_duration} s', code='duration')
    if chunk.stamp > now + limits.max_future:
        raise ChunkError('stamp', f'{chunk.stamp - now:.3f} s in the future (tolerance '
                         f'{limits.max_future} s)', code='future')
    if now - chunk.stamp > limits.max_age:
        raise ChunkError('stamp', f'{now - chunk.stamp:.3f} s old > max_age '
                         f'{limits.max_age} s', code='stale')
    if chunk.end_time < now:
        raise ChunkError('stamp', f'every row is in the past (last row at '
                         f'{chunk.end_time - now:+.3f} s)', code='stale')
