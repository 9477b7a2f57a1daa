"""The executor core: chunks in, one safe command per control tick out (no rclpy).

``executor_node`` wraps this: the chunk subscription calls :meth:`ChunkExecutor.submit`,
a timer at the controller rate calls :meth:`ChunkExecutor.tick`, the e-stop topic calls
:meth:`ChunkExecutor.estop`. Every call is guarded by one lock, so the node may use a
multi-threaded executor and an e-stop callback takes effect on the very next tick.

Tick priority: e-stop > watchdog hold > track. ``Command.kind`` says which:

- ``estop``: joints frozen at the measured position of the first e-stop tick (zero twist
  for ``ee_delta``); latched until ``estop(False)``, which also flushes every chunk and
  refuses chunks observed before the release.
- ``hold``: nothing valid covers ``now`` (no chunk yet, last one ran out, instruction
  changed) or no chunk arrived for ``watchdog_timeout`` s: last safe command held (zero
  twist for ``ee_delta``).
- ``track``: blended target passed through the :class:`SafetyEnvelope`.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .blending import ActionBlender, BlendMode
from .chunk import Chunk, ChunkError, ChunkLimits, validate_chunk
from .safety import FK, SafetyEnvelope

TWIST_DIM = 6


@dataclass
class ExecutorConfig:
    """Executor parameters (the node reads them from config/executor.yaml)."""

    dimension_names: tuple[str, ...]     # arm joints (or vx..wz) + 'gripper', in order
    action_space: str = 'joint_position'
    rate_hz: float = 100.0
    blend: BlendMode = 'rtc'
    ensemble_k: float = 0.0              # 1/s, temporal_ensemble weight exp(-k * age)
    rtc_blend_s: float = 0.2             # s, rtc crossfade duration
    rtc_shape: str = 'smooth'            # 'linear' | 'smooth'
    watchdog_timeout: float = 0.5        # s without a new chunk -> hold
    max_horizon: int = 200
    max_duration: float = 10.0
    max_dt: float = 0.5
    max_future: float = 0.05
    max_age: float = 1.0
    gripper_name: str = 'gripper'

    @property
    def period(self) -> float:
        """Nominal control period (s)."""
        return 1.0 / self.rate_hz

    def chunk_limits(self) -> ChunkLimits:
        """Return the chunk acceptance rules derived from this config."""
        return ChunkLimits(tuple(self.dimension_names), self.action_space, self.max_horizon,
                           self.max_duration, self.max_dt, self.max_future, self.max_age)


@dataclass(slots=True)
class Command:
    """One control tick's output.

    ``arm``: joint positions (rad) for ``joint_position``, twist for ``ee_delta`` (a fresh
    array each tick: the caller may keep it). It is all-NaN only if no joint state was ever
    given (publish nothing then). For ``estop`` the node should send the frozen position with
    zero velocity (or zero twist). ``gripper``: opening in [0, 1], or None when nothing has
    commanded the gripper yet (do not publish it).
    """

    kind: str                      # 'track' | 'hold' | 'estop'
    arm: np.ndarray
    gripper: float | None
    reasons: tuple[str, ...] = ()


@dataclass
class ExecutorStatus:
    """Snapshot for diagnostics."""

    estop: bool
    last_kind: str
    active_chunks: int
    last_sequence: int | None
    seconds_since_chunk: float | None
    counters: dict[str, int] = field(default_factory=dict)
    safety_counters: dict[str, int] = field(default_factory=dict)


class ChunkExecutor:
    """Delay compensation + blending + watchdog + e-stop + safety envelope."""

    CLOCK_JUMP_TOLERANCE = 0.5  # s; threads may present slightly out-of-order ``now`` values

    def __init__(self, config: ExecutorConfig, envelope: SafetyEnvelope,
                 fk: FK | None = None):
        names = tuple(config.dimension_names)
        if not names or names[-1] != config.gripper_name:
            raise ValueError(f"dimension_names: last must be {config.gripper_name!r}, "
                             f'got {list(names)}')
        arm_dim = len(names) - 1
        if config.action_space == 'joint_position':
            if arm_dim != envelope.n:
                raise ValueError(f'dimension_names: {arm_dim} arm joints, envelope has '
                                 f'{envelope.n}')
            if envelope.limits.joint_names and tuple(envelope.limits.joint_names) != names[:-1]:
                raise ValueError(f'dimension_names: {list(names[:-1])} != envelope joints '
                                 f'{list(envelope.limits.joint_names)}')
        elif config.action_space == 'ee_delta':
            if arm_dim != TWIST_DIM:
                raise ValueError(f'dimension_names: ee_delta needs {TWIST_DIM} twist names '
                                 f'+ gripper, got {list(names)}')
        else:
            raise ValueError(f'action_space: unknown {config.action_space!r}')
        if not config.rate_hz > 0 or not config.watchdog_timeout > 0:
            raise ValueError('rate_hz / watchdog_timeout: must be > 0')
        if fk is not None:  # convenience: same as SafetyEnvelope(..., fk=fk)
            envelope.fk = fk
            envelope.has_workspace = envelope.limits.workspace_min is not None
        self.config = config
        self.envelope = envelope
        self.limits = config.chunk_limits()
        self.joint_space = config.action_space == 'joint_position'
        self.blender = ActionBlender(len(names), config.blend, config.ensemble_k,
                                     config.rtc_blend_s, config.rtc_shape)
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._target = np.empty(len(names))    # blended sample scratch
        self._cmd = np.empty(arm_dim)          # filtered command scratch
        self._last: np.ndarray | None = None   # last safe joint command (joint space)
        self._gripper: float | None = None
        self._estop = False
        self._estop_q: np.ndarray | None = None
        self._not_before = -math.inf           # refuse chunks observed before this time
        self._last_seq: int | None = None
        self._last_stamp = -math.inf
        self._last_submit: float | None = None
        self._last_kind = 'hold'
        self._clock = -math.inf                # latest ``now`` seen, to notice clock resets

    # -- inputs ----------------------------------------------------------------------------

    def submit(self, chunk: Chunk, now: float) -> tuple[bool, str]:
        """Validate and queue ``chunk`` received at ``now``; returns ``(accepted, reason)``."""
        with self._lock:
            self._check_clock(now)
            try:
                if self._estop:
                    raise ChunkError('estop', 'e-stop engaged', code='estop')
                if chunk.stamp < self._not_before:
                    raise ChunkError('stamp', 'observed before the last flush (e-stop release '
                                     'or instruction change)', code='flushed')
                # Order is by stamp; a lower sequence with a newer stamp is a restarted policy.
                if chunk.stamp < self._last_stamp:
                    raise ChunkError('stamp', 'older than the last accepted chunk',
                                     code='out_of_order')
                restarted = self._last_seq is not None and chunk.sequence <= self._last_seq
                if restarted and chunk.stamp <= self._last_stamp:
                    raise ChunkError('sequence', f'{chunk.sequence} <= last accepted '
                                     f'{self._last_seq} with no newer stamp',
                                     code='out_of_order')
                validate_chunk(chunk, now, self.limits)
            except ChunkError as err:
                self.counters[f'rejected_{err.code}'] += 1
                return False, str(err)
            self.blender.add(chunk)
            self._last_seq, self._last_stamp, self._last_submit = (
                chunk.sequence, chunk.stamp, now)
            self.counters['accepted'] += 1
            if restarted:
                self.counters['sequence_resets'] += 1
            return True, 'ok'

    def estop(self, engaged: bool, now: float | None = None) -> None:
        """Latch (True) or release (False) the e-stop. Both flush every chunk.

        After release only chunks stamped at or after ``now`` are taken (pass the node's
        clock; without it any newer chunk is taken).
        """
        with self._lock:
            if engaged == self._estop:
                return  # repeated messages (a latched topic, a 10 Hz heartbeat) are no-ops
            if engaged:
                self.counters['estop_engaged'] += 1
            else:
                self.counters['estop_released'] += 1
                if now is not None:
                    self._not_before = max(self._not_before, now)
                if self._estop_q is not None:
                    # The arm stopped there; resume (velocity-limited) from it.
                    self._last = self._estop_q.copy()
                self._estop_q = None
            self._estop = engaged
            self.blender.clear()

    def set_instruction_changed(self, now: float | None = None) -> None:
        """Flush pending chunks: they were planned for the old instruction.

        With ``now``, chunks observed before it are refused too (still in flight).
        """
        with self._lock:
            self.blender.clear()
            self.counters['instruction_flushes'] += 1
            if now is not None:
                self._not_before = max(self._not_before, now)

    # -- the control tick ------------------------------------------------------------------

    def tick(self, now: float, measured_q: np.ndarray | None) -> Command:
        """One control period: the command to send at ``now``.

        ``measured_q``: current arm joint positions (needed for e-stop, the first hold, and
        the workspace check in ``ee_delta``).
        """
        with self._lock:
            env = self.envelope
            env.reasons.clear()
            self._check_clock(now)
            if self._estop:
                return self._estop_command(measured_q)
            if self.joint_space and self._last is None:
                if measured_q is None:
                    return self._finish('hold', np.full(env.n, np.nan), ('no joint state',))
                self._last = np.array(measured_q, dtype=float)
            stale = (self._last_submit is None
                     or now - self._last_submit > self.config.watchdog_timeout)
            target = None if stale else self.blender.sample(now, self._target)
            if target is None:
                if stale and self._last_submit is not None:
                    self.blender.clear()  # plans that old must not come back later
                    if self._last_kind == 'track':
                        self.counters['watchdog_trips'] += 1
                    why = f'watchdog: no chunk for {now - self._last_submit:.3f} s'
                else:
                    why = 'no chunk covers now'
                arm = self._last.copy() if self.joint_space else np.zeros(TWIST_DIM)
                return self._finish('hold', arm, (why,))
            if self.joint_space:
                cmd = env.filter_joint(target[:-1], self._last, self._cmd)
                self._last[:] = cmd
            else:
                cmd = env.filter_twist(target[:-1], measured_q, self._cmd)
            self._gripper = env.filter_gripper(float(target[-1]))
            return self._finish('track', cmd.copy(), tuple(env.reasons))

    def _check_clock(self, now: float) -> None:
        # A clock that jumps back (sim or bag restart, /clock reset) would make every new
        # chunk look out of order forever: start over from a clean slate instead.
        if now < self._clock - self.CLOCK_JUMP_TOLERANCE:
            self.counters['clock_jumps_back'] += 1
            self.blender.clear()
            self._last_seq, self._last_stamp, self._last_submit = None, -math.inf, None
            self._not_before = -math.inf
        if now > self._clock or now < self._clock - self.CLOCK_JUMP_TOLERANCE:
            self._clock = now

    def _estop_command(self, measured_q: np.ndarray | None) -> Command:
        if self.joint_space:
            if self._estop_q is None:
                src = measured_q if measured_q is not None else self._last
                if src is not None:
                    self._estop_q = np.array(src, dtype=float)
            arm = (self._estop_q.copy() if self._estop_q is not None
                   else np.full(self.envelope.n, np.nan))
        else:
            arm = np.zeros(TWIST_DIM)
        return self._finish('estop', arm, ('estop: engaged',))

    def _finish(self, kind: str, arm: np.ndarray, reasons: tuple[str, ...]) -> Command:
        self.counters[f'ticks_{kind}'] += 1
        self._last_kind = kind
        return Command(kind, arm, self._gripper, reasons)

    # -- diagnostics -----------------------------------------------------------------------

    @property
    def engaged(self) -> bool:
        """Whether the e-stop is latched."""
        return self._estop

    def status(self, now: float | None = None) -> ExecutorStatus:
        """Counters and state for /diagnostics."""
        with self._lock:
            since = (None if now is None or self._last_submit is None
                     else now - self._last_submit)
            return ExecutorStatus(self._estop, self._last_kind, len(self.blender),
                                  self._last_seq, since, dict(self.counters),
                                  dict(self.envelope.counters))
