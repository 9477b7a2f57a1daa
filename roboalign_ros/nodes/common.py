"""Small rclpy helpers shared by the nodes: parameters, clocks, QoS, diagnostics, main()."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from roboalign_ros.parameters import Parameter, ParameterSpec, load_spec

# Subscribers of camera / joint-state streams take the newest sample and accept both reliable
# and best-effort publishers (realsense2_camera and ros2_control publish reliable).
SENSOR_QOS = qos_profile_sensor_data
# Publishers of large images keep few samples so a slow subscriber never backs up memory.
IMAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST)
# Commands are reliable with a short queue: an old command is worse than none.
COMMAND_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
# The e-stop's second subscription: matches best-effort publishers (reliable ones match both).
ESTOP_BEST_EFFORT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
# Latched publishers (instruction): late joiners that ask for it get the last value.
# Subscribers use COMMAND_QOS (volatile) instead: a transient-local subscriber would not match
# a plain `ros2 topic pub` publisher, and an e-stop must be heard from any publisher.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

def sensor_qos_for(reliability: str, depth: int) -> QoSProfile:
    """QoS of a sensor subscription: reliable (default) or best effort, keep last ``depth``.

    Reliable because large images over best effort lose fragments (measured here: 3 of 30
    640x480 frames/s arrive between two local processes; all 30 when reliable). The queue is
    deep enough to ride out a short stall of the callback thread without losing samples.
    """
    if reliability not in ("reliable", "best_effort"):
        raise ValueError(f"sensor_reliability: {reliability!r} is not 'reliable' or "
                         "'best_effort'")
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" \
        else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, reliability=policy)


OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def declare_parameters(node: Node, spec: ParameterSpec | str,
                       check: bool = True) -> dict[str, object]:
    """Declare every parameter of ``spec`` and return their values, checked against it.

    ``spec``: the node's (``config/parameters/<node>.yaml``) or its name. Each is declared
    with its type, description, rules and read-only flag, so ``ros2 param describe`` shows
    them; a value set later (``ros2 param set``) that breaks its rule is refused with the
    reason. A bad value given at start raises ValueError naming it; with ``check`` false it
    is returned as given (a lifecycle node checks at configure, with :func:`parameter_values`,
    so the transition fails naming it and the node stays up to be set right).
    """
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.parameter import Parameter as RosParameter

    spec = load_spec(spec) if isinstance(spec, str) else spec
    for p in spec:
        if p.default == []:  # ROS cannot type an empty list: declare the type, no value
            kind = getattr(RosParameter.Type, p.type.upper())
            node.declare_parameter(p.name, kind, _descriptor(p))
        else:
            node.declare_parameter(p.name, p.default, _descriptor(p))

    def refuse_bad(parameters) -> SetParametersResult:
        for param in parameters:
            if param.name in spec:
                try:
                    spec.check(param.name, _value(param.value, spec[param.name]))
                except ValueError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(refuse_bad)
    return parameter_values(node, spec, check)


def _descriptor(p: Parameter) -> ParameterDescriptor:
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange

    descriptor = ParameterDescriptor(description=p.description, read_only=p.read_only,
                                     additional_constraints=p.rules())
    bounds = p.validation.get("bounds<>")
    if bounds is not None and p.type == "double":
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(bounds[0]),
                                                              to_value=float(bounds[1]))]
    elif bounds is not None and p.type == "int":
        descriptor.integer_range = [IntegerRange(from_value=int(bounds[0]),
                                                 to_value=int(bounds[1]), step=1)]
    return descriptor


def _value(value, p: Parameter):
    # rclpy gives arrays as array.array / lists; an empty array may come back as None
    return list(value or []) if p.type.endswith("_array") else value


def parameter_values(node: Node, spec: ParameterSpec | str,
                     check: bool = True) -> dict[str, object]:
    """The current values of ``spec``'s parameters, checked (ValueError names a bad one).

    What a lifecycle node reads when it configures, so that ``ros2 param set`` before
    ``configure`` takes effect.
    """
    from rclpy.exceptions import ParameterUninitializedException

    spec = load_spec(spec) if isinstance(spec, str) else spec
    values = {}
    for p in spec:
        try:
            values[p.name] = _value(node.get_parameter(p.name).value, p)
        except ParameterUninitializedException:  # a typed empty list nobody has set
            values[p.name] = []
    return spec.validate(values) if check else values


def lifecycle_state(node: Node) -> str:
    """A lifecycle node's current state label: unconfigured, inactive, active, configuring, ...

    (rclpy has no public getter; the ``get_state`` service reads the same state machine.)
    """
    return node._state_machine.current_state[1]


def autostart(node: Node) -> None:
    """Configure, then activate, ``node`` as soon as it spins (the ``autostart`` parameter).

    ``ros2 run`` and the apps get a working node; a launch file drives the transitions instead.
    A configure that fails (the node has said why) ends the process with exit code 1, as a
    node that cannot start did before it was managed: the programs that start nodes see it at
    once. Driven by a lifecycle manager (``autostart: false``), it stays up unconfigured.
    """
    from rclpy.lifecycle import TransitionCallbackReturn

    def start():
        timer.cancel()
        node.destroy_timer(timer)
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        else:
            node.get_logger().fatal("autostart: configure failed (see above); exiting. With "
                                    "autostart:=false the node stays up, unconfigured.")
            node.finished, node.exit_code = True, 1

    timer = node.create_timer(0.0, start)


_ENTITY_KINDS = ("timers", "subscriptions", "services", "clients", "publishers")


class Entities:
    """What a node creates from now on (a lifecycle node's configure), destroyed together.

    Its cleanup, or a configure that failed half way: publishers, subscriptions, services,
    clients and timers, including those that helpers (backends) create on the node.
    """

    def __init__(self, node: Node):
        self._node = node
        self._before = {kind: set(getattr(node, kind)) for kind in _ENTITY_KINDS}

    def destroy(self) -> None:
        """Destroy everything created since this object was made."""
        from rclpy.lifecycle import LifecyclePublisher

        node = self._node
        for kind in _ENTITY_KINDS:
            for entity in [e for e in getattr(node, kind) if e not in self._before[kind]]:
                if isinstance(entity, LifecyclePublisher):
                    node.destroy_lifecycle_publisher(entity)
                else:
                    getattr(node, f"destroy_{kind[:-1]}")(entity)


def now_seconds(node: Node) -> float:
    """The node's clock (ROS time) in float seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


class Diagnostics:
    """Publishes one DiagnosticStatus per call on /diagnostics (hardware_id = node name)."""

    def __init__(self, node: Node, name: str):
        self._node, self._name = node, name
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish(self, level: int, message: str, values: Mapping[str, object]) -> None:
        """Publish ``values`` (stringified) with a level and a one-line message."""
        status = DiagnosticStatus(level=level, name=self._name, message=message,
                                  hardware_id=self._node.get_name())
        status.values = [KeyValue(key=k, value=f"{v:.4g}" if isinstance(v, float) else str(v))
                         for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(array)


def run_node(factory: Callable[[], Node], args=None) -> int:
    """Init rclpy, spin the node until Ctrl-C / shutdown, clean up; return an exit code.

    A node may end itself by setting ``finished`` (and ``exit_code``); its ``close()`` runs
    before the context goes down. A node that cannot start prints why and returns 1.

    Single-threaded on purpose: the nodes' callbacks are short and their loops run in their own
    threads, while rclpy's MultiThreadedExecutor with the default (mutually exclusive) callback
    group busy-waits and starves those threads (seen: 20 instead of 100 commands/s).
    """
    import signal

    from rclpy.executors import (
        ExternalShutdownException,
        SingleThreadedExecutor,
    )
    from rclpy.signals import SignalHandlerOptions

    # Keep the context valid until close() has run (so a node can still send its last "hold"):
    # SIGINT/SIGTERM raise KeyboardInterrupt in the main thread instead of rclpy shutting the
    # context down under the node's worker threads.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    node = None
    try:
        node = factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not getattr(node, "finished", False):
            executor.spin_once(timeout_sec=0.1)  # short waits: the signal handlers get to run
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # a node that cannot start says why and exits non-zero
        name = node.get_name() if node is not None else getattr(factory, "__name__", "node")
        print(f"[{name}] fatal: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C (ros2 launch: the terminal's process group, then launch's forward)
        # must not interrupt close(); SIG_IGN also survives interpreter finalization, where
        # Python restores SIG_DFL for its own handlers (seen: exit code -2, no traceback).
        # SIGTERM stays: launch's escalation still ends a node that hangs.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return int(getattr(node, "exit_code", 0) or 0) if node is not None else 1
