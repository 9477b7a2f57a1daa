"""The real ros2_control for sim_arm: controller_manager + JTC + mock hardware, in a process.

For the real-controller test tier and ``scripts/bench_real_controllers.py``: the controllers a
roboticist's arm runs (``joint_trajectory_controller``, ``joint_state_broadcaster``,
``forward_command_controller``) from a real ros2_control installation, with
``mock_components/GenericSystem`` as the hardware, our URDF (``urdf/sim_arm.urdf.xacro``,
``hardware:=mock``) and our ``config/sim_arm_controllers.yaml``. The project builds none of it;
:func:`find_ros2_control` finds an installation:

1. a sourced ROS 2 that has it (``ros2_control_node`` under an ``AMENT_PREFIX_PATH`` entry), or
2. the prebuilt Kilted tree (``$ROBOALIGN_ROS2_CONTROL``, default
   ``../shared/vendor/ros2_control_kilted`` beside the repository), sourced with its ``env.sh``.

Two hardware variants: ``exact`` (position commands; the state equals the command, the mild
case) and ``lagging`` (velocity commands through the JTC's PID, ``calculate_dynamics``
integrating them: the state trails the command as on a real arm). The arm runs
``arm_controller`` (the JTC) or, instead, ``forward_position_controller`` (exact only: a
JointGroupPositionController, or where position_controllers is not installed, as in the
prebuilt tree, the same thing built as upstream builds it: a ForwardCommandController with
``interface_name: position``).

The rig process must have the installation's Python path (``controller_manager_msgs``) to
drive the controller_manager services: run under ``make test-controllers`` or after sourcing
the installation.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

POSITION_CONTROLLER = "forward_position_controller"   # config/sim_arm_controllers.yaml
# PID on velocity commands (lagging variant): position error -> velocity, plus feed-forward
LAGGING_GAINS = {"p": 5.0, "i": 0.0, "d": 0.0, "ff_velocity_scale": 1.0}


@dataclass(frozen=True)
class Ros2Control:
    """A ros2_control installation: ``setup`` is a shell snippet that puts it in the env."""

    where: str
    setup: str

    def environment(self) -> dict[str, str]:
        """This process's environment with the installation sourced on top."""
        out = subprocess.run(["bash", "-c", f"{self.setup} >/dev/null && env -0"],
                             capture_output=True, check=True, env=os.environ.copy())
        pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
        return dict(pairs)

    def has_package(self, name: str) -> bool:
        """Whether the installation has the ROS package ``name``."""
        prefixes = self.environment().get("AMENT_PREFIX_PATH", "").split(":")
        return any((Path(p) / "share" / name / "package.xml").exists() for p in prefixes if p)


def find_ros2_control() -> Ros2Control | None:
    """The ros2_control installation to test against, or None (say so loudly where used)."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(":")):
        if (Path(prefix) / "lib" / "controller_manager" / "ros2_control_node").exists():
            return Ros2Control(f"sourced ROS 2 ({prefix})", "true")
    root = Path(__file__).resolve().parents[2]
    vendor = Path(os.environ.get("ROBOALIGN_ROS2_CONTROL",
                                 root.parent / "shared" / "vendor" / "ros2_control_kilted"))
    if (vendor / "env.sh").exists():
        return Ros2Control(f"prebuilt Kilted tree ({vendor})",
                           f"source {shlex.quote(str(vendor / 'env.sh'))}")
    return None


def mock_urdf(variant: str = "exact") -> str:
    """sim_arm's URDF with mock hardware; ``lagging``: velocity commands, integrated."""
    from roboalign_ros.robot import expand_xacro, package_path

    urdf = expand_xacro(package_path("urdf", "sim_arm.urdf.xacro"), {"hardware": "mock"})
    if variant == "exact":
        return urdf
    if variant != "lagging":
        raise ValueError(f"variant: {variant!r} is not 'exact' or 'lagging'")
    root = ET.fromstring(urdf)
    for param in root.iter("param"):
        if param.get("name") == "calculate_dynamics":
            param.text = "true"
    for joint in root.find("ros2_control").iter("joint"):
        if joint.get("name", "").startswith("joint"):
            joint.find("command_interface").set("name", "velocity")
    return ET.tostring(root, encoding="unicode")


def controller_parameters(variant: str, out_dir: Path, arm: dict | None = None,
                          position_type: str | None = None) -> list[Path]:
    """Parameter files for ros2_control_node: ours, plus the overrides the rig needs.

    ``arm``: more arm_controller parameters (experiments with the JTC's options);
    ``position_type``: the type to load ``forward_position_controller`` as.
    """
    from roboalign_ros.robot import load_robot_config, package_path

    override = {"controller_manager": {"ros__parameters": {
        "thread_priority": 0, "lock_memory": False}}}  # shared machines: no SCHED_FIFO
    if variant == "lagging":
        joints = load_robot_config("sim_arm").arm_joints
        override["arm_controller"] = {"ros__parameters": {
            "command_interfaces": ["velocity"],
            "gains": {j: dict(LAGGING_GAINS) for j in joints}}}
    if arm:
        override.setdefault("arm_controller", {"ros__parameters": {}})
        override["arm_controller"]["ros__parameters"].update(arm)
    if position_type:
        override["controller_manager"]["ros__parameters"][POSITION_CONTROLLER] = {
            "type": position_type}
    import yaml

    path = out_dir / f"rig_{variant}.yaml"
    path.write_text(yaml.safe_dump(override))
    return [package_path("config", "sim_arm_controllers.yaml"), path]


class Ros2ControlRig:
    """ros2_control_node with sim_arm's mock hardware and controllers, all active.

    ``node``: an rclpy node of the caller (it publishes the URDF on ``/robot_description``,
    transient local, as robot_state_publisher would, and calls the controller_manager).
    ``arm_controller``: the arm's controller, ``arm_controller`` or :data:`POSITION_CONTROLLER`.
    """

    def __init__(self, node, install: Ros2Control, log_dir: str | os.PathLike,
                 variant: str = "exact", arm: dict | None = None,
                 arm_controller: str = "arm_controller"):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self.node, self.variant = node, variant
        self.controllers = ("joint_state_broadcaster", arm_controller, "gripper_controller")
        position_type = None
        if arm_controller == POSITION_CONTROLLER:
            if variant != "exact":
                raise ValueError(f"{POSITION_CONTROLLER} needs position command interfaces: "
                                 f"variant 'exact', not {variant!r}")
            # position_controllers/src/joint_group_position_controller.cpp: the class is
            # ForwardCommandController with interface_name "position"
            position_type = ("position_controllers/JointGroupPositionController"
                             if install.has_package("position_controllers")
                             else "forward_command_controller/ForwardCommandController")
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"ros2_control_node_{variant}.log"
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self._desc = node.create_publisher(String, "/robot_description", latched)
        self._desc.publish(String(data=mock_urdf(variant)))
        cmd = ["ros2_control_node", "--ros-args"]
        for f in controller_parameters(variant, log_dir, arm, position_type):
            cmd += ["--params-file", str(f)]
        env = install.environment()
        env.update(RCUTILS_COLORIZED_OUTPUT="0", RCUTILS_LOGGING_BUFFERED_STREAM="0")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        """The controller_manager's log so far."""
        return self.log_path.read_text(errors="replace")

    def activate(self, executor, timeout: float = 60.0) -> None:
        """Load, configure and activate the controllers through the controller_manager."""
        from controller_manager_msgs.srv import ConfigureController, LoadController

        for name in self.controllers:
            for srv, verb in ((LoadController, "load"), (ConfigureController, "configure")):
                result = self._call(executor, srv, f"/controller_manager/{verb}_controller",
                                    srv.Request(name=name), timeout)
                if not result.ok:
                    raise RuntimeError(f"{verb}_controller {name} failed:\n{self.log()[-2000:]}")
        self.switch(executor, self.controllers, timeout)

    def switch(self, executor, activate, timeout: float = 60.0) -> None:
        """Activate the loaded controllers ``activate`` (e.g. one its update deactivated)."""
        from controller_manager_msgs.srv import SwitchController

        request = SwitchController.Request(activate_controllers=list(activate),
                                           strictness=SwitchController.Request.STRICT,
                                           activate_asap=True)
        request.timeout.sec = 5
        if not self._call(executor, SwitchController, "/controller_manager/switch_controller",
                          request, timeout).ok:
            raise RuntimeError(f"switch_controller failed:\n{self.log()[-2000:]}")

    def _call(self, executor, srv, name, request, timeout):
        client = self.node.create_client(srv, name)
        try:
            deadline = time.monotonic() + timeout
            while not client.service_is_ready():
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{name} not available:\n{self.log()[-2000:]}")
                executor.spin_once(timeout_sec=0.05)
            future = client.call_async(request)
            while not future.done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} timed out:\n{self.log()[-2000:]}")
                executor.spin_once(timeout_sec=0.05)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def stop(self) -> None:
        """Stop ros2_control_node (SIGINT, then kill)."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.node.destroy_publisher(self._desc)


class Probe:
    """Drives executor_node and watches the controller.

    Sends chunks, e-stops and ``~/go_home``; records ``/joint_states`` and (real JTC) the
    reference on ``~/controller_state``.
    """

    def __init__(self, node, robot, controller_state: bool = True):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Float64MultiArray
        from std_srvs.srv import Trigger

        from roboalign_ros.msg import ActionChunk
        from roboalign_ros.nodes.common import COMMAND_QOS

        self.node, self.robot = node, robot
        self.states: list[tuple[float, object]] = []      # (stamp s, positions incl. gripper)
        self.reference: list[tuple[float, object, object]] = []  # (stamp s, q, qd)
        self.gripper_commands: list[float] = []
        self.chunk_pub = node.create_publisher(ActionChunk, "/roboalign/action_chunk",
                                               COMMAND_QOS)
        self.estop_pub = node.create_publisher(
            Bool, "/roboalign/estop", QoSProfile(depth=10,
                                                 reliability=ReliabilityPolicy.RELIABLE))
        self._Bool = Bool
        self.home_client = node.create_client(Trigger, "/executor_node/go_home")
        self._Trigger = Trigger
        names = list(robot.joint_names)

        def on_state(msg):  # by name: publishers order the joints as they like
            index = {n: i for i, n in enumerate(msg.name)}
            if not all(n in index for n in names):
                return
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self.states.append((stamp, [msg.position[index[n]] for n in names]))

        self.state_sub = node.create_subscription(JointState, "/joint_states", on_state, 100)
        node.create_subscription(Float64MultiArray, robot.gripper_topic,
                                 lambda m: self.gripper_commands.extend(m.data), 10)
        if controller_state:
            from control_msgs.msg import JointTrajectoryControllerState

            def on_reference(msg):
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                self.reference.append((stamp, list(msg.reference.positions),
                                       list(msg.reference.velocities)))

            node.create_subscription(JointTrajectoryControllerState,
                                     f"/{robot.trajectory_topic.split('/')[1]}/controller_state",
                                     on_reference, 1000)

    def wait_executor_holding(self, executor, timeout: float) -> None:
        """Wait until executor_node is active and holding where the arm is measured.

        Only then has it sent its one start-up stop; a trajectory published before that would
        be replaced by it. Its diagnostics say 'hold' from the start (before any joint state),
        so the reason tells: 'no chunk covers now' (or, activated again after chunks, the
        watchdog's) needs an active node with a joint state.
        """
        from diagnostic_msgs.msg import DiagnosticArray

        seen: list[dict] = []

        def on_diagnostics(msg):
            seen.extend({kv.key: kv.value for kv in s.values} for s in msg.status
                        if s.hardware_id == "executor_node")

        sub = self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        deadline = time.monotonic() + timeout
        try:
            while not any(v.get("lifecycle_state") == "active" and v.get("state") == "hold"
                          and (v.get("reason") == "no chunk covers now"
                               or v.get("reason", "").startswith("watchdog:")) for v in seen):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"executor_node never held where the arm is within "
                                       f"{timeout} s: last reports {seen[-2:]}")
                executor.spin_once(timeout_sec=0.05)
        finally:
            self.node.destroy_subscription(sub)

    def now(self) -> float:
        """The node's clock (s)."""
        return self.node.get_clock().now().nanoseconds * 1e-9

    def arm(self):
        """The newest measured arm position (None before any)."""
        import numpy as np

        return None if not self.states else np.array(self.states[-1][1][:len(self.robot.home)])

    def chunk(self, actions, dt: float = 0.1, stamp: float | None = None):
        """Publish a joint_position chunk (rows: arm joints + gripper opening)."""
        import numpy as np

        from roboalign_ros.conversions import numpy_to_action_chunk

        self.sequence = getattr(self, "sequence", 0) + 1
        msg = numpy_to_action_chunk(np.asarray(actions, np.float32),
                                    stamp=self.now() if stamp is None else stamp, dt=dt,
                                    action_space="joint_position",
                                    dimension_names=[*self.robot.arm_joints, "gripper"],
                                    sequence=self.sequence)
        self.chunk_pub.publish(msg)

    def estop(self, engaged: bool = True) -> float:
        """Publish the e-stop; returns when (node clock)."""
        t = self.now()
        self.estop_pub.publish(self._Bool(data=engaged))
        return t

    def go_home(self):
        """Call ``~/go_home`` (returns the future)."""
        return self.home_client.call_async(self._Trigger.Request())
