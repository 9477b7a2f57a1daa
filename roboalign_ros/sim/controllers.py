"""The sim's stand-ins for ros2_control's joint_trajectory_controller and MoveIt Servo (no rclpy).

They give the simulated arm the command semantics a real arm has, so the executor and teleop
talk to the sim exactly as they would to hardware:

- :class:`JointTrajectoryFollower`: time_from_start interpolation from the header stamp
  (0 = now), replacement of the running trajectory, joint matching by name in any order, an
  empty trajectory stops and holds.
- :class:`TwistFollower`: a base-frame twist turned into joint motion by damped-least-squares
  differential IK, halting when commands stop arriving.

Both are stricter than the real controllers on purpose: a command that names unknown joints,
has the wrong lengths, contains NaN/inf, leaves the joint limits, asks for more than the
velocity limits (also what remains of a trajectory stamped in the past) or ends in the past is
rejected whole with :class:`CommandRejected` (the node logs the reason) and causes no motion.
:class:`RateLimiter` then caps every position target sent to the physics at the velocity
limits, so that no command, however stamped, makes a joint jump.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class CommandRejected(ValueError):
    """A command that the simulated controller refuses; the message says why."""


@dataclass(frozen=True)
class _Trajectory:
    start: float  # absolute time of time_from_start = 0 (never before its arrival)
    times: np.ndarray  # [P] absolute times of the points
    positions: np.ndarray  # [P, n] in controller joint order
    velocities: np.ndarray | None  # [P, n] or None (linear interpolation)
    anchor: np.ndarray  # [n] where the arm is commanded to be at `start`


class TooFast(CommandRejected):
    """A trajectory that asks a joint to move faster than its velocity limit."""


class JointTrajectoryFollower:
    """Follow ``trajectory_msgs/JointTrajectory``-style commands for a fixed set of joints.

    A trajectory stamped in the past is taken as what remains of it: points already due are
    skipped and the rest is followed from the commanded position now, with the velocity check
    applied to that remainder (a real arm cannot catch up on time it has lost). One stamped in
    the future replaces the running one from its start time; until then the running one goes on.
    """

    def __init__(self, joint_names: Sequence[str], lower, upper, velocity,
                 velocity_tolerance: float = 1.05, position_tolerance: float = 1e-6):
        self.joint_names = tuple(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.velocity = np.asarray(velocity, float)
        self.velocity_tolerance = velocity_tolerance
        self.position_tolerance = position_tolerance
        # accepted trajectories by start time; each replaces the ones before it from its start
        self._plan: list[_Trajectory] = []
        self._hold: np.ndarray | None = None

    @property
    def active(self) -> bool:
        """Whether a trajectory is being followed (False once it is done or before any)."""
        return bool(self._plan)

    def reset(self, q: np.ndarray) -> None:
        """Drop any trajectory and hold ``q``."""
        self._plan = []
        self._hold = np.asarray(q, float).copy()

    def command(self, joint_names: Sequence[str], times_from_start: Sequence[float],
                positions: Sequence[Sequence[float]], velocities=None, *,
                start_time: float, now: float, current: np.ndarray) -> str | None:
        """Validate and accept a trajectory (replacing the running one from its start time).

        ``start_time`` is the header stamp in seconds (0 means now), ``current`` the position
        the arm is commanded to now. Raises :class:`CommandRejected` (:class:`TooFast` for
        speed) naming what is wrong; returns a note when a past stamp made points be skipped.
        """
        if not positions:  # JTC: an empty trajectory stops the motion and holds position
            held = self.sample(now) if self.active else np.asarray(current, float)
            self.reset(held)
            return None
        names = list(joint_names)
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise CommandRejected(f"joint_names: unknown joints {unknown} "
                                  f"(controller joints: {list(self.joint_names)})")
        if len(set(names)) != len(names):
            raise CommandRejected(f"joint_names: duplicates in {names}")
        missing = [n for n in self.joint_names if n not in names]
        if missing:
            raise CommandRejected(f"joint_names: missing {missing} (partial goals are refused)")
        order = [names.index(n) for n in self.joint_names]
        times = np.asarray(times_from_start, float)
        try:
            pos = np.asarray(positions, float)
        except ValueError as exc:  # ragged rows
            raise CommandRejected(f"points.positions: rows of different lengths ({exc})") from None
        if pos.ndim != 2 or pos.shape[1] != len(names):
            raise CommandRejected(f"points.positions: each point needs {len(names)} values, "
                                  f"got shape {pos.shape}")
        vel = None
        if velocities is not None and len(velocities) and any(len(v) for v in velocities):
            vel = np.asarray(velocities, float)
            if vel.shape != pos.shape:
                raise CommandRejected(f"points.velocities: shape {vel.shape} != positions "
                                      f"{pos.shape}")
        if not (np.isfinite(times).all() and np.isfinite(pos).all()
                and (vel is None or np.isfinite(vel).all())):
            raise CommandRejected("points: NaN or inf in time_from_start/positions/velocities")
        if times[0] < 0 or np.any(np.diff(times) <= 0):
            raise CommandRejected(f"points.time_from_start: must be >= 0 and strictly increasing, "
                                  f"got {times.tolist()}")
        pos = pos[:, order]
        vel = None if vel is None else vel[:, order]
        tol = self.position_tolerance
        below = pos < self.lower - tol
        above = pos > self.upper + tol
        if below.any() or above.any():
            point, joint = np.argwhere(below | above)[0]
            raise CommandRejected(
                f"points[{point}].positions: {self.joint_names[joint]} = {pos[point, joint]:.4f} "
                f"outside its limits [{self.lower[joint]:.4f}, {self.upper[joint]:.4f}]")
        start = now if start_time == 0.0 else float(start_time)
        ends = start + times
        if ends[-1] <= now:
            raise CommandRejected(f"header.stamp: trajectory ended {now - ends[-1]:.3f} s "
                                  "in the past")
        note, first = None, 0
        if start < now:  # stamped in the past: only what remains can still be followed
            first = int(np.searchsorted(ends, now, side="right"))
            if first or now - start > 0.05:
                note = (f"header.stamp {now - start:.3f} s in the past: {first} of {len(ends)} "
                        "points already due were skipped, the rest is followed from now")
            start = now
        ends, pos = ends[first:], pos[first:]
        vel = None if vel is None else vel[first:]
        anchor = self._position_at(start) if self.active \
            else np.asarray(current, float).copy()
        path = np.vstack([anchor, pos])
        durations = np.diff(np.concatenate([[start], ends]))
        durations[0] = max(durations[0], 1e-9)
        speed = np.abs(np.diff(path, axis=0)) / durations[:, None]
        # The first segment starts from wherever the arm is, so only later ones are held to it
        # strictly; a first point reached too fast is refused too unless it is (nearly) static.
        limit = self.velocity * self.velocity_tolerance
        fast = speed > limit
        fast[0] &= np.abs(path[1] - path[0]) > 1e-3
        if fast.any():
            seg, joint = np.argwhere(fast)[0]
            late = f" ({note})" if note else ""
            raise TooFast(
                f"points[{seg + first}]: {self.joint_names[joint]} would move at "
                f"{speed[seg, joint]:.3f} rad/s > velocity limit {self.velocity[joint]:.3f}"
                f"{late}")
        new = _Trajectory(start, ends, pos, vel, anchor)
        # the running trajectories go on until the new one starts (none when it starts now)
        self._plan = [t for t in self._plan if t.start < start] + [new]
        return note

    def sample(self, now: float) -> np.ndarray | None:
        """Commanded joint positions at ``now`` (None when nothing was ever commanded)."""
        if not self._plan:
            return None if self._hold is None else self._hold
        while len(self._plan) > 1 and self._plan[1].start <= now:
            self._plan.pop(0)  # superseded by one that has started
        q = self._interpolate(self._plan[0], now)
        if len(self._plan) == 1 and now >= self._plan[0].times[-1]:
            self._plan, self._hold = [], q
        return q

    def _position_at(self, t: float) -> np.ndarray:
        """Where the accepted trajectories put the arm at ``t`` (no side effects)."""
        running = self._plan[0]
        for traj in self._plan[1:]:
            if traj.start <= t:
                running = traj
        return self._interpolate(running, t)

    @staticmethod
    def _interpolate(traj: _Trajectory, t: float) -> np.ndarray:
        if t <= traj.start:
            return traj.anchor.copy()
        if t >= traj.times[-1]:
            return traj.positions[-1].copy()
        k = int(np.searchsorted(traj.times, t, side="right"))
        t0 = traj.start if k == 0 else traj.times[k - 1]
        p0 = traj.anchor if k == 0 else traj.positions[k - 1]
        t1, p1 = traj.times[k], traj.positions[k]
        h = t1 - t0
        s = (t - t0) / h
        if traj.velocities is None:
            return p0 + s * (p1 - p0)
        v0 = np.zeros_like(p0) if k == 0 else traj.velocities[k - 1]
        v1 = traj.velocities[k]
        # cubic Hermite segment, as joint_trajectory_controller does with velocities given
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
        h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
        return h00 * p0 + h10 * h * v0 + h01 * p1 + h11 * h * v1


class RateLimiter:
    """Moves the commanded joint positions at most ``velocity * tolerance * dt`` per step.

    The last line of defence behind the command checks: whatever a command source asks for
    (stamps, Hermite overshoot, IK near a singularity), the position target handed to the
    physics never jumps. Every clamped step is counted (``clamped``: a loaded machine's step
    jitter alone makes a command at the limit overshoot by a few percent now and then); a step
    asking for more than ``jump_ratio`` times the limit is a jump held back (``jumps``, with
    ``last_jump`` describing the latest).
    """

    def __init__(self, joint_names: Sequence[str], velocity, tolerance: float = 1.05,
                 jump_ratio: float = 1.5):
        self.joint_names = tuple(joint_names)
        self.max_speed = np.asarray(velocity, float) * tolerance
        self.jump_ratio = jump_ratio
        self._last: np.ndarray | None = None
        self.clamped = self.jumps = 0
        self.last_jump = ""

    def reset(self, q: np.ndarray) -> None:
        """Start from ``q`` (e.g. after a reset moved the arm)."""
        self._last = np.asarray(q, float).copy()

    def __call__(self, target: np.ndarray, dt: float) -> np.ndarray:
        """Return ``target`` moved from the last output by at most the limit over ``dt``."""
        target = np.asarray(target, float)
        if self._last is None:
            self._last = target.copy()
            return target.copy()
        step = target - self._last
        limit = self.max_speed * dt
        ratio = np.abs(step) / limit
        if ratio.max() > 1.0 + 1e-9:
            self.clamped += 1
            j = int(np.argmax(ratio))
            if ratio[j] > self.jump_ratio:
                self.jumps += 1
                self.last_jump = (f"{self.joint_names[j]} target jumped {step[j]:+.4f} rad in "
                                  f"one {dt * 1e3:.0f} ms step ({abs(step[j]) / dt:.2f} rad/s > "
                                  f"{self.max_speed[j]:.2f}): held to the limit")
            step = np.clip(step, -limit, limit)
        self._last = self._last + step
        return self._last.copy()


class TwistFollower:
    """MoveIt-Servo-style twist commands -> joint position targets through differential IK."""

    def __init__(self, kinematics, timeout: float = 0.2, max_linear: float = 0.25,
                 max_angular: float = 1.0, max_age: float = 0.5):
        self.kinematics = kinematics
        self.timeout, self.max_age = timeout, max_age
        self.max_linear, self.max_angular = max_linear, max_angular
        self._twist = np.zeros(6)
        self._received = -np.inf

    @property
    def active(self) -> bool:
        """Whether a non-zero twist was received (it may have timed out since)."""
        return bool(np.any(self._twist)) and np.isfinite(self._received)

    def command(self, twist: Sequence[float], *, stamp: float, now: float) -> None:
        """Accept a base-frame twist [vx, vy, vz, wx, wy, wz] stamped ``stamp`` (0 = now)."""
        twist = np.asarray(twist, float)
        if twist.shape != (6,) or not np.isfinite(twist).all():
            raise CommandRejected(f"twist: NaN/inf or wrong size in {twist.tolist()}")
        if stamp != 0.0 and now - stamp > self.max_age:
            raise CommandRejected(f"header.stamp: twist is {now - stamp:.3f} s old "
                                  f"(> {self.max_age} s)")
        linear, angular = np.linalg.norm(twist[:3]), np.linalg.norm(twist[3:])
        if linear > self.max_linear:
            twist[:3] *= self.max_linear / linear
        if angular > self.max_angular:
            twist[3:] *= self.max_angular / angular
        self._twist, self._received = twist, now

    def stop(self) -> None:
        """Forget the last twist (the arm halts)."""
        self._twist[:] = 0.0
        self._received = -np.inf

    def step(self, q: np.ndarray, now: float, dt: float) -> np.ndarray | None:
        """Next joint target from ``q`` after ``dt``, or None when halted (timeout or zero)."""
        if now - self._received > self.timeout or not np.any(self._twist):
            return None
        qd = self.kinematics.twist_to_joint_velocity(q, self._twist, dt=dt)
        return np.clip(q + qd * dt, self.kinematics.lower, self.kinematics.upper)


def validate_gripper_command(values: Sequence[float]) -> float:
    """Check a gripper command (one opening value in [0, 1]) and return it."""
    if len(values) != 1:
        raise CommandRejected(f"data: expected one value (opening in [0, 1]), got {len(values)}")
    opening = float(values[0])
    if not np.isfinite(opening) or not 0.0 <= opening <= 1.0:
        raise CommandRejected(f"data[0]: gripper opening {opening} is not in [0, 1]")
    return opening
