"""MoveIt Servo output: base-frame twists for MoveIt Servo (or the sim's Servo stand-in).

What a real Servo needs before it moves the arm, and what it says back, as moveit2's sources
state them (github.com/moveit/moveit2, moveit_ros/moveit_servo):

* **Command type / start.** jazzy and main (``src/servo_node.cpp``, ``ServoNode::servoLoop``)
  drop every twist with "Command type has not been set, cannot accept input" until
  ``~/switch_command_type`` (moveit_msgs/srv/ServoCommandType) selects TWIST (1)
  (``ServoNode::switchCommandType``; ``CommandType`` in ``utils/datatypes.hpp``). humble
  (``src/servo_node.cpp``, ``ServoNode::startCB``) runs no servo loop until ``~/start_servo``
  (std_srvs/srv/Trigger) is called (``ServoCalcs::start``; ``stop_requested_`` starts true).
  :meth:`ServoBackend.activate` finds which of the two the Servo node offers (the node is the
  namespace of ``topics.servo`` in the robot config, e.g. ``/servo_node``) and calls it.
  moveit_msgs is imported only on that path: without it the log says that the command type
  could not be set, why, and the command to set it by hand.
* **Units.** Servo's default ``command_in_type: unitless`` multiplies each twist component by
  ``scale.linear`` (0.4) / ``scale.rotational`` (0.8) (humble ``ServoCalcs::scaleCartesianCommand``;
  jazzy ``jointDeltaFromTwist`` in ``src/utils/command.cpp``), and humble drops any twist with
  a component above 1 (``ServoCalcs::checkValidCommand``). Our twists are in m/s and rad/s, so
  Servo must run with ``moveit_servo.command_in_type: speed_units``. :meth:`activate` reads
  the parameter from the Servo node and logs an error when it is not. With speed_units, jazzy+
  still caps the norm of the linear / angular velocity at scale.linear / scale.rotational.
* **Status.** Servo publishes its status every cycle on ``~/status`` (parameter
  ``status_topic``): std_msgs/Int8 on humble (``ServoCalcs::calculateSingleIteration``, codes
  in ``include/moveit_servo/status_codes.h``), moveit_msgs/ServoStatus on jazzy+ (code +
  message, ``ServoNode::servoLoop``; codes in ``utils/datatypes.hpp``). The codes were
  renumbered between the two, so the table follows the message type. Halts (singularity,
  collision, joint bound, and on jazzy+ an invalid command, which Servo does not execute)
  become :attr:`ServoBackend.halted`.
"""

from __future__ import annotations

import time

import numpy as np
from geometry_msgs.msg import TwistStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy

from roboalign_ros.nodes.common import COMMAND_QOS

TWIST = 1  # moveit_msgs/srv/ServoCommandType: JOINT_JOG=0, TWIST=1, POSE=2

# (name, text) per code. Texts are moveit_servo's SERVO_STATUS_CODE_MAP.
_TEXT = {
    "INVALID": "Invalid",
    "NO_WARNING": "No warnings",
    "DECELERATE_FOR_APPROACHING_SINGULARITY": "Moving closer to a singularity, decelerating",
    "HALT_FOR_SINGULARITY": "Very close to a singularity, emergency stop",
    "DECELERATE_FOR_LEAVING_SINGULARITY": "Moving away from a singularity, decelerating",
    "DECELERATE_FOR_COLLISION": "Close to a collision, decelerating",
    "HALT_FOR_COLLISION": "Collision detected, emergency stop",
    "JOINT_BOUND": "Close to a joint bound (position or velocity), halting",
}
# humble: include/moveit_servo/status_codes.h (std_msgs/Int8 on ~/status)
HUMBLE_STATUS_CODES = {
    -1: "INVALID", 0: "NO_WARNING", 1: "DECELERATE_FOR_APPROACHING_SINGULARITY",
    2: "HALT_FOR_SINGULARITY", 3: "DECELERATE_FOR_COLLISION", 4: "HALT_FOR_COLLISION",
    5: "JOINT_BOUND", 6: "DECELERATE_FOR_LEAVING_SINGULARITY",
}
# jazzy / main: include/moveit_servo/utils/datatypes.hpp, moveit_msgs/msg/ServoStatus
JAZZY_STATUS_CODES = {
    -1: "INVALID", 0: "NO_WARNING", 1: "DECELERATE_FOR_APPROACHING_SINGULARITY",
    2: "HALT_FOR_SINGULARITY", 3: "DECELERATE_FOR_LEAVING_SINGULARITY",
    4: "DECELERATE_FOR_COLLISION", 5: "HALT_FOR_COLLISION", 6: "JOINT_BOUND",
}
# Status names on which Servo stops the arm (or some joints). jazzy+: servoLoop publishes no
# command on INVALID or HALT_FOR_COLLISION (Servo::getNextJointState skips the computation);
# HALT_FOR_SINGULARITY sets the velocity scale to 0 (velocityScalingFactorForSingularity in
# src/utils/common.cpp); JOINT_BOUND halts the joints at their bounds (Servo::haltJoints).
# humble: the same three halts in ServoCalcs (suddenHalt) and velocityScalingFactorForSingularity.
HALT_REASONS = {
    "HALT_FOR_SINGULARITY": "singularity",
    "HALT_FOR_COLLISION": "collision",
    "JOINT_BOUND": "joint bound",
    "INVALID": "invalid command",
}
INT8_TYPE = "std_msgs/msg/Int8"
SERVO_STATUS_TYPE = "moveit_msgs/msg/ServoStatus"
# the parameters read back from the Servo node ("moveit_servo" is their namespace on humble,
# ServoParameters::makeServoParameters, and jazzy+, servo::ParamListener(node_, "moveit_servo"))
SERVO_PARAMETERS = ("moveit_servo.command_in_type", "moveit_servo.scale.linear",
                    "moveit_servo.scale.rotational", "moveit_servo.status_topic",
                    "moveit_servo.cartesian_command_in_topic")


def servo_namespace(topic: str) -> str:
    """``/servo_node/delta_twist_cmds`` -> ``/servo_node``: Servo's ``~/`` names live there."""
    ns = topic.rsplit("/", 1)[0] if "/" in topic else ""
    if not ns.strip("/"):
        raise ValueError(f"topics.servo: {topic!r} has no node namespace (expected "
                         "/<servo node>/delta_twist_cmds)")
    return ns if ns.startswith("/") else "/" + ns


def status_name(code: int, message_type: str) -> str:
    """The StatusCode name of ``code`` as the Servo that publishes ``message_type`` numbers it."""
    table = HUMBLE_STATUS_CODES if message_type == INT8_TYPE else JAZZY_STATUS_CODES
    return table.get(int(code), f"UNKNOWN({int(code)})")


def halt_reason(code: int, message_type: str, message: str = "") -> str | None:
    """Why Servo halted (``"joint bound: Close to a joint bound ..."``), or None if it did not."""
    name = status_name(code, message_type)
    if name not in HALT_REASONS:
        return None
    return f"{HALT_REASONS[name]}: {message or _TEXT[name]} (Servo status {name}, {int(code)})"


class ServoBackend:
    """Streams base-frame twists to MoveIt Servo (or the sim's Servo stand-in).

    Lifecycle: :meth:`activate` (on the executor's activate: sets Servo's command type and
    subscribes to its status, asynchronously, retrying until the Servo node is up),
    :meth:`deactivate` (undoes that), :meth:`close` (also drops the twist publisher).
    Read :attr:`halted` (None, or why Servo halted), :attr:`ready` and :meth:`diagnostics`.
    Nothing here blocks a callback: the services are called with ``call_async``.
    """

    name = "servo"
    retry_period = 1.0   # s between looks for the Servo node's services and topics
    warn_after = 5.0     # s without a Servo node before the first warning

    def __init__(self, node, robot, servo_node: str | None = None,
                 manage_servo: bool = True):
        """``servo_node``: Servo's node name (default: the namespace of ``topics.servo``).

        ``manage_servo=False``: :meth:`activate` leaves Servo alone (the sim's stand-in, which
        offers no services, or a Servo that someone else starts).
        """
        self.manage_servo = manage_servo
        self.frame_id = robot.base_frame
        self.topic = robot.servo_topic
        self.servo_node = servo_node or servo_namespace(robot.servo_topic)
        self._node = node
        self._pub = node.create_publisher(TwistStamped, robot.servo_topic, COMMAND_QOS)
        self._entities: list = []        # timer, clients, subscription made by activate()
        self._reset()

    # ------------------------------------------------------------------ streaming

    def send(self, command) -> None:
        """Publish ``command.arm`` as [vx, vy, vz, wx, wy, wz] (zeros when holding)."""
        self._publish(command.arm if command.kind == "track" else np.zeros(6))

    def stop(self) -> None:
        """A zero twist."""
        self._publish(np.zeros(6))

    def _publish(self, twist) -> None:
        if self._pub is None:
            return
        msg = TwistStamped()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z,
         msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = map(float, twist)
        self._pub.publish(msg)

    # ------------------------------------------------------------------ lifecycle

    def activate(self) -> None:
        """Start (humble) or switch Servo to TWIST (jazzy+), read its units, follow its status.

        Returns at once; a timer looks for the Servo node every :attr:`retry_period` until
        all three are done (it may start after us). Progress goes to the log and
        :meth:`diagnostics`.
        """
        self.deactivate()
        self._reset()
        if not self.manage_servo:
            self.command_state, self.command_detail = "unmanaged", "manage_servo is off"
            return
        self._active_since = time.monotonic()
        self._timer = self._keep(self._node.create_timer(self.retry_period, self._connect))
        self._connect()

    def deactivate(self) -> None:
        """Stop looking for Servo and following its status (the twist publisher stays)."""
        for entity in self._entities:
            self._destroy(entity)
        self._entities.clear()
        self._timer = None

    def close(self) -> None:
        """Release everything this backend made on the node (idempotent)."""
        self.deactivate()
        if self._pub is not None:
            self._destroy(self._pub)
            self._pub = None

    @property
    def halted(self) -> str | None:
        """Why Servo halted, from its newest status message; None while it is not halting."""
        return self._halted

    @property
    def ready(self) -> bool:
        """True once Servo accepted the command type (jazzy+) or started (humble)."""
        return self.command_state == "set"

    def diagnostics(self) -> dict[str, str]:
        """Key/values for the executor's diagnostics."""
        age = ("never" if self._status_time is None
               else f"{time.monotonic() - self._status_time:.1f} s ago")
        return {
            "servo.node": self.servo_node,
            "servo.flavour": self.flavour or "unknown (Servo node not seen)",
            "servo.command_type": f"{self.command_state}: {self.command_detail}",
            "servo.command_in_type": self.command_in_type or "unknown",
            "servo.status": f"{self.status or 'none'} ({age})",
            "servo.halted": self._halted or "no",
            "servo.halts": str(self.halts),
        }

    # ------------------------------------------------------------------ internals

    def _reset(self) -> None:
        self.flavour: str | None = None          # "jazzy+" or "humble", from the services
        self.command_state = "waiting"   # waiting | calling | set | refused | failed | unmanaged
        self.command_detail = "Servo node not found yet"
        self.command_in_type: str | None = None
        self.status: str | None = None           # newest status name
        self.status_message = ""
        self.halts = 0                           # status messages that were halts
        self._halted: str | None = None
        self._status_time: float | None = None
        self._status_type: str | None = None
        self._status_state = "waiting"           # waiting | subscribed | failed
        self._params_state = "waiting"           # waiting | calling | done
        self._status_topic: str | None = None
        self._timer = None
        self._active_since = time.monotonic()
        self._warned_at: float | None = None

    def _keep(self, entity):
        self._entities.append(entity)
        return entity

    def _destroy(self, entity) -> None:
        node = self._node
        for kind in ("timer", "client", "subscription", "publisher"):
            if entity in getattr(node, f"{kind}s", ()):
                getattr(node, f"destroy_{kind}")(entity)
                return

    def _log(self):
        return self._node.get_logger()

    def _connect(self) -> None:
        """One look at the graph: call what is offered, subscribe to what is published."""
        services = dict(self._node.get_service_names_and_types())
        if self.command_state == "waiting":
            self._set_command_type(services)
        if self._params_state == "waiting" and f"{self.servo_node}/get_parameters" in services:
            self._read_parameters()
        if self._status_state == "waiting" and self._params_state == "done":
            self._subscribe_status()
        done = (self.command_state in ("set", "refused", "failed")
                and self._params_state == "done" and self._status_state != "waiting")
        if done and self._timer is not None:
            self._destroy(self._timer)
            self._entities.remove(self._timer)
            self._timer = None
        elif self.flavour is None:
            self._warn_waiting()

    def _warn_waiting(self) -> None:
        now = time.monotonic()
        if now - self._active_since < self.warn_after:
            return
        if self._warned_at is not None and now - self._warned_at < 30.0:
            return
        self._warned_at = now
        self._log().warning(
            f"MoveIt Servo not found: no {self.servo_node}/switch_command_type (jazzy+) or "
            f"{self.servo_node}/start_servo (humble) service yet. A real Servo drops our twists "
            f"until one is called (still looking). The sim's Servo stand-in needs neither.")

    def _set_command_type(self, services: dict) -> None:
        switch = f"{self.servo_node}/switch_command_type"
        start = f"{self.servo_node}/start_servo"
        if switch in services:       # jazzy, kilted, main
            self.flavour = "jazzy+"
            try:
                from moveit_msgs.srv import ServoCommandType
            except ImportError as exc:
                self._command_failed(
                    f"moveit_msgs is not importable ({exc}): the Servo node offers {switch} "
                    "(moveit_msgs/srv/ServoCommandType) but this process cannot call it, so "
                    "Servo's command type could not be set and Servo drops every twist. Install "
                    "ros-$ROS_DISTRO-moveit-msgs, or set it by hand: ros2 service call "
                    f"{switch} moveit_msgs/srv/ServoCommandType \"{{command_type: {TWIST}}}\"")
                return
            client = self._keep(self._node.create_client(ServoCommandType, switch))
            request = ServoCommandType.Request(command_type=TWIST)
            what = f"{switch} {{command_type: TWIST ({TWIST})}}"
        elif start in services:      # humble
            self.flavour = "humble"
            from std_srvs.srv import Trigger

            client = self._keep(self._node.create_client(Trigger, start))
            request, what = Trigger.Request(), start
        else:
            return
        self.command_state, self.command_detail = "calling", what
        client.call_async(request).add_done_callback(
            lambda future: self._command_done(future, what))

    def _command_done(self, future, what: str) -> None:
        try:
            response = future.result()
        except Exception as exc:  # the service went away, the context shut down
            self._command_failed(f"{what} failed: {exc}")
            return
        if response is None:
            self._command_failed(f"{what}: no response")
        elif response.success:
            self.command_state, self.command_detail = "set", f"{what}: success"
            self._log().info(f"MoveIt Servo ({self.flavour}) accepts twists: {what} succeeded")
        else:
            message = getattr(response, "message", "")
            self.command_state = "refused"
            self.command_detail = f"{what} refused{': ' + message if message else ''}"
            self._log().error(f"MoveIt Servo refused {what}{': ' + message if message else ''}"
                              ": Servo's command type could not be set, it drops our twists")

    def _command_failed(self, why: str) -> None:
        self.command_state, self.command_detail = "failed", why
        self._log().error(f"Servo's command type could not be set: {why}")

    def _read_parameters(self) -> None:
        from rcl_interfaces.srv import GetParameters

        client = self._keep(self._node.create_client(
            GetParameters, f"{self.servo_node}/get_parameters"))
        self._params_state = "calling"
        client.call_async(GetParameters.Request(names=list(SERVO_PARAMETERS))) \
            .add_done_callback(self._parameters_done)

    def _parameters_done(self, future) -> None:
        from rclpy.parameter import parameter_value_to_python

        self._params_state = "done"
        try:
            values = future.result().values
        except Exception as exc:
            self._log().warning(f"could not read {self.servo_node}'s parameters ({exc}): "
                                "check moveit_servo.command_in_type is speed_units yourself")
            return
        params = {}
        for name, value in zip(SERVO_PARAMETERS, values):
            try:
                params[name] = parameter_value_to_python(value)
            except Exception:  # PARAMETER_NOT_SET
                params[name] = None
        self._check_parameters(params)

    def _check_parameters(self, params: dict) -> None:
        log = self._log()
        unit = params.get("moveit_servo.command_in_type")
        linear = params.get("moveit_servo.scale.linear")
        rotational = params.get("moveit_servo.scale.rotational")
        self.command_in_type = unit
        if unit == "speed_units":
            log.info(f"MoveIt Servo takes speed_units (m/s, rad/s); it caps linear speed at "
                     f"scale.linear={linear} m/s and angular at scale.rotational={rotational} "
                     "rad/s (jazzy+)")
        elif unit is None:
            log.warning(f"{self.servo_node} has no moveit_servo.command_in_type parameter: "
                        "make sure Servo runs with command_in_type: speed_units")
        else:
            log.error(
                f"MoveIt Servo's command_in_type is {unit!r}, not 'speed_units': it multiplies "
                f"our m/s by scale.linear ({linear}) and rad/s by scale.rotational ({rotational}) "
                "(and humble drops twists with a component above 1). Set "
                "moveit_servo.command_in_type: speed_units in the Servo parameters")
        listened = params.get("moveit_servo.cartesian_command_in_topic")
        if listened:
            resolved = self._resolve(listened)
            if resolved != self.topic:
                log.error(f"MoveIt Servo listens for twists on {resolved}, but topics.servo is "
                          f"{self.topic}: set one to the other")
        topic = params.get("moveit_servo.status_topic")
        self._status_topic = self._resolve(topic) if topic else None

    def _resolve(self, name: str) -> str:
        if name.startswith("~/"):
            return f"{self.servo_node}/{name[2:]}"
        if not name.startswith("/"):  # relative: in the Servo node's namespace
            return f"{self.servo_node.rsplit('/', 1)[0]}/{name}"
        return name

    def _subscribe_status(self) -> None:
        topic = self._status_topic or f"{self.servo_node}/status"
        types = dict(self._node.get_topic_names_and_types()).get(topic, [])
        if INT8_TYPE in types:
            from std_msgs.msg import Int8 as message_class
            self._status_type = INT8_TYPE
        elif SERVO_STATUS_TYPE in types:
            try:
                from moveit_msgs.msg import ServoStatus as message_class
            except ImportError as exc:
                self._status_state = "failed"
                self.status = "unreadable"
                self._log().error(
                    f"Servo's status on {topic} (moveit_msgs/msg/ServoStatus) cannot be read: "
                    f"moveit_msgs is not importable ({exc}); Servo halts will not be reported")
                return
            self._status_type = SERVO_STATUS_TYPE
        else:
            return  # not published yet
        # Servo publishes with rclcpp::SystemDefaultsQoS (reliable, volatile)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._keep(self._node.create_subscription(message_class, topic, self._on_status, qos))
        self._status_state = "subscribed"
        self._log().info(f"following MoveIt Servo's status on {topic} ({self._status_type})")

    def _on_status(self, msg) -> None:
        code = int(msg.code if self._status_type == SERVO_STATUS_TYPE else msg.data)
        message = getattr(msg, "message", "")
        name = status_name(code, self._status_type)
        reason = halt_reason(code, self._status_type, message)
        if reason is not None and reason != self._halted:
            self._log().error(f"MoveIt Servo halted: {reason}")
        elif reason is None and self._halted is not None:
            self._log().info(f"MoveIt Servo no longer halting ({name})")
        if reason is not None:
            self.halts += 1
        self.status, self.status_message = name, message
        self._halted, self._status_time = reason, time.monotonic()
