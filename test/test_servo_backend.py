"""ServoBackend against stand-ins of MoveIt Servo that follow moveit2's sources.

MoveIt Servo is not installable here (ENVIRONMENT.md). The stand-ins offer what the real
servo_node offers, by branch (github.com/moveit/moveit2, moveit_ros/moveit_servo):
- humble, src/servo_node.cpp: ~/start_servo (std_srvs/Trigger); src/servo_calcs.cpp:
  std_msgs/Int8 on ~/status, codes of include/moveit_servo/status_codes.h; parameters
  moveit_servo.* (src/servo_parameters.cpp).
- jazzy / main, src/servo_node.cpp: ~/switch_command_type (moveit_msgs/srv/ServoCommandType)
  and moveit_msgs/msg/ServoStatus on ~/status, codes of include/moveit_servo/utils/datatypes.hpp.
The humble stand-in is a real rclpy node over DDS. moveit_msgs is not installable either, so
the jazzy path runs twice: over DDS with no moveit_msgs (the log must say the command type
could not be set), and on a recording node with a fake moveit_msgs module whose request,
response and status fields are those of moveit_msgs (ros2 branch, srv/ServoCommandType.srv,
msg/ServoStatus.msg).
"""

import sys
import types
from types import SimpleNamespace

import pytest
from conftest import spin_until, wait_matched

from roboalign_ros.nodes import servo_backend
from roboalign_ros.nodes.servo_backend import (
    HUMBLE_STATUS_CODES,
    INT8_TYPE,
    JAZZY_STATUS_CODES,
    SERVO_STATUS_TYPE,
    ServoBackend,
    halt_reason,
    servo_namespace,
)

ROBOT = SimpleNamespace(base_frame="base_link", servo_topic="/servo_node/delta_twist_cmds")


class Log:
    """Records what the backend logs (rclpy's logger writes to the process's stderr)."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda text, **_: self.lines.append((level, text))

    def text(self, level=None):
        return "\n".join(t for lv, t in self.lines if level in (None, lv))


# ---------------------------------------------------------------- pure tables

def test_status_tables_follow_each_branch():
    # humble status_codes.h vs jazzy datatypes.hpp: 3..6 were renumbered
    assert HUMBLE_STATUS_CODES[4] == "HALT_FOR_COLLISION" == JAZZY_STATUS_CODES[5]
    assert HUMBLE_STATUS_CODES[5] == "JOINT_BOUND" == JAZZY_STATUS_CODES[6]
    assert HUMBLE_STATUS_CODES[3] == "DECELERATE_FOR_COLLISION" == JAZZY_STATUS_CODES[4]
    assert halt_reason(4, INT8_TYPE).startswith("collision")
    assert halt_reason(4, SERVO_STATUS_TYPE) is None          # jazzy 4: decelerating
    assert halt_reason(6, SERVO_STATUS_TYPE, "J3 at bound").startswith("joint bound: J3")
    assert halt_reason(6, INT8_TYPE) is None                  # humble 6: leaving singularity
    assert halt_reason(2, INT8_TYPE).startswith("singularity")
    assert halt_reason(-1, SERVO_STATUS_TYPE).startswith("invalid command")
    for code in (0, 1):
        assert halt_reason(code, INT8_TYPE) is None and halt_reason(code, SERVO_STATUS_TYPE) is None
    assert servo_namespace("/servo_node/delta_twist_cmds") == "/servo_node"
    assert servo_namespace("/arm/servo_node/delta_twist_cmds") == "/arm/servo_node"
    with pytest.raises(ValueError, match="topics.servo"):
        servo_namespace("delta_twist_cmds")


# ---------------------------------------------------------------- humble stand-in over DDS

@pytest.fixture
def dds(rclpy_context):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    node = Node("servo_backend_probe", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    made = [node]
    yield SimpleNamespace(node=node, executor=executor, context=rclpy_context, made=made)
    executor.shutdown()
    for n in made:
        n.destroy_node()


def humble_servo(dds, command_in_type="speed_units", name="servo_node"):
    """servo_node as humble builds it: ~/start_servo, Int8 ~/status, moveit_servo.* params."""
    from rclpy.node import Node
    from std_msgs.msg import Int8
    from std_srvs.srv import Trigger

    node = Node(name, context=dds.context)
    node.starts = 0

    def start(request, response):  # ServoNode::startCB
        node.starts += 1
        response.success = True
        return response

    for param, value in (("command_in_type", command_in_type), ("scale.linear", 0.4),
                         ("scale.rotational", 0.8), ("status_topic", "~/status"),
                         ("cartesian_command_in_topic", "~/delta_twist_cmds")):
        node.declare_parameter(f"moveit_servo.{param}", value)
    node.create_service(Trigger, "~/start_servo", start)
    node.status = node.create_publisher(Int8, "~/status", 10)
    dds.executor.add_node(node)
    dds.made.append(node)
    return node


def test_humble_servo_is_started_its_units_checked_and_its_halts_reported(dds, monkeypatch):
    from std_msgs.msg import Int8

    backend = ServoBackend(dds.node, ROBOT)
    log = Log()
    monkeypatch.setattr(backend, "_log", lambda: log)
    backend.retry_period = 0.1
    backend.activate()                       # before Servo is up: it keeps looking
    assert backend.command_state == "waiting" and not backend.ready
    servo = humble_servo(dds)
    assert spin_until(dds.executor, lambda: backend.ready and backend._status_state ==
                      "subscribed", 20.0), backend.diagnostics()
    assert servo.starts == 1 and backend.flavour == "humble"
    assert backend.command_in_type == "speed_units"
    assert "caps linear speed at scale.linear=0.4" in log.text("info")
    assert backend._timer is None            # all done: no more looking
    wait_matched(dds.executor, servo.status)  # each status code below is sent once

    def status(code):
        servo.status.publish(Int8(data=code))
        return spin_until(dds.executor, lambda: backend._status_time is not None and
                          backend.status == HUMBLE_STATUS_CODES[code], 5.0)

    assert status(5) and backend.halted.startswith("joint bound: Close to a joint bound")
    assert "Servo halted: joint bound" in log.text("error")
    assert status(0) and backend.halted is None
    assert status(3) and backend.halted is None     # humble 3: decelerating for collision
    assert status(4) and backend.halted.startswith("collision")
    assert backend.halts == 2
    assert backend.diagnostics()["servo.halted"].startswith("collision")

    backend.deactivate()                     # subscription and clients go, publisher stays
    assert not [s for s in dds.node.subscriptions] and not list(dds.node.clients)
    assert len(list(dds.node.publishers)) >= 1
    backend.close()
    backend.stop()                           # after close: nothing to publish, no error


def test_unitless_servo_is_an_error_naming_the_parameter(dds, monkeypatch):
    humble_servo(dds, command_in_type="unitless")
    backend = ServoBackend(dds.node, ROBOT)
    log = Log()
    monkeypatch.setattr(backend, "_log", lambda: log)
    backend.retry_period = 0.1
    backend.activate()
    assert spin_until(dds.executor, lambda: backend.command_in_type is not None, 20.0)
    assert backend.command_in_type == "unitless"
    assert "moveit_servo.command_in_type: speed_units" in log.text("error")
    assert "scale.linear (0.4)" in log.text("error")


def test_jazzy_servo_without_moveit_msgs_says_the_command_type_could_not_be_set(dds,
                                                                                monkeypatch):
    """The stand-in offers ~/switch_command_type by name (its type cannot exist here)."""
    from rclpy.node import Node
    from std_srvs.srv import Trigger

    monkeypatch.setitem(sys.modules, "moveit_msgs", None)   # import fails as where absent
    servo = Node("servo_node", context=dds.context)
    servo.create_service(Trigger, "~/switch_command_type", lambda rq, rs: rs)
    dds.executor.add_node(servo)
    dds.made.append(servo)
    backend = ServoBackend(dds.node, ROBOT)
    log = Log()
    monkeypatch.setattr(backend, "_log", lambda: log)
    backend.retry_period = 0.1
    backend.activate()
    assert spin_until(dds.executor, lambda: backend.command_state == "failed", 20.0)
    text = log.text("error")
    assert "Servo's command type could not be set" in text and "moveit_msgs" in text
    assert "ros2 service call /servo_node/switch_command_type" in text
    assert backend.flavour == "jazzy+" and not backend.ready


def test_no_servo_node_warns_after_a_while_and_keeps_looking(dds, monkeypatch):
    backend = ServoBackend(dds.node, ROBOT)
    log = Log()
    monkeypatch.setattr(backend, "_log", lambda: log)
    backend.retry_period, backend.warn_after = 0.05, 0.2
    backend.activate()
    assert spin_until(dds.executor, lambda: "MoveIt Servo not found" in log.text("warning"), 5.0)
    assert backend._timer is not None and backend.command_state == "waiting"
    backend.deactivate()
    assert not list(dds.node.timers)
    quiet = ServoBackend(dds.node, ROBOT, manage_servo=False)   # the sim's stand-in
    quiet.activate()
    assert quiet.command_state == "unmanaged" and not list(dds.node.timers)


# ---------------------------------------------------------------- jazzy, fake moveit_msgs

class Future:
    def __init__(self, result):
        self._result = result

    def result(self):
        return self._result

    def add_done_callback(self, callback):
        callback(self)


class RecordingNode:
    """What ServoBackend uses of an rclpy node, recorded; the graph is set by the test."""

    def __init__(self, services, topics, responses):
        self.services, self.topics, self.responses = services, topics, responses
        self.timers, self.clients, self.subscriptions, self.publishers = [], [], [], []
        self.requests, self.log = [], Log()

    def get_logger(self):
        return self.log

    def get_clock(self):
        from rclpy.clock import Clock

        return Clock()

    def get_service_names_and_types(self):
        return list(self.services.items())

    def get_topic_names_and_types(self):
        return list(self.topics.items())

    def create_publisher(self, msg_type, topic, qos):
        pub = SimpleNamespace(topic=topic, sent=[], publish=None)
        pub.publish = pub.sent.append
        self.publishers.append(pub)
        return pub

    def create_timer(self, period, callback):
        timer = SimpleNamespace(period=period, callback=callback)
        self.timers.append(timer)
        return timer

    def create_client(self, srv_type, name):
        def call_async(request):
            self.requests.append((name, request))
            return Future(self.responses[name](request))

        client = SimpleNamespace(srv_type=srv_type, name=name, call_async=call_async)
        self.clients.append(client)
        return client

    def create_subscription(self, msg_type, topic, callback, qos):
        sub = SimpleNamespace(msg_type=msg_type, topic=topic, callback=callback)
        self.subscriptions.append(sub)
        return sub

    def __getattr__(self, name):
        if name.startswith("destroy_"):
            kind = name[len("destroy_"):] + "s"
            return lambda entity: getattr(self, kind).remove(entity)
        raise AttributeError(name)


def fake_moveit_msgs(monkeypatch):
    """moveit_msgs as its ros2 branch defines them (srv/ServoCommandType, msg/ServoStatus)."""

    class ServoCommandType:
        class Request:
            JOINT_JOG, TWIST, POSE = 0, 1, 2

            def __init__(self, command_type=0):
                self.command_type = command_type

        class Response:
            def __init__(self, success=False):
                self.success = success

    class ServoStatus:
        def __init__(self, code=0, message=""):
            self.code, self.message = code, message

    package = types.ModuleType("moveit_msgs")
    srv, msg = types.ModuleType("moveit_msgs.srv"), types.ModuleType("moveit_msgs.msg")
    srv.ServoCommandType, msg.ServoStatus = ServoCommandType, ServoStatus
    package.srv, package.msg = srv, msg
    for name, module in (("moveit_msgs", package), ("moveit_msgs.srv", srv),
                         ("moveit_msgs.msg", msg)):
        monkeypatch.setitem(sys.modules, name, module)
    return ServoCommandType, ServoStatus


def parameter_values(values):
    from rcl_interfaces.msg import ParameterType, ParameterValue

    out = []
    for v in values:
        if isinstance(v, str):
            out.append(ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=v))
        else:
            out.append(ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=v))
    return SimpleNamespace(values=out)


@pytest.mark.parametrize("accepted", [True, False])
def test_jazzy_servo_is_switched_to_twist_and_its_status_read(monkeypatch, accepted):
    ServoCommandType, ServoStatus = fake_moveit_msgs(monkeypatch)
    node = RecordingNode(
        services={"/servo_node/switch_command_type": ["moveit_msgs/srv/ServoCommandType"],
                  "/servo_node/pause_servo": ["std_srvs/srv/SetBool"],
                  "/servo_node/get_parameters": ["rcl_interfaces/srv/GetParameters"]},
        topics={"/servo_node/status": [SERVO_STATUS_TYPE]},
        responses={
            "/servo_node/switch_command_type": lambda rq: ServoCommandType.Response(
                success=accepted and rq.command_type == 1),
            "/servo_node/get_parameters": lambda rq: parameter_values(
                ["speed_units", 0.4, 0.8, "~/status", "~/delta_twist_cmds"]),
        })
    backend = ServoBackend(node, ROBOT)
    backend.activate()
    (name, request), _ = node.requests
    assert name == "/servo_node/switch_command_type" and request.command_type == 1
    assert backend.flavour == "jazzy+" and backend.ready is accepted
    if not accepted:
        assert "refused" in backend.command_detail
        assert "Servo's command type could not be set" in node.log.text("error")
    (sub,) = node.subscriptions
    assert sub.topic == "/servo_node/status" and sub.msg_type is ServoStatus
    assert node.timers == []                       # nothing left to look for
    sub.callback(ServoStatus(code=6, message="Joint 3 is close to a bound"))
    assert backend.halted.startswith("joint bound: Joint 3 is close to a bound")
    sub.callback(ServoStatus(code=4, message="Close to a collision, decelerating"))
    assert backend.halted is None and backend.status == "DECELERATE_FOR_COLLISION"
    sub.callback(ServoStatus(code=-1, message="Invalid twist command."))
    assert backend.halted.startswith("invalid command")
    backend.close()
    assert node.subscriptions == node.clients == node.publishers == []


def test_servo_listening_elsewhere_is_an_error(monkeypatch):
    fake_moveit_msgs(monkeypatch)
    node = RecordingNode(
        services={"/servo_node/get_parameters": ["rcl_interfaces/srv/GetParameters"]},
        topics={"/state": [INT8_TYPE]},
        responses={"/servo_node/get_parameters": lambda rq: parameter_values(
            ["speed_units", 0.3, 0.6, "state", "/other/twist"])})
    backend = ServoBackend(node, ROBOT)
    backend.activate()
    assert "listens for twists on /other/twist" in node.log.text("error")
    (sub,) = node.subscriptions     # status_topic "state": relative to Servo's namespace, /
    assert sub.topic == "/state"
    assert backend._status_type == INT8_TYPE


def test_module_names_the_upstream_sources():
    doc = servo_backend.__doc__
    for source in ("ServoNode::switchCommandType", "ServoNode::startCB", "status_codes.h",
                   "utils/datatypes.hpp", "scaleCartesianCommand"):
        assert source in doc
