"""The executor core: chunks in, one safe, feasible command per control tick out (no rclpy).

``executor_node`` wraps this: the chunk subscription calls :meth:`ChunkExecutor.submit`,
a thread at the controller rate calls :meth:`ChunkExecutor.tick` with the newest joint state,
the e-stop topic calls :meth:`ChunkExecutor.estop`. Every call is guarded by one lock, so an
e-stop callback takes effect on the very next tick.

**The feasibility rule.** Every command the executor sends is reachable from the arm's
measured state and from the previous command within the joint velocity and acceleration limits,
given the time that *really* elapsed since the previous command (not the nominal tick): the
envelope limits the step by that time, and :attr:`Command.duration` (how long reaching it
takes) is computed from the distance to both, never a fixed lead.

**Stops a real controller executes.** A real joint_trajectory_controller refuses an empty
trajectory (ros2_controllers ``validate_trajectory_msg``: "Empty trajectory received.") and
goes on with the running one, so a stop is a trajectory too: from where the controller's
reference is now, braking at ``acc_max`` (:func:`~.trajectory.braking`) to rest. Every joint
command is such a trajectory (``Command.points``, stamped ``Command.stamp``; see
:mod:`.trajectory`): a track is "at the target now with the stream's velocity, coast for
``lead_time``, then brake to rest", so the reference is continuous in velocity across
messages and comes to rest by itself if the stream stops. After a stop, streaming resumes
from a fresh measured state.

Tick priority: e-stop > paused (going home) > no joint state > watchdog hold > track.
``Command.kind`` says which:

- ``estop``: stop sent on the first e-stop tick (the node ticks from its e-stop callback, so
  whichever comes first sends it, once);
  latched until ``estop(False)``, which also flushes every chunk and refuses chunks observed
  before the release.
- ``paused``: another motion owns the arm (``go_home``); chunks observed before it ends are
  refused; afterwards the arm holds there until a newer chunk arrives.
- ``no_state``: no fresh joint state for ``state_timeout`` s, or the measured state jumped
  (a sim reset, a restarted driver): stop; resume only from a fresh state; on a jump, chunks
  planned before it are flushed.
- ``hold``: nothing valid covers ``now`` (no chunk yet, last one ran out, instruction
  changed) or no chunk arrived for ``watchdog_timeout`` s.
- ``track``: blended target passed through the :class:`SafetyEnvelope`.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from roboalign_ros.parameters import default

from .blending import ActionBlender, BlendMode
from .chunk import Chunk, ChunkError, ChunkLimits, validate_chunk
from .estop_gate import RECENT
from .safety import FK, SafetyEnvelope
from .trajectory import braking, braking_points, cubic_segment, points_at

TWIST_DIM = 6


@dataclass
class ExecutorConfig:
    """Executor parameters (defaults: executor_node's, config/parameters/executor_node.yaml)."""

    dimension_names: tuple[str, ...]     # arm joints (or vx..wz) + 'gripper', in order
    action_space: str = default("executor_node", "action_space")
    rate_hz: float = default("executor_node", "rate")
    blend: BlendMode = default("executor_node", "blend")
    ensemble_k: float = default("executor_node", "ensemble_k")
    rtc_blend_s: float = default("executor_node", "rtc_blend")
    rtc_shape: str = 'smooth'            # 'linear' | 'smooth'
    watchdog_timeout: float = default("executor_node", "watchdog_timeout")
    max_horizon: int = 200
    max_duration: float = 10.0
    max_dt: float = 0.5
    max_future: float = 0.05
    max_age: float = default("executor_node", "max_chunk_age")
    gripper_name: str = 'gripper'
    lead_time: float = default("executor_node", "lead_time")
    duration_margin: float = default("executor_node", "duration_margin")
    state_timeout: float = default("executor_node", "state_timeout")
    brake_time_min: float = 0.1          # s, the shortest stop (see :func:`braking`)
    jump_slack: float = 0.02             # rad a state may move beyond vel_max * elapsed

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

    ``kind == 'track'``: send ``arm`` (joint positions in rad for ``joint_position``, as the
    trajectory ``points``; a twist for ``ee_delta``; a fresh array each tick). Any other kind:
    stream nothing; if ``stop`` is set, send the stop now: for ``joint_position`` the ``points``
    braking to rest at ``arm`` (``arm`` is all-NaN and ``stop`` False when nothing is known
    about the arm), for ``ee_delta`` a zero twist (``ee_delta`` holds send zero twists every
    tick; ``arm`` is zeros). Otherwise ``arm`` is the measured position. ``gripper``: opening
    in [0, 1], or None when nothing has commanded the
    gripper yet (do not publish it).
    """

    kind: str                      # 'track' | 'hold' | 'no_state' | 'paused' | 'estop'
    arm: np.ndarray
    gripper: float | None
    reasons: tuple[str, ...] = ()
    duration: float = 0.0          # s to reach ``arm`` from the previous command and the state
    stop: bool = False             # send the stop now
    # joint_position track and stop: the trajectory to send, stamped ``stamp`` (the tick's
    # time): (time from stamp, positions, velocities) per point; empty otherwise
    points: tuple[tuple[float, np.ndarray, np.ndarray], ...] = ()
    stamp: float = 0.0
    # a track that goes on from the previous track (not from the measured state): it must join
    # the trajectory the controller runs, which the e-stop process checks before publishing it
    continues: bool = False



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
    reason: str = ''


class ChunkExecutor:
    """Delay compensation + blending + watchdogs + e-stop + safety envelope + feasibility."""

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
        for name in ('rate_hz', 'watchdog_timeout', 'state_timeout', 'lead_time',
                     'brake_time_min'):
            if not getattr(config, name) > 0:
                raise ValueError(f'{name}: must be > 0, got {getattr(config, name)}')
        if not 0 < config.duration_margin <= 1:
            raise ValueError(f'duration_margin: must be in (0, 1], got {config.duration_margin}')
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
        self._last: np.ndarray | None = None   # last streamed joint command; None after a stop
        self._last_t = -math.inf               # when it was sent
        self._v = np.zeros(arm_dim)            # its velocity (for the acceleration limit)
        self._gripper: float | None = None
        self._estop = False
        self._paused_until = -math.inf
        self._pause_reason = ''
        self._not_before = -math.inf           # refuse chunks observed before this time
        self._last_seq: int | None = None
        self._last_stamp = -math.inf
        self._last_submit: float | None = None
        self._last_kind = 'hold'
        self._last_reason = ''
        self._stopped = False                  # the controller's stop was sent since tracking
        # the last non-streamed motion sent (a stop or a home move): a cubic
        # (t0, q0, v0, q1, seconds) to rest at q1, so that a later stop brakes from where the
        # controller's reference is, not from the measured position behind it
        self._motion: tuple | None = None
        self._sent: tuple[float, tuple] | None = None  # (stamp, points) of the last track
        self._resync = False   # the controller runs another trajectory than _sent: go on from it
        self._state_q: np.ndarray | None = None  # previous joint state, to notice jumps
        self._state_t = -math.inf
        self._clock = -math.inf                # latest ``now`` seen, to notice clock resets
        self._state_after = -math.inf          # states stamped before this are void (reset)

    # -- inputs ----------------------------------------------------------------------------

    def submit(self, chunk: Chunk, now: float) -> tuple[bool, str]:
        """Validate and queue ``chunk`` received at ``now``; returns ``(accepted, reason)``."""
        with self._lock:
            self._check_clock(now)
            try:
                if self._estop:
                    raise ChunkError('estop', 'e-stop engaged', code='estop')
                validate_chunk(chunk, now, self.limits)  # a malformed chunk is named as such
                if chunk.stamp < self._not_before:
                    raise ChunkError('stamp', 'observed before the last flush (e-stop release, '
                                     'instruction change, going home or a state jump)',
                                     code='flushed')
                # Order is by stamp; a lower sequence with a newer stamp is a restarted policy.
                if chunk.stamp < self._last_stamp:
                    raise ChunkError('stamp', 'older than the last accepted chunk',
                                     code='out_of_order')
                restarted = self._last_seq is not None and chunk.sequence <= self._last_seq
                if restarted and chunk.stamp <= self._last_stamp:
                    raise ChunkError('sequence', f'{chunk.sequence} <= last accepted '
                                     f'{self._last_seq} with no newer stamp',
                                     code='out_of_order')
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

    def estop(self, engaged: bool, now: float | None = None) -> bool:
        """Latch (True) or release (False) the e-stop; True if that changed the state.

        Both flush every chunk. After release only chunks stamped at or after ``now`` are
        taken (pass the node's clock; without it any newer chunk is taken), and streaming
        resumes from the measured state.
        """
        with self._lock:
            if engaged == self._estop:
                return False  # repeated messages (a latched topic, a 10 Hz heartbeat)
            if engaged:
                self.counters['estop_engaged'] += 1
                self._stopped = False  # the next tick sends the stop (again)
            else:
                self.counters['estop_released'] += 1
                if now is not None:
                    self._not_before = max(self._not_before, now)
            self._estop = engaged
            if not engaged:
                self._last = None  # (on engaging, the stop brakes from it)
            self.blender.clear()
            return True

    def set_instruction_changed(self, now: float | None = None) -> None:
        """Flush pending chunks: they were planned for the old instruction.

        With ``now``, chunks observed before it are refused too (still in flight).
        """
        with self._lock:
            self.blender.clear()
            self.counters['instruction_flushes'] += 1
            if now is not None:
                self._not_before = max(self._not_before, now)

    def pause(self, now: float, until: float, reason: str = 'going home') -> None:
        """Another motion owns the arm until ``until``: stream nothing, flush every chunk.

        Chunks observed before ``until`` are refused; afterwards the executor holds (the
        other motion's end) until a newer chunk arrives, and resumes from the measured state.
        ``until = inf`` pauses until :meth:`resume`.
        """
        with self._lock:
            self.blender.clear()
            self.counters['pauses'] += 1
            self._paused_until = until
            self._pause_reason = reason
            self._not_before = max(self._not_before, min(until, now + 3600.0))
            self._last = None

    def scene_reset(self, now: float) -> None:
        """The world was reset under the arm: drop every plan and the controller's reference.

        (A sim reset, a re-arranged scene, a restarted driver.) Chunks observed before ``now``
        are refused, and the next tick holds where the arm is measured (a stop from there).
        """
        with self._lock:
            self.blender.clear()
            self.counters['scene_resets'] += 1
            self._not_before = max(self._not_before, now)
            self._last = self._motion = None
            self._stopped = False
            self._gripper = None
            self._state_after = now  # a state measured before the reset is the old world's

    def hold(self, now: float, measured_q: np.ndarray | None, reason: str = 'inactive'
             ) -> Command:
        """Stop now (braking from the last command) and pause until :meth:`resume`.

        Returns the stop to send (``stop`` False when nothing is known about the arm).
        """
        with self._lock:
            self._check_clock(now)
            self._stopped = False
            command = self._stop_tick(now, 'paused', measured_q, reason)
            self.pause(now, math.inf, reason)
            return command

    def home_move(self, now: float, home: np.ndarray, measured_q: np.ndarray,
                  speed: float, min_seconds: float = 0.5) -> float:
        """Pause for a straight joint move to ``home``; returns how long that move must take.

        The slowest joint moves at ``speed`` x its velocity limit, measured from where the arm
        is and from the last streamed command (the controller may still be heading there), so
        the move is reachable from both.
        """
        with self._lock:
            home = np.asarray(home, dtype=float)
            q0, v0 = self._reference(now, measured_q)
            distance = np.maximum(np.abs(home - np.asarray(measured_q, dtype=float)),
                                  np.abs(home - q0))
            seconds = float(max(min_seconds, np.max(distance / (self.envelope.limits.vel_max
                                                                 * speed))))
            self.pause(now, now + seconds, "going home")
            # the controller draws a cubic from its reference to home at rest (zero velocity)
            self._motion = (now, q0, v0, home, seconds)
            return seconds

    def adopt_stop(self, stamp: float, points) -> None:
        """Take a stop someone else sent (the e-stop process) as the controller's reference.

        No stop of ours follows it.
        """
        with self._lock:
            (_, q0, v0), (seconds, q1, _) = points
            self._motion = (stamp, np.array(q0, float), np.array(v0, float),
                            np.array(q1, float), float(seconds))
            self._last = None
            self._stopped = True

    def adopt_reference(self, stamp: float, points) -> None:
        """The controller runs this trajectory of ours, not the tracks sent after it.

        The e-stop process held those back (they arrived too late to join it without a jump):
        the next track goes on from ``(stamp, points)`` as a JTC samples it.
        """
        with self._lock:
            if self._last is not None:   # streaming; otherwise the next track starts at rest
                self._sent, self._resync = (float(stamp), tuple(points)), True

    def motion_points(self) -> tuple[float, tuple]:
        """``(stamp, points)`` of the last stop or home move, as :attr:`Command.points`."""
        with self._lock:
            if self._motion is None:
                return 0.0, ()
            t0, q0, v0, q1, seconds = self._motion
            return t0, ((0.0, q0, v0), (seconds, q1, np.zeros_like(q1)))

    def _reference(self, now: float, measured_q) -> tuple[np.ndarray, np.ndarray]:
        """Where the controller was last told the arm is at ``now``, and how fast it moves."""
        if self._last is not None:  # the stream: its last track, as a JTC samples it
            stamp, points = self._sent
            return points_at(points, now - stamp)
        known = measured_q is not None and np.all(np.isfinite(measured_q))
        if self._motion is not None:
            t0, q0, v0, q1, seconds = self._motion
            # a motion that ended long ago may no longer be what the controller holds (MoveIt,
            # teleop or another node moved the arm since): braking back to it would be a jolt
            if not known or now - (t0 + seconds) <= RECENT:
                return cubic_segment(t0, q0, v0, t0 + seconds, q1, np.zeros_like(q1), now)
        q = np.asarray(measured_q, dtype=float)
        return q.copy(), np.zeros_like(q)

    def resume(self, now: float) -> None:
        """End a pause early (the other motion finished at ``now``).

        Chunks observed from ``now`` on are taken (a pause until ``inf`` refused them for an
        hour ahead).
        """
        with self._lock:
            self._paused_until = -math.inf
            self._not_before = now

    # -- the control tick ------------------------------------------------------------------

    def tick(self, now: float, measured_q: np.ndarray | None,
             state_stamp: float | None = None, state_age: float | None = None) -> Command:
        """One control period: the command to send at ``now``.

        ``measured_q``: the newest arm joint positions; ``state_stamp``: when they were
        measured (the joint state's header stamp; used to notice jumps); ``state_age``: how
        long ago they arrived (default ``now - state_stamp``). Without either the state counts
        as fresh (tests, simulations in lock-step).
        """
        with self._lock:
            env = self.envelope
            env.reasons.clear()
            self._check_clock(now)
            if self._estop:
                return self._stop_tick(now, 'estop', measured_q, 'estop: engaged')
            if now < self._paused_until:
                return self._stop_tick(now, 'paused', measured_q, self._pause_reason, stop=False)
            why = self._state_problem(now, measured_q, state_stamp, state_age)
            if why:
                if self._last_kind != 'no_state' and measured_q is not None:
                    # plans paired with a state we stopped seeing: wait for newer ones
                    self.blender.clear()
                    self.counters['state_losses'] += 1
                    self._not_before = max(self._not_before, now)
                void = state_stamp is not None and state_stamp < self._state_after
                # a state from before a scene reset says nothing about where the arm is now
                return self._stop_tick(now, 'no_state', None if void else measured_q, why)
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
                return self._stop_tick(now, 'hold', measured_q, why)
            self._gripper = env.filter_gripper(float(target[-1]))
            if not self.joint_space:
                cmd = env.filter_twist(target[:-1], measured_q, self._cmd)
                return self._finish('track', cmd.copy(), tuple(env.reasons),
                                    duration=self.config.period)
            q = np.asarray(measured_q, dtype=float)
            if self._last is None:   # resume from where the arm IS, at rest
                self._last, self._last_t = q.copy(), now - self.config.period
                self._v[:] = 0.0
                self._motion = self._sent = None
                self._resync = False
            elif ((self._resync or now - self._last_t > self.config.lead_time)
                  and self._sent is not None):
                # a late tick (a starved process), or our last tracks never took over: the
                # controller's reference has coasted and braked since the trajectory it runs;
                # go on from where it is, not from our last command
                q_ref, v_ref = self._reference(now - self.config.period, q)
                self._last, self._v[:] = q_ref, v_ref
                self._last_t = now - self.config.period
                self._resync = False
            continues = self._sent is not None
            # what the controller runs: the last track, or (streaming starts) rest where it is
            previous = self._sent or (now, ((0.0, self._last.copy(), np.zeros_like(self._v)),))
            dt = now - self._last_t
            cmd = env.filter_joint(target[:-1], self._last, self._cmd, dt=dt, v_prev=self._v)
            duration = self._duration(cmd, q)
            self._v[:] = (cmd - self._last) / max(min(dt, env.limits.max_tick_dt), 1e-9)
            self._last[:] = cmd
            self._last_t = now
            command = self._finish('track', cmd.copy(), tuple(env.reasons), duration=duration)
            command.stamp, command.continues = now, continues
            v = self._v.copy()
            if not np.any(v):
                command.points = ((0.0, command.arm, v),)
                self._sent = (now, command.points)
                return command
            # coast at v for lead_time (a late message still finds the reference moving), brake
            lead = self.config.lead_time
            coast = np.clip(cmd + v * lead, env.limits.lower, env.limits.upper)
            rest, seconds = self._braking(coast, v)
            if env.has_workspace and (
                    env.box_violation(env.tool_position(rest))
                    > env.box_violation(env.tool_position(previous[1][-1][1])) + 1e-12):
                # where this track would come to rest if the stream stopped here (a late tick,
                # the watchdog) is further out of the box than the last one's: the last one's
                # stop goes on instead (it is what the controller runs; no velocity step)
                return self._continue_stop(command, previous, now)
            command.points = ((0.0, command.arm, v), (lead, coast, v),
                              (lead + seconds, rest, np.zeros_like(v)))
            self._sent = (now, command.points)
            return command

    def _continue_stop(self, command: Command, previous: tuple[float, tuple], now: float
                       ) -> Command:
        """``command`` becomes the rest of the ``previous`` track from ``now``: its stop."""
        stamp, points = previous
        elapsed = now - stamp
        q, v = points_at(points, elapsed)
        command.points = ((0.0, q, v),
                          *((t - elapsed, pq, pv) for t, pq, pv in points if t > elapsed))
        command.arm = q.copy()
        self._last[:], self._v[:] = q, v
        self._sent = (now, command.points)
        self.envelope.flag('workspace', 'its stop would leave the box: braking on the last '
                            "command's stop")
        command.reasons = tuple(self.envelope.reasons)
        return command

    def _braking(self, q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, float]:
        lim = self.envelope.limits
        return braking(q, v, lim.acc_max, lim.lower, lim.upper, self.config.brake_time_min)

    def _duration(self, cmd: np.ndarray, measured: np.ndarray) -> float:
        """Time to reach ``cmd`` from both the previous command and the measured state."""
        lim = self.envelope.limits
        distance = np.maximum(np.abs(cmd - self._last), np.abs(cmd - measured))
        seconds = distance / (lim.vel_max * self.config.duration_margin)
        return float(max(self.config.lead_time, np.max(seconds)))

    def _state_problem(self, now: float, q: np.ndarray | None, stamp: float | None,
                       age: float | None) -> str:
        """Why the joint state cannot be acted on ('' if it can); notices jumps."""
        if q is None:
            return 'no joint state'
        if stamp is not None and stamp < self._state_after:
            return 'waiting for a joint state measured after the scene reset'
        if not np.all(np.isfinite(q)):
            return 'joint state is not finite'
        if age is None and stamp is not None:
            age = now - stamp
        if age is not None and age > self.config.state_timeout:
            return (f'joint state watchdog: no joint state for {age:.3f} s '
                    f'(> {self.config.state_timeout} s)')
        if stamp is not None and stamp > self._state_t:
            prev, prev_t = self._state_q, self._state_t
            self._state_q, self._state_t = np.array(q, dtype=float), stamp
            if prev is not None:
                bound = (self.envelope.limits.vel_max * (stamp - prev_t) * 1.5
                         + self.config.jump_slack)
                moved = np.abs(self._state_q - prev)
                if np.any(moved > bound):
                    # the world was reset under us: plans from before are for another scene
                    j = int(np.argmax(moved - bound))
                    self.counters['state_jumps'] += 1
                    # the controller was reset with the world: the stop holds the new state
                    self._motion = self._last = None
                    self.blender.clear()
                    self._not_before = max(self._not_before, now)
                    # nor the gripper: re-sent after a reset it would close an opened hand
                    # (the gripper publisher repeats its last value) before the first new plan
                    self._gripper = None
                    return (f'joint state jumped: {self.envelope.limits.joint_names[j]} moved '
                            f'{moved[j]:.3f} rad in {stamp - prev_t:.3f} s (reset or restart); '
                            'resuming from the new state')
        return ''

    def _stop_tick(self, now: float, kind: str, measured_q: np.ndarray | None, why: str,
                   stop: bool = True) -> Command:
        """A tick that streams nothing: the stop once, then silence.

        The stop brakes from the last command (position and velocity) to rest; with nothing
        streamed since the last stop it holds the measured position.
        """
        send_stop = stop and not self._stopped
        if not self.joint_space:
            self._stopped = self._stopped or stop
            self._last = None
            return self._finish(kind, np.zeros(TWIST_DIM), (why,), stop=send_stop)
        duration, points = 0.0, ()
        known = measured_q is not None and np.all(np.isfinite(measured_q))
        if send_stop and (self._last is not None or self._motion is not None or known):
            lim = self.envelope.limits
            points = braking_points(*self._reference(now, measured_q), lim.acc_max, lim.lower,
                                    lim.upper, self.config.brake_time_min)
            (_, q, v), (duration, arm, _) = points
            self._motion = (now, q, v, arm, duration)
        elif known:
            arm = np.array(measured_q, dtype=float)
        else:  # nothing known about the arm: no stop can be formed (nor was it moving by us)
            arm, send_stop = np.full(self.envelope.n, np.nan), False
        self._stopped = self._stopped or send_stop  # not yet sent: once the state is known
        self._last = None
        command = self._finish(kind, arm, (why,), duration=duration, stop=send_stop)
        command.points, command.stamp = points, now
        return command

    def _check_clock(self, now: float) -> None:
        # A clock that jumps back (sim or bag restart, /clock reset) would make every new
        # chunk look out of order forever: start over from a clean slate instead.
        if now < self._clock - self.CLOCK_JUMP_TOLERANCE:
            self.counters['clock_jumps_back'] += 1
            self._motion = None
            self.blender.clear()
            self._last_seq, self._last_stamp, self._last_submit = None, -math.inf, None
            self._not_before = -math.inf
            self._paused_until = -math.inf
            self._state_q, self._state_t = None, -math.inf
            self._last = None
        if now > self._clock or now < self._clock - self.CLOCK_JUMP_TOLERANCE:
            self._clock = now

    def _finish(self, kind: str, arm: np.ndarray, reasons: tuple[str, ...],
                duration: float = 0.0, stop: bool = False) -> Command:
        self.counters[f'ticks_{kind}'] += 1
        if kind == 'track':
            self._stopped = False
        if stop:
            self.counters['stops_sent'] += 1
        self._last_kind = kind
        self._last_reason = reasons[0] if reasons else ''
        return Command(kind, arm, self._gripper, reasons, duration, stop)

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
                                  dict(self.envelope.counters), self._last_reason)
