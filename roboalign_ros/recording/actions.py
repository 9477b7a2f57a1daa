"""What the recorder stores as the action, per command source (ROS-free, duck-typed messages).

``action_source`` picks the commands that define the action of a frame:

- ``joint_trajectory``: arm joint targets from ``trajectory_msgs/JointTrajectory`` (the point
  the controller is moving to at the frame time) + the gripper opening from
  ``/gripper_controller/commands`` (the finger joint's position, mapped back to [0, 1]);
  names = arm joints + ``gripper`` (CONVENTIONS.md
  ``joint_position``).
- ``servo``: the ``geometry_msgs/TwistStamped`` sent to MoveIt Servo (base frame) + gripper;
  names = ``vx vy vz wx wy wz gripper`` (``ee_delta``). A twist older than the Servo timeout
  means the arm is halted: zero twist.
- ``action_chunk``: the row of the latest ``roboalign_ros/ActionChunk`` (``joint_position``)
  scheduled at the frame time (row i is the target for ``stamp + i * dt``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

ACTION_SOURCES = ("joint_trajectory", "servo", "action_chunk")
TWIST_NAMES = ("vx", "vy", "vz", "wx", "wy", "wz")
GRIPPER = "gripper"


def check_action_source(source: str) -> str:
    """Return ``source`` or raise ValueError naming the parameter."""
    if source not in ACTION_SOURCES:
        raise ValueError(f"action_source: {source!r} is not one of {list(ACTION_SOURCES)}")
    return source


def action_names(source: str, arm_joints: Sequence[str]) -> list[str]:
    """Dimension names of the stored action for ``source``."""
    check_action_source(source)
    if source == "servo":
        return [*TWIST_NAMES, GRIPPER]
    return [*arm_joints, GRIPPER]


def state_names(arm_joints: Sequence[str]) -> list[str]:
    """Dimension names of the stored state: arm joint positions + gripper opening."""
    return [*arm_joints, GRIPPER]


@dataclasses.dataclass(frozen=True)
class TrajectoryTarget:
    """A joint trajectory as the controller executes it: the point it is heading to at ``t``."""

    times: np.ndarray  # [P] absolute times of the points (s)
    positions: np.ndarray  # [P, n] in arm joint order

    def at(self, t: float) -> np.ndarray:
        """Positions of the first point not yet reached at ``t`` (the last one afterwards)."""
        k = min(int(np.searchsorted(self.times, t, side="left")), len(self.times) - 1)
        return self.positions[k]


@dataclasses.dataclass(frozen=True)
class ChunkTarget:
    """An action chunk: row i is the target for ``stamp + i * dt``; expires ``max_age`` after."""

    stamp: float
    dt: float
    actions: np.ndarray  # [H, D] float32
    max_age: float

    def at(self, t: float) -> np.ndarray | None:
        """Return the row scheduled at ``t`` (nearest row time; None once the chunk is stale)."""
        i = int(np.floor((t - self.stamp) / self.dt + 0.5))
        last = len(self.actions) - 1
        if i > last and t - (self.stamp + last * self.dt) > self.max_age:
            return None
        return self.actions[min(max(i, 0), last)]


class TrajectoryParser:
    """JointTrajectory fields -> :class:`TrajectoryTarget` in arm joint order."""

    def __init__(self, arm_joints: Sequence[str]):
        self.arm_joints = tuple(arm_joints)

    def __call__(self, joint_names: Sequence[str], times_from_start: Sequence[float],
                 positions: Sequence[Sequence[float]], start: float) -> TrajectoryTarget | None:
        """Return the target, None for an empty (stop) trajectory; ValueError if malformed."""
        if not len(positions):
            return None
        names = list(joint_names)
        missing = [j for j in self.arm_joints if j not in names]
        if missing:
            raise ValueError(f"joint_names: trajectory lacks arm joints {missing}")
        try:
            pos = np.asarray([list(p) for p in positions], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"points.positions: rows of different lengths ({exc})") from None
        if pos.ndim != 2 or pos.shape[1] != len(names):
            raise ValueError(f"points.positions: each point needs {len(names)} values")
        times = start + np.asarray(times_from_start, dtype=np.float64)
        if not (np.isfinite(pos).all() and np.isfinite(times).all()):
            raise ValueError("points: NaN or inf")
        order = [names.index(j) for j in self.arm_joints]
        return TrajectoryTarget(times, pos[:, order].astype(np.float32))


def gripper_value(data: Sequence[float], robot) -> float:
    """The opening in [0, 1] of a gripper command (one value), or ValueError.

    The command is in the controller's units (the finger joint's position, m), as
    forward_command_controller takes it; ``robot.gripper_closed`` / ``gripper_open`` map it.
    """
    if len(data) != 1:
        raise ValueError(f"data: gripper command needs 1 value, got {len(data)}")
    v = float(data[0])
    lo, hi = sorted((robot.gripper_closed, robot.gripper_open))
    slack = 1e-3 * (hi - lo)
    if not (lo - slack <= v <= hi + slack):
        raise ValueError(f"data: gripper position {v} is outside [{lo}, {hi}] (the finger "
                         "joint's range in the robot config; an opening in [0, 1] must be "
                         "scaled to it)")
    return robot.joint_to_gripper(v)


def twist_vector(linear, angular) -> np.ndarray:
    """[vx, vy, vz, wx, wy, wz] float32 from geometry_msgs Vector3-likes (ValueError on NaN)."""
    v = np.array([linear.x, linear.y, linear.z, angular.x, angular.y, angular.z], np.float32)
    if not np.isfinite(v).all():
        raise ValueError("twist: NaN or inf")
    return v


def compose_action(source: str, command, gripper: float | None, state: np.ndarray) -> np.ndarray:
    """Build the stored action from the sampled command(s).

    A missing gripper command falls back to the measured opening (the gripper holds where it is
    until commanded).
    """
    if source == "action_chunk":
        return np.asarray(command, np.float32)
    g = float(state[-1]) if gripper is None else gripper
    out = np.empty(len(command) + 1, np.float32)
    out[:-1] = command
    out[-1] = g
    return out
