"""How executor commands reach the arm: ros2_control JTC topic, MoveIt Servo, or MoveItPy.

Each backend turns one :class:`~roboalign_ros.control.executor.Command` per tick into messages.
``moveit_py`` imports MoveIt only when chosen and fails with a clear error where it is missing.
"""

from __future__ import annotations

import math

from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from roboalign_ros.conversions import seconds_to_duration
from roboalign_ros.nodes.common import COMMAND_QOS
from roboalign_ros.nodes.servo_backend import ServoBackend

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
