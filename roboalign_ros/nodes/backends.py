"""How executor commands reach the arm: a registry of output backends.

A backend turns one :class:`~roboalign_ros.control.executor.Command` per tick into messages.
Each registers its name, the chunk action spaces it streams and a factory
(:func:`register_backend`); executor_node builds the one its ``backend`` parameter names and
refuses a pair the registry does not hold, naming the choices. A backend's own parameters are
executor_node's, declared in config/parameters/executor_node.yaml (``<backend>.<name>``).
Built in: ``joint_trajectory`` (ros2_control JTC topic, below), ``servo`` (MoveIt Servo,
:mod:`.servo_backend`), ``moveit_py`` (homing only, :mod:`.moveit_backend`). Every module
``roboalign_ros/nodes/*_backend.py`` is imported when the registry is first read, so a new
backend is one such file that calls :func:`register_backend` (e.g. :mod:`.position_backend`).

A backend object has ``send(command)`` (False: the e-stop process had already stopped the
arm) and may have ``activate()`` / ``deactivate()`` (executor_node's lifecycle), ``close()``,
``forget()`` (a scene reset voided the controller's reference), ``halted`` (why the controller
halted itself) and ``publish(stamp, times, positions, velocities)`` (it executes a stamped
joint trajectory itself, e.g. ``~/go_home``; without it the home move goes to the JTC topic).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from roboalign_ros.control.trajectory import trajectory_points
from roboalign_ros.conversions import trajectory_msg
from roboalign_ros.nodes.common import COMMAND_QOS
from roboalign_ros.nodes.servo_backend import ServoBackend


@dataclass(frozen=True)
class BackendSpec:
    """A registered output backend.

    ``factory(node, robot, params, guard)`` builds it: ``params`` are executor_node's parameter
    values (the backend's own included), ``guard`` the e-stop process or None.
    """

    name: str
    action_spaces: tuple[str, ...]     # the chunk action spaces it streams (none: not streamed)
    factory: Callable[..., Any] | None
    estop_process: bool = False        # its stops can come from the e-stop process (JTC topic)
    note: str = ""                     # why it streams nothing, for the error


_REGISTRY: dict[str, BackendSpec] = {}
_discovered = False


def register_backend(name: str, action_spaces, factory, *, estop_process: bool = False,
                     note: str = "") -> BackendSpec:
    """Make backend ``name`` available to executor_node (``backend: <name>``).

    ``estop_process``: its stops may come from the e-stop process (it publishes on the JTC
    topic); ``note``: for a backend that streams nothing, why (said in the error).
    """
    spec = BackendSpec(name, tuple(action_spaces), factory, estop_process, note)
    if _REGISTRY.get(name, spec) != spec:
        raise ValueError(f"backend {name!r} is registered twice")
    _REGISTRY[name] = spec
    return spec


def registered_backends() -> dict[str, BackendSpec]:
    """Every registered backend by name, after importing each ``nodes/*_backend.py`` module."""
    global _discovered
    if not _discovered:
        import importlib
        import pkgutil

        import roboalign_ros.nodes as nodes

        _discovered = True
        for module in pkgutil.iter_modules(nodes.__path__):
            if module.name.endswith("_backend"):
                importlib.import_module(f"{nodes.__name__}.{module.name}")
    return dict(_REGISTRY)


def backend_for(name: str, action_space: str) -> BackendSpec:
    """The backend ``name`` if it streams ``action_space``; ValueError names the choices."""
    specs = registered_backends()
    fits = ", ".join(sorted(n for n, s in specs.items() if action_space in s.action_spaces))
    spec = specs.get(name)
    if spec is None:
        raise ValueError(f"backend: {name!r} is not one of {', '.join(sorted(specs))} "
                         f"(for action_space {action_space!r}: {fits or 'none'})")
    if action_space not in spec.action_spaces:
        why = spec.note or f"it streams {', '.join(spec.action_spaces)}"
        raise ValueError(f"backend: {name!r} does not stream action_space {action_space!r} "
                         f"({why}); the backends that do: {fits or 'none'}")
    return spec


def make_backend(name: str, node, robot, params: Mapping[str, Any], guard=None):
    """Build backend ``name`` for ``params['action_space']`` (see :func:`backend_for`)."""
    spec = backend_for(name, params["action_space"])
    return spec.factory(node, robot, params, guard)


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


register_backend("joint_trajectory", ("joint_position",),
                 lambda node, robot, params, guard: JointTrajectoryBackend(node, robot, guard),
                 estop_process=True)
register_backend("servo", ("ee_delta",),
                 lambda node, robot, params, guard: ServoBackend(
                     node, robot, manage_servo=params["servo.manage"]))
register_backend("moveit_py", (), None,
                 note="it plans whole motions: use it as home_backend")
