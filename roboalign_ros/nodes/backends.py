"""How executor commands reach the arm: ros2_control JTC topic, MoveIt Servo, or MoveItPy.

Each backend turns one :class:`~roboalign_ros.control.executor.Command` per tick into messages.
``moveit_py`` imports MoveIt only when chosen and fails with a clear error where it is missing.
"""

from __future__ import annotations

import math

from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from roboalign_ros.control.trajectory import trajectory_points
from roboalign_ros.conversions import trajectory_msg
from roboalign_ros.nodes.common import COMMAND_QOS
from roboalign_ros.nodes.servo_backend import ServoBackend

BACKENDS = ("joint_trajectory", "servo", "moveit_py")


class GripperPublisher:
    """Publishes the gripper command when it changes (and at least every second).

    The policy's opening in [0, 1] is sent in the controller's units: forward_command_controller
    writes its value unchanged to the finger joint's position interface
    (forward_command_controller.cpp ``update``), so the opening is scaled to the joint value
    between the robot config's ``gripper_closed`` and ``gripper_open`` (m for a prismatic finger).
    """

    def __init__(self, node, robot, resend_period: float = 1.0):
        self._robot = robot
        self._pub = node.create_publisher(Float64MultiArray, robot.gripper_topic, COMMAND_QOS)
        self._last, self._sent_at, self._resend = None, -math.inf, resend_period

    def send(self, opening: float | None, now: float) -> None:
        """Send ``opening`` in [0, 1] if it changed; None means never commanded: send nothing."""
        if opening is None:
            return
        if self._last is None or abs(opening - self._last) > 1e-3 or \
                now - self._sent_at > self._resend:
            value = self._robot.gripper_to_joint(opening)
            self._pub.publish(Float64MultiArray(data=[float(value)]))
            self._last, self._sent_at = opening, now


class GripperActionClient:
    """Sends the gripper opening as a ``control_msgs/action/GripperCommand`` goal.

    For grippers driven through that action rather than a topic: franka_gripper's
    ``~/gripper_action`` (franka_ros2, position = each finger's travel), gripper_controllers'
    GripperActionController. The opening is scaled to the finger joint's value as for the topic;
    ``max_effort`` is the finger joint's URDF effort limit. A new goal goes out when the
    opening changes by more than ``threshold`` (a gripper is not streamed at 100 Hz) and
    replaces the previous one, as these servers preempt. control_msgs is imported here only.
    """

    def __init__(self, node, robot, threshold: float = 0.02, min_period: float = 0.1):
        try:
            from control_msgs.action import GripperCommand
            from rclpy.action import ActionClient
        except ImportError as exc:
            raise RuntimeError(
                f"robot {robot.name}: gripper_interface 'action' needs control_msgs "
                "(ROS package `control_msgs`, e.g. `apt install ros-$ROS_DISTRO-control-msgs`); "
                f"not found: {exc}") from exc
        self._robot, self._node, self._type = robot, node, GripperCommand
        self._client = ActionClient(node, GripperCommand, robot.gripper_topic)
        self._threshold, self._min_period = threshold, min_period
        self._last, self._sent_at, self._warned = None, -math.inf, False

    def send(self, opening: float | None, now: float) -> None:
        """Send a goal for ``opening`` in [0, 1] if it changed enough (None: never commanded)."""
        if opening is None or (self._last is not None
                               and abs(opening - self._last) <= self._threshold):
            return
        if now - self._sent_at < self._min_period:
            return
        if not self._client.server_is_ready():
            if not self._warned:
                self._node.get_logger().error(
                    f"gripper: no GripperCommand action server at {self._robot.gripper_topic}")
                self._warned = True
            return
        goal = self._type.Goal()
        goal.command.position = float(self._robot.gripper_to_joint(opening))
        goal.command.max_effort = float(self._robot.gripper_effort)
        self._client.send_goal_async(goal)
        self._last, self._sent_at, self._warned = opening, now, False

    def destroy(self) -> None:
        """Destroy the action client."""
        self._client.destroy()


def make_gripper(node, robot):
    """The gripper output the robot config names (``gripper_interface``)."""
    if robot.gripper_interface == "action":
        return GripperActionClient(node, robot)
    return GripperPublisher(node, robot)


class JointTrajectoryBackend:
    """Streams trajectories to a ros2_control joint_trajectory_controller (its topic).

    Every message is one a real JTC executes (:mod:`roboalign_ros.control.trajectory`): the
    target with its velocity and then rest, or for a stop, rest after braking. Never an empty
    trajectory: every JTC refuses one and goes on with the running trajectory.

    ``guard``: the e-stop process (:class:`~roboalign_ros.nodes.estop_guard.EstopGuard`).
    Once it is up it publishes every trajectory, so that none follows its e-stop stop.
    """

    name = "joint_trajectory"

    def __init__(self, node, robot, guard=None):
        self.joint_names = list(robot.arm_joints)
        self.guard = guard
        self._via_guard = False
        self._logger = node.get_logger()
        self._pub = node.create_publisher(JointTrajectory, robot.trajectory_topic, COMMAND_QOS)

    def send(self, command) -> bool:
        """Publish a track or stop command (any other tick sends nothing).

        False: an e-stop is engaged and the e-stop process sent its stop: nothing was sent.
        """
        if command.kind == "track" or command.stop:
            return self.publish(command.stamp, *trajectory_points(command),
                                estop=command.kind == "estop", continues=command.continues)
        return True

    def publish(self, stamp: float, times, positions, velocities, estop: bool = False,
                continues: bool = False) -> bool:
        """One trajectory; ``stamp`` (s, the node's clock) is when its time 0 is.

        ``estop``: it is the e-stop's stop (the e-stop process sends none after it).
        ``continues``: a track going on from the last one (the e-stop process holds it back if
        it would no longer join the trajectory in force). False: not sent, the e-stop process
        has stopped the arm.
        """
        from roboalign_ros.nodes.estop_guard import GuardLost

        if self.guard is not None and (self._via_guard or self.guard.reaches(
                self._pub.get_subscription_count())):
            self._via_guard = True   # from now on in one order, through the e-stop process
            try:
                return self.guard.send(stamp, zip(times, positions, velocities), estop,
                                       continues)
            except GuardLost as err:
                self._logger.error(f"{err}: this node publishes and stops the arm itself")
                self.guard = None
        self._pub.publish(trajectory_msg(self.joint_names, stamp, times, positions,
                                         velocities))
        return True


def make_backend(name: str, node, robot, manage_servo: bool = True, guard=None):
    """Build the streaming backend ``name`` (joint_trajectory or servo).

    ``manage_servo``: the servo backend sets MoveIt Servo's command type on activate (false for
    the sim's stand-in, which has no Servo services). ``guard``: the e-stop process
    (joint_trajectory).
    """
    if name == "joint_trajectory":
        return JointTrajectoryBackend(node, robot, guard)
    if name == "servo":
        return ServoBackend(node, robot, manage_servo=manage_servo)
    if name == "moveit_py":
        raise ValueError("backend: 'moveit_py' cannot stream chunks; use it as home_backend "
                         "and joint_trajectory or servo as backend")
    raise ValueError(f"backend: {name!r} is not one of {BACKENDS}")
