"""The sim's stand-ins for ros2_control's arm controllers and MoveIt Servo (no rclpy).

They give the simulated arm the command semantics a real arm has, so the executor and teleop
talk to the sim exactly as they would to hardware:

- :class:`JointTrajectoryFollower`: the released (kilted) joint_trajectory_controller's rules, as
  ros2_controllers ``joint_trajectory_controller/src/joint_trajectory_controller.cpp`` and
  ``trajectory.cpp`` state them (the functions are named where they are followed): what it
  refuses (``validate_trajectory_msg``: an empty trajectory, a non-zero end velocity unless
  allowed, a stamped trajectory that ends in the past), that a new message replaces the running
  one at once, where the replacement starts from (``update``: the measured state, or the last
  commanded one with ``interpolate_from_desired_state``) and how it is interpolated
  (``Trajectory::sample``, ``interpolate_between_points``: linear with positions only, cubic
  with velocities). Like the real controller it never refuses a trajectory for its speed.
- :class:`JointGroupPositionFollower`: position_controllers' JointGroupPositionController, a
  forward_command_controller on the position interfaces, as ros2_controllers (kilted)
  ``forward_command_controller/src/forward_controllers_base.cpp`` states its rules (and
  ros2_control's ``controller_manager.cpp`` what happens when its ``update`` fails).
- :class:`TwistFollower`: a base-frame twist turned into joint motion by damped-least-squares
  differential IK, halting when commands stop arriving.

What the sim adds beyond the controller belongs to its motors and is named so: the commands
are refused whole when they name unknown joints, have wrong lengths, hold NaN/inf or leave the
joint limits (a real arm's hardware interface clamps or faults there), and :class:`RateLimiter`,
the motor, caps every position target at the velocity limits, so that no command, however
stamped or fast, makes a joint jump (it counts what it held back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from roboalign_ros.control.trajectory import cubic_segment


class CommandRejected(ValueError):
    """A command that the simulated controller refuses; the message says why."""


class TooFast(CommandRejected):
    """Kept for callers that count them: the JTC stand-in no longer refuses for speed."""


@dataclass
class _Trajectory:
    stamp: float                    # header stamp (0: start when first sampled)
    times: np.ndarray               # [P] time_from_start of the points
    positions: np.ndarray           # [P, n] in controller joint order
    velocities: np.ndarray | None   # [P, n] or None (linear interpolation)
    start: float | None = None      # trajectory_start_time_ once sampled
    before_t: float = 0.0           # time_before_traj_msg_
    before_q: np.ndarray | None = None  # state_before_traj_msg_ positions
    before_v: np.ndarray | None = None  # ... and velocities


class JointTrajectoryFollower:
    """Follow ``trajectory_msgs/JointTrajectory`` commands as the kilted JTC does.

    ``interpolate_from_desired_state`` (JTC parameter of that name, default false upstream;
    our ``config/*_controllers.yaml`` set it true): a new trajectory starts from the last
    commanded position and velocity instead of the measured ones.
    ``allow_nonzero_velocity_at_trajectory_end`` (JTC parameter, default false): otherwise a
    trajectory whose last point has a non-zero velocity is refused.
    """

    def __init__(self, joint_names: Sequence[str], lower, upper, velocity,
                 velocity_tolerance: float = 1.05, position_tolerance: float = 1e-6,
                 interpolate_from_desired_state: bool = True,
                 allow_nonzero_velocity_at_trajectory_end: bool = False):
        self.joint_names = tuple(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.velocity = np.asarray(velocity, float)
        self.velocity_tolerance = velocity_tolerance   # the motor's (RateLimiter), kept here
        self.position_tolerance = position_tolerance
        self.interpolate_from_desired_state = interpolate_from_desired_state
        self.allow_nonzero_velocity_at_trajectory_end = allow_nonzero_velocity_at_trajectory_end
        self._traj: _Trajectory | None = None
        self._desired_q: np.ndarray | None = None   # last_commanded_state_
        self._desired_v: np.ndarray | None = None
        self._desired_t = -np.inf                   # last_commanded_time_
        self._time = -np.inf                        # the latest sample time

    @property
    def active(self) -> bool:
        """Whether a trajectory is loaded and not yet played out."""
        t = self._traj
        return t is not None and (t.start is None or self._time < t.start + t.times[-1])

    def sample_reference(self) -> np.ndarray | None:
        """The last commanded position (``last_commanded_state_``), or None before any."""
        return None if self._desired_q is None else self._desired_q.copy()

    def reset(self, q: np.ndarray) -> None:
        """Drop any trajectory and hold ``q`` at rest (a sim reset, controller switch)."""
        self._traj = None
        self._desired_q = np.asarray(q, float).copy()
        self._desired_v = np.zeros_like(self._desired_q)
        self._desired_t = -np.inf

    def command(self, joint_names: Sequence[str], times_from_start: Sequence[float],
                positions: Sequence[Sequence[float]], velocities=None, *,
                start_time: float, now: float, current: np.ndarray | None = None) -> None:
        """Validate a trajectory and make it replace the running one (from the next sample).

        ``start_time`` is the header stamp in seconds (0: start now). Raises
        :class:`CommandRejected` with the JTC's own words where it refuses the message.
        ``current`` is unused (kept for callers; the start state is taken when sampling).
        """
        names = list(joint_names)
        # validate_trajectory_msg, in its order: the joint count first (allow_partial_joints_goal
        # false), so that no joint names at all reads "don't match", as upstream
        if len(names) != len(self.joint_names):
            raise CommandRejected("Joints on incoming trajectory don't match the controller "
                                  f"joints. (got {names}, controller: {list(self.joint_names)})")
        if not names:
            raise CommandRejected("Empty joint names on incoming trajectory.")
        if not len(positions):
            raise CommandRejected("Empty trajectory received.")
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise CommandRejected(f"Incoming joint {unknown[0]} doesn't match the controller's "
                                  "joints.")
        if len(set(names)) != len(names):
            raise CommandRejected(f"joint_names: duplicates in {names}")
        order = [names.index(n) for n in self.joint_names]
        times = np.asarray(times_from_start, float)
        try:
            pos = np.asarray(positions, float)
        except ValueError as exc:  # ragged rows
            raise CommandRejected(f"points.positions: rows of different lengths ({exc})") from None
        if pos.ndim != 2 or pos.shape[1] != len(names) or len(times) != len(pos):
            raise CommandRejected(f"Mismatch between joint_names size ({len(names)}) and "
                                  f"positions (shape {pos.shape})")
        vel = None
        if velocities is not None and len(velocities) and any(len(v) for v in velocities):
            vel = np.asarray(velocities, float)
            if vel.shape != pos.shape:
                raise CommandRejected(f"Mismatch between joint_names size ({len(names)}) and "
                                      f"velocities (shape {vel.shape})")
        if (not self.allow_nonzero_velocity_at_trajectory_end and vel is not None
                and np.any(np.abs(vel[-1]) > np.finfo(np.float32).eps)):
            # validate_trajectory_msg names the first such joint (in message order)
            j = int(np.argmax(np.abs(vel[-1]) > np.finfo(np.float32).eps))
            raise CommandRejected(f"Velocity of last trajectory point of joint {names[j]} is "
                                  f"not zero: {vel[-1][j]:.15f}")
        if start_time != 0.0 and start_time + times[-1] < now:
            raise CommandRejected(f"Received trajectory with non-zero start time ({start_time:f})"
                                  f" that ends in the past ({start_time + times[-1]:f})")
        if np.any(np.diff(times) <= 0):
            raise CommandRejected(f"Time between points is not strictly increasing: "
                                  f"{times.tolist()}")
        # the sim's own checks (its motors'): no NaN, nothing outside the joint limits
        if not (np.isfinite(times).all() and np.isfinite(pos).all()
                and (vel is None or np.isfinite(vel).all())):
            raise CommandRejected("points: NaN or inf in time_from_start/positions/velocities")
        pos = pos[:, order]
        vel = None if vel is None else vel[:, order]
        tol = self.position_tolerance
        outside = (pos < self.lower - tol) | (pos > self.upper + tol)
        if outside.any():
            point, joint = np.argwhere(outside)[0]
            raise CommandRejected(
                f"points[{point}].positions: {self.joint_names[joint]} = {pos[point, joint]:.4f} "
                f"outside its limits [{self.lower[joint]:.4f}, {self.upper[joint]:.4f}]")
        self._traj = _Trajectory(float(start_time), times, pos, vel)

    def sample(self, now: float, period: float = 0.0, measured_q=None, measured_v=None
               ) -> np.ndarray | None:
        """The position command for the control period starting at ``now`` (None: none yet).

        As JointTrajectoryController::update: the command written at ``now`` is the trajectory
        sampled one ``period`` ahead, and a trajectory's first sample sets the point it starts
        from: the last command (with ``interpolate_from_desired_state``) or the measured
        ``measured_q`` / ``measured_v`` (the state interfaces).
        """
        self._time = now
        t = self._traj
        if t is None:
            return self._desired_q
        if t.start is None:  # set_point_before_trajectory_msg
            t.start = now if t.stamp == 0.0 else t.stamp
            if self.interpolate_from_desired_state and self._desired_q is not None:
                t.before_t = self._desired_t if np.isfinite(self._desired_t) else now
                t.before_q, t.before_v = self._desired_q.copy(), self._desired_v.copy()
            else:
                base = self._desired_q if measured_q is None else measured_q
                t.before_t = now
                t.before_q = np.asarray(base, float).copy()
                t.before_v = (np.zeros_like(t.before_q) if measured_v is None
                              else np.asarray(measured_v, float).copy())
        q, v = self._interpolate(t, now + period)
        # last_commanded_state_ is the command for now + period, kept with the time ``now``
        self._desired_q, self._desired_v, self._desired_t = q, v, now
        return q

    @staticmethod
    def _interpolate(t: _Trajectory, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Trajectory::sample + interpolate_between_points (no accelerations given)."""
        ends = t.start + t.times
        if now < ends[0]:  # towards the first point from the state before the message
            return _segment(t.before_t, t.before_q, t.before_v, ends[0], t.positions[0],
                            None if t.velocities is None else t.velocities[0], now)
        k = int(np.searchsorted(ends, now, side="right"))
        if k >= len(ends):  # played out: the last point itself
            v = np.zeros(t.positions.shape[1]) if t.velocities is None else t.velocities[-1]
            return t.positions[-1].copy(), v.copy()
        vel = t.velocities
        return _segment(ends[k - 1], t.positions[k - 1], None if vel is None else vel[k - 1],
                        ends[k], t.positions[k], None if vel is None else vel[k], now)


def _segment(t0, p0, v0, t1, p1, v1, t) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity at ``t`` between two points.

    Linear without velocities at both ends or outside the segment, else cubic
    (trajectory.cpp ``interpolate_between_points``).
    """
    if v0 is not None and v1 is not None and t0 <= t <= t1:
        return cubic_segment(t0, p0, v0, t1, p1, v1, t)
    h = t1 - t0
    if h <= 0:
        return np.array(p1, float), np.zeros_like(p1, dtype=float)
    slope = (p1 - p0) / h
    return p0 + slope * min(max(t - t0, 0.0), h), slope


JTC_TYPE = "joint_trajectory_controller/JointTrajectoryController"
POSITION_TYPE = "position_controllers/JointGroupPositionController"
ARM_CONTROLLERS = (JTC_TYPE, POSITION_TYPE)


class JointGroupPositionFollower:
    """Follow ``std_msgs/Float64MultiArray`` commands as a JointGroupPositionController does.

    That controller is forward_command_controller's ForwardCommandController with the
    ``position`` interface (``position_controllers/src/joint_group_position_controller.cpp``,
    its constructor); its rules are ``forward_controllers_base.cpp``'s (kilted):

    - the subscription (``on_configure``'s callback) drops a message holding a non-finite
      value ("Non-finite value received. Dropping message"); any other becomes the command,
      the newest winning (:meth:`command`);
    - ``update`` (:meth:`sample`, once per control period) takes the newest command; all NaN,
      or no value at all, is "no command": nothing is written and the joints keep their last
      command. A size other than the joint count: "command size (n) does not match number of
      interfaces (6)", ``update`` returns ERROR, and ``ControllerManager::update``
      (controller_manager.cpp) deactivates the controller ("Deactivating controllers : [ name]
      as their update resulted in an error!"): it writes nothing more, the joints hold, until
      it is activated again. Otherwise each value goes to its joint unchanged, in the
      ``joints`` order: no interpolation, no limits of its own;
    - ``on_activate`` / ``on_deactivate`` reset the command to NaN (no command).

    The sim's own (its motors'), as for the JTC stand-in: values outside the joint limits are
    refused whole. A reset (``reset_task``) holds the new position and activates the
    controller again, as a restarted controller_manager would.
    """

    def __init__(self, joint_names: Sequence[str], lower, upper,
                 name: str = "forward_position_controller", position_tolerance: float = 1e-6):
        self.joint_names = tuple(joint_names)
        self.name = name
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.position_tolerance = position_tolerance
        self.active = True
        self._command: np.ndarray | None = None   # rt_command_: the newest message kept
        self._written: np.ndarray | None = None   # what the position interfaces hold
        self.failures: list[str] = []             # update's errors, for the node to log

    def command(self, values: Sequence[float]) -> None:
        """The subscription's callback: keep ``values`` as the newest command, or raise."""
        values = np.asarray(values, float).ravel()
        if not np.isfinite(values).all():
            raise CommandRejected("Non-finite value received. Dropping message")
        tol = self.position_tolerance
        if len(values) == len(self.joint_names):   # (another size fails in update)
            outside = (values < self.lower - tol) | (values > self.upper + tol)
            if outside.any():
                j = int(np.argmax(outside))
                raise CommandRejected(
                    f"data[{j}]: {self.joint_names[j]} = {values[j]:.4f} outside its limits "
                    f"[{self.lower[j]:.4f}, {self.upper[j]:.4f}] (the sim's motors refuse it)")
        self._command = values

    def sample(self, now: float | None = None, period: float = 0.0, measured_q=None,
               measured_v=None) -> np.ndarray | None:
        """``update``: the position the joints hold this period (None: never commanded).

        The arguments are those of :meth:`JointTrajectoryFollower.sample` (unused: a forward
        controller reads no time and no state).
        """
        command = self._command
        if not self.active or command is None or np.isnan(command).all():
            return self._written
        n = len(self.joint_names)
        if len(command) != n:
            self.active, self._command = False, None   # on_deactivate: no command
            self.failures += [f"command size ({len(command)}) does not match number of "
                              f"interfaces ({n})",
                              f"Deactivating controllers : [ {self.name} ] as their update "
                              "resulted in an error!"]
            return self._written
        self._written = command.copy()
        return self._written

    def sample_reference(self) -> np.ndarray | None:
        """The position last written (None before any)."""
        return None if self._written is None else self._written.copy()

    def reset(self, q: np.ndarray) -> None:
        """Hold ``q``, dropping the command (another command source took over the arm)."""
        self._written = np.asarray(q, float).copy()
        self._command = None

    def activate(self) -> None:
        """Activate the controller again (``on_activate``: no command until one arrives)."""
        self.active, self._command = True, None


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
    """MoveIt-Servo-style twist commands -> joint position targets through differential IK.

    Follows moveit2 ``moveit_servo`` (jazzy ``src/servo_node.cpp`` ``servoLoop``, ``src/servo.cpp``
    ``getNextJointState``): a twist in the planning frame in ``speed_units``, capped at the
    linear / rotational scales, and a halt when no command arrived for
    ``incoming_command_timeout`` (``timeout`` here). Unlike a jazzy Servo it needs no
    ``~/switch_command_type`` call first (executor_node's ``servo.manage: false`` for the sim).
    """

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


def validate_gripper_command(values: Sequence[float], lower: float, upper: float
                             ) -> tuple[float, str | None]:
    """Check a gripper command and return ``(finger position, note)``.

    The command is what forward_command_controller takes: one value in the finger joint's own
    units (m), written to its position interface unchanged (forward_command_controller.cpp
    ``update``). The sim's finger motor then holds it inside the joint limits ``[lower,
    upper]``; ``note`` says when it had to (a real controller_manager logs that as an error).
    """
    if len(values) != 1:
        raise CommandRejected(f"data: expected one value (the finger position in m), got "
                              f"{len(values)}")
    value = float(values[0])
    if not np.isfinite(value):
        raise CommandRejected(f"data[0]: gripper position {value} is not finite")
    held = min(max(value, lower), upper)
    note = None if held == value else (
        f"data[0]: gripper position {value:.4f} m outside the finger's limits "
        f"[{lower:.4f}, {upper:.4f}] m: the motor holds {held:.4f} m (is the command an "
        "opening in [0, 1] instead of metres?)")
    return held, note
