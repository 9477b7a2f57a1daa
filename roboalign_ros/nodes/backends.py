"""How executor commands reach the arm: ros2_control JTC topic, MoveIt Servo, or MoveItPy.

Each backend turns one :class:`~roboalign_ros.control.executor.Command` per tick into messages.
``moveit_py`` imports MoveIt only when chosen and fails with a clear error where it is missing.
"""

from __future__ import annotations

import math

import numpy as np
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from roboalign_ros.conversions import seconds_to_duration
from roboalign_ros.nodes.common import COMMAND_QOS

BACKENDS = ("joint_trajectory", "servo", "moveit_py")


class GripperPublisher:
    """Publishes the gripper opening when it changes (and at least every second)."""

    def __init__(self, node, topic: str, resend_period: float = 1.0):
        self._pub = node.create_publisher(Float64MultiArray, topic, COMMAND_QOS)
        self._last, self._sent_at, self._resend = None, -math.inf, resend_period

    def send(self, opening: float | None, now: float) -> None:
        """Send ``opening`` in [0, 1] if it changed; None means never commanded: send nothing."""
        if opening is None:
            return
        if self._last is None or abs(opening - self._last) > 1e-3 or \
                now - self._sent_at > self._resend:
            self._pub.publish(Float64MultiArray(data=[float(opening)]))
            self._last, self._sent_at = opening, now


class JointTrajectoryBackend:
    """Streams one-point trajectories to a ros2_control joint_trajectory_controller."""

    name = "joint_trajectory"

    def __init__(self, node, robot, lead_time: float):
        self.joint_names = list(robot.arm_joints)
        self.lead_seconds = float(lead_time)
        self._pub = node.create_publisher(JointTrajectory, robot.trajectory_topic, COMMAND_QOS)

    def send(self, command) -> None:
        """Track ``command.arm`` in ``command.duration``; otherwise stop once when asked.

        Holds are never streamed positions: after the controller's stop the controller holds
        where the arm is (a position behind it would be a jump back).
        """
        if command.kind == "track":
            self.move_to(command.arm, max(command.duration, self.lead_seconds))
        elif command.stop:
            self.stop()

    def move_to(self, positions, duration) -> None:
        """One-point trajectory to ``positions`` (arm joints in config order) in ``duration``.

        ``duration``: a builtin_interfaces/Duration or seconds. The header stamp stays 0
        ("start on arrival"): a message delayed in transport then still takes ``duration``.
        """
        if isinstance(duration, (int, float)):
            duration = seconds_to_duration(duration)
        point = JointTrajectoryPoint(positions=[float(q) for q in positions],
                                     time_from_start=duration)
        self._pub.publish(JointTrajectory(joint_names=self.joint_names, points=[point]))

    def stop(self) -> None:
        """An empty trajectory: the controller stops and holds where the arm is."""
        self._pub.publish(JointTrajectory(joint_names=self.joint_names))


class ServoBackend:
    """Streams base-frame twists to MoveIt Servo (or the sim's Servo stand-in)."""

    name = "servo"

    def __init__(self, node, robot, lead_time: float = 0.0):
        self.frame_id = robot.base_frame
        self._node = node
        self._pub = node.create_publisher(TwistStamped, robot.servo_topic, COMMAND_QOS)

    def send(self, command) -> None:
        """Publish ``command.arm`` as [vx, vy, vz, wx, wy, wz] (zeros when holding)."""
        self._publish(command.arm if command.kind == "track" else np.zeros(6))

    def stop(self) -> None:
        """A zero twist."""
        self._publish(np.zeros(6))

    def _publish(self, twist) -> None:
        msg = TwistStamped()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z,
         msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = map(float, twist)
        self._pub.publish(msg)


class MoveItPyBackend:
    """Plan and execute with MoveItPy: used for going home and resets, not for streaming."""

    name = "moveit_py"

    def __init__(self, node, robot, planning_group: str = "arm"):
        try:
            from moveit.planning import MoveItPy
        except ImportError as exc:
            raise RuntimeError(
                "backend 'moveit_py' needs MoveIt 2 with moveit_py (ROS package `moveit_py`, "
                "e.g. `apt install ros-$ROS_DISTRO-moveit-py`) and a running move_group "
                f"configuration for {robot.name}; not found: {exc}") from exc
        self.robot, self.group = robot, planning_group
        self._moveit = MoveItPy(node_name=f"{node.get_name()}_moveit_py")
        self._arm = self._moveit.get_planning_component(planning_group)

    def move_to(self, joint_positions) -> bool:
        """Plan to joint positions (arm joints in config order) and execute; True on success."""
        from moveit.core.robot_state import RobotState

        state = RobotState(self._moveit.get_robot_model())
        state.joint_positions = dict(zip(self.robot.arm_joints, map(float, joint_positions)))
        self._arm.set_start_state_to_current_state()
        self._arm.set_goal_state(robot_state=state)
        plan = self._arm.plan()
        if not plan:
            return False
        self._moveit.execute(plan.trajectory, controllers=[])
        return True

    def send(self, command) -> None:  # pragma: no cover - guarded by the node
        """Not supported: MoveItPy plans whole motions."""
        raise RuntimeError("moveit_py plans and executes; it does not stream chunk commands")

    def stop(self) -> None:
        """Nothing to stream; MoveIt's own execution manager stops on its trajectories."""


def make_backend(name: str, node, robot, lead_time: float):
    """Build the streaming backend ``name`` (joint_trajectory or servo)."""
    if name == "joint_trajectory":
        return JointTrajectoryBackend(node, robot, lead_time)
    if name == "servo":
        return ServoBackend(node, robot)
    if name == "moveit_py":
        raise ValueError("backend: 'moveit_py' cannot stream chunks; use it as home_backend "
                         "and joint_trajectory or servo as backend")
    raise ValueError(f"backend: {name!r} is not one of {BACKENDS}")
