"""SimServer: the simulated robot as a real one looks from outside (no rclpy).

It owns a :class:`~roboalign_ros.sim.env.TabletopEnv` and the controller stand-ins, and offers
what ``sim_node`` exposes as topics and services: joint trajectory, twist and gripper commands,
reset to a task and seed, a physics step per control period, and camera frames rendered from a
snapshot of the state so that rendering (tens of ms on a CPU) never stalls the physics loop.
All public methods are thread-safe.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass

import mujoco
import numpy as np

from roboalign_ros.control.kinematics import Kinematics
from roboalign_ros.control.trajectory import points_at
from roboalign_ros.sim.controllers import (
    ARM_CONTROLLERS,
    JTC_TYPE,
    POSITION_TYPE,
    CommandRejected,
    JointGroupPositionFollower,
    JointTrajectoryFollower,
    RateLimiter,
    TooFast,
    TwistFollower,
    validate_gripper_command,
)
from roboalign_ros.sim.env import TabletopEnv

__all__ = ["CameraFrame", "CommandRejected", "JointStateSample", "SceneCamera", "SimServer",
           "TooFast"]


@dataclass(frozen=True)
class JointStateSample:
    """One /joint_states sample."""

    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray


@dataclass(frozen=True)
class CameraFrame:
    """One rendered frame: rgb uint8 [H, W, 3], depth uint16 millimetres [H, W] (0 = invalid)."""

    rgb: np.ndarray
    depth_mm: np.ndarray | None
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy
    sim_time: float


class SimServer:
    """The simulated arm behind the ROS interfaces (thread-safe)."""

    def __init__(self, robot: str = "sim_arm", control_period: float = 0.01,
                 servo_timeout: float = 0.2, max_linear: float = 0.25,
                 max_angular: float = 1.0, interpolate_from_desired_state: bool = True,
                 allow_nonzero_velocity_at_trajectory_end: bool = False,
                 arm_controller: str = JTC_TYPE,
                 position_controller: str = "forward_position_controller"):
        """The arm, its controllers and Servo.

        ``arm_controller``: the controller type the arm runs (one of ARM_CONTROLLERS);
        ``position_controller``: the JointGroupPositionController's name, when it is that.
        """
        if arm_controller not in ARM_CONTROLLERS:
            raise ValueError(f"arm_controller: {arm_controller!r} is not one of "
                             f"{', '.join(ARM_CONTROLLERS)}")
        self.env = TabletopEnv(robot, control_period=control_period)
        self.robot = self.env.robot
        self.lock = threading.RLock()
        spec = self.robot
        # the JTC's two options that change what it does with our stream, as in
        # config/sim_arm_controllers.yaml (upstream defaults: false, false)
        self.trajectory = JointTrajectoryFollower(
            spec.arm_joints, spec.lower, spec.upper, spec.velocity,
            interpolate_from_desired_state=interpolate_from_desired_state,
            allow_nonzero_velocity_at_trajectory_end=allow_nonzero_velocity_at_trajectory_end)
        self.position = JointGroupPositionFollower(spec.arm_joints, spec.lower, spec.upper,
                                                   name=position_controller)
        # the controller that moves the arm (the other one gets no commands)
        self.arm = self.position if arm_controller == POSITION_TYPE else self.trajectory
        self.twist = TwistFollower(Kinematics(spec), timeout=servo_timeout,
                                   max_linear=max_linear, max_angular=max_angular)
        # every arm target, from any command source, goes through the limiter to the physics
        self.limiter = RateLimiter(spec.arm_joints, spec.velocity,
                                   self.trajectory.velocity_tolerance)
        self.arm.reset(self.env.arm_q())
        self.limiter.reset(self.env.arm_q())

    @property
    def control_period(self) -> float:
        """Seconds of simulated time per :meth:`step`."""
        return self.env.control_period

    # ------------------------------------------------------------------ commands (thread-safe)

    def command_trajectory(self, joint_names, times_from_start, positions, velocities=None, *,
                           start_time: float, now: float) -> None:
        """Accept a joint trajectory or raise :class:`CommandRejected` (no motion then).

        It replaces the running one at the next step, as a JTC's does.
        """
        with self.lock:
            self.trajectory.command(joint_names, times_from_start, positions, velocities,
                                    start_time=start_time, now=now)
            self.twist.stop()  # the latest command source wins, as with controller switching

    def takeover_gap(self, joint_names, times_from_start, positions, velocities=None, *,
                     start_time: float, now: float) -> float:
        """How far (rad, largest joint) the reference would jump if this took over at ``now``.

        0 while its first point is still ahead (the controller moves to it). Malformed input
        reads as 0 (:meth:`command_trajectory` refuses it with its reasons).
        """
        try:
            elapsed = now - start_time if start_time else 0.0
            times = [float(t) for t in times_from_start]
            if not times or elapsed < times[0]:
                return 0.0
            order = [list(joint_names).index(n) for n in self.trajectory.joint_names]
            pos = np.asarray(positions, float)[:, order]
            vel = (np.asarray(velocities, float)[:, order]
                   if velocities is not None and len(velocities) and len(velocities[0])
                   else np.zeros_like(pos))
            q, _ = points_at(tuple(zip(times, pos, vel)), elapsed)
        except (ValueError, IndexError):
            return 0.0
        with self.lock:
            reference = self.trajectory.sample_reference()
        return float(np.max(np.abs(q - reference))) if reference is not None else 0.0

    def command_position(self, values) -> None:
        """Accept a JointGroupPositionController command or raise :class:`CommandRejected`.

        The newest one is written at the next step; see :class:`JointGroupPositionFollower`.
        """
        with self.lock:
            self.position.command(values)
            self.twist.stop()

    def position_gap(self, values) -> float:
        """How far (rad, largest joint) the position command would move the reference at once.

        0 for a command of the wrong size or with NaN (refused for that).
        """
        values = np.asarray(values, float).ravel()
        with self.lock:
            reference = self.position.sample_reference()
        if reference is None or values.shape != reference.shape or not np.isfinite(values).all():
            return 0.0
        return float(np.max(np.abs(values - reference)))

    def controller_errors(self) -> list[str]:
        """What the arm controller said since the last call (its ``update`` failed)."""
        with self.lock:
            errors, self.position.failures = self.position.failures, []
            return errors

    def command_twist(self, twist, *, stamp: float, now: float) -> None:
        """Accept a Servo twist (base frame) or raise :class:`CommandRejected`."""
        with self.lock:
            self.twist.command(twist, stamp=stamp, now=now)
            if self.twist.active:
                self.arm.reset(self.env.q_target)

    def command_gripper(self, values) -> str | None:
        """Accept a gripper command or raise; returns a note when the finger's limits held it.

        ``values``: [finger position in m], as forward_command_controller takes it.
        """
        lo, hi = sorted((self.robot.gripper_closed, self.robot.gripper_open))
        value, note = validate_gripper_command(values, lo, hi)
        with self.lock:
            self.env.set_joint_targets(self.env.q_target, self.robot.joint_to_gripper(value))
        return note

    def reset(self, task: str, seed: int) -> str:
        """Reset to ``task`` (name or instruction; empty: current) and ``seed``.

        Returns the task's instruction. A name with control characters is refused (ROS strings
        end at the first NUL, so one starting with NUL arrives empty: the current task).
        """
        bad = sorted({c for c in task if unicodedata.category(c) == "Cc"})
        if bad:
            raise ValueError(f"task: {task!r} contains control characters {bad}; give a task "
                             "name or instruction, or empty for the current task")
        with self.lock:
            name = task or (self.env.task.name if self.env.task else "")
            if not name:
                raise ValueError("task: no task given and none running")
            self.env.reset(name, seed=int(seed))
            self.arm.reset(self.env.arm_q())
            self.position.activate()   # a restarted controller_manager's
            self.limiter.reset(self.env.arm_q())
            self.twist.stop()
            return self.env.task.instruction

    # ------------------------------------------------------------------ stepping

    def step(self, now: float) -> JointStateSample:
        """Advance one control period with the active command; ``now`` is the command clock."""
        with self.lock:
            n = len(self.robot.arm_joints)
            _, q, qd, _ = self.env.joint_state()
            target = self.arm.sample(now, self.env.control_period, q[:n], qd[:n])
            if self.twist.active:
                moved = self.twist.step(self.env.q_target, now, self.env.control_period)
                if moved is not None:
                    target = moved
                else:  # commands stopped: halt where we are commanded to be
                    self.twist.stop()
                    self.arm.reset(self.env.q_target)
                    target = None
            if target is not None:  # physics time per step, whatever the wall clock did
                target = self.limiter(target, self.env.control_period)
            self.env.step(target)
            names, q, qd, effort = self.env.joint_state()
            return JointStateSample(names, q, qd, effort)

    def task_status(self) -> tuple[str, str, int, float, bool]:
        """``(task name, instruction, seed, sim time, success)``."""
        with self.lock:
            instruction, success = self.env.task_status()
            task = self.env.task.name if self.env.task else ""
            return task, instruction, int(self.env.seed or 0), self.env.time, success


def depth_millimetres(meters: np.ndarray, max_depth_m: float = 10.0) -> np.ndarray:
    """Rendered depth (m) as a RealSense's 16UC1: uint16 mm, 0 (no return) past max_depth_m."""
    return np.round(np.where(meters < max_depth_m, meters, 0.0) * 1000.0).astype(np.uint16)


class SceneCamera:
    """Renders a camera from a snapshot of the sim state (call :meth:`render` from one thread).

    The env's GL contexts belong to the thread that first renders, so render from one thread
    only; :meth:`render` holds the server lock only while copying the state.
    """

    def __init__(self, server: SimServer, width: int, height: int, camera: str = "scene",
                 depth: bool = True, max_depth_m: float = 10.0):
        self.server, self.camera, self.depth = server, camera, depth
        self.width, self.height = int(width), int(height)
        self.max_depth_m = max_depth_m
        env = server.env
        self._data = mujoco.MjData(env.model)
        self.intrinsics = env.camera_intrinsics(self.width, self.height, camera)

    def render(self) -> CameraFrame:
        """Snapshot the state and render rgb (+ depth in mm)."""
        env = self.server.env
        with self.server.lock:
            self._data.qpos[:] = env.data.qpos
            self._data.qvel[:] = env.data.qvel
            self._data.time = env.data.time
        mujoco.mj_forward(env.model, self._data)
        rgb, meters = env.render(self.width, self.height, self.camera, self.depth,
                                 data=self._data)
        depth_mm = None if meters is None else depth_millimetres(meters, self.max_depth_m)
        return CameraFrame(rgb, depth_mm, self.intrinsics, float(self._data.time))

    def close(self) -> None:
        """Free the GL contexts (they belong to this camera's thread)."""
        self.server.env.close()
