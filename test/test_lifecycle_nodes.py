"""policy_node and executor_node as lifecycle (managed) nodes, over DDS, driven through the
``/<node>/change_state`` and ``/<node>/get_state`` services as `ros2 lifecycle set` and launch
do: autostart false leaves a node unconfigured, a bad parameter fails configure (named, the node
stays unconfigured), inactive means no chunk out (policy) and a held arm (executor, also when
deactivated mid-chunk), activate resumes, cleanup goes back to unconfigured, and the status and
/diagnostics name the state throughout."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import spin_until, wait_matched

pytestmark = pytest.mark.ros

UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED = "unconfigured", "inactive", "active", "finalized"


def start_node(module, log_path, *params):
    args = [sys.executable, "-m", f"roboalign_ros.nodes.{module}", "--ros-args",
            "-p", "autostart:=false"]
    for p in params:
        args += ["-p", p]
    log = open(log_path, "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    return proc, log


def stop_node(proc, log):
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


class Lifecycle:
    """Client of one node's lifecycle and parameter services."""

    def __init__(self, node, executor, name):
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import SetParameters

        self.executor = executor
        self.change = node.create_client(ChangeState, f"/{name}/change_state")
        self.get = node.create_client(GetState, f"/{name}/get_state")
        self.params = node.create_client(SetParameters, f"/{name}/set_parameters")

    def _call(self, client, request, timeout):
        wait_matched(self.executor, client)
        future = client.call_async(request)
        assert spin_until(self.executor, future.done, timeout), f"{client.srv_name}: no answer"
        return future.result()

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(self.get, GetState.Request(), 10).current_state.label

    def transition(self, transition_id: int, timeout: float = 60) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self._call(self.change, request, timeout).success

    def set_parameter(self, name: str, value: str) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        result = self._call(self.params, SetParameters.Request(
            parameters=[Parameter(name=name, value=value)]), 10)
        assert result.results[0].successful, result.results[0].reason


def diagnostics_of(node, hardware_id):
    """A list that fills with ``hardware_id``'s DiagnosticStatus (message, values dict)."""
    from diagnostic_msgs.msg import DiagnosticArray

    got = []
    node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: got.extend((s.level, s.message, {kv.key: kv.value for kv in s.values})
                             for s in m.status if s.hardware_id == hardware_id), 50)
    return got


def said(executor, got, lifecycle, needle="", timeout=10):
    """Wait for a diagnostics message naming ``lifecycle`` (its prefix and value)."""
    def found():
        return any(m.startswith(f"{lifecycle}: ") and needle in m
                   and v.get("lifecycle_state") == lifecycle for _, m, v in got)
    return spin_until(executor, found, timeout)


# ---------------------------------------------------------------- executor_node


@pytest.fixture
def arm(rclpy_context, tmp_path):
    """executor_node (autostart false, in its own process) + a perfectly tracking fake arm."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from roboalign_ros.msg import ActionChunk
    from roboalign_ros.robot import load_robot_config

    class Arm:
        pass

    a = Arm()
    a.log_path = tmp_path / "executor.log"
    a.proc, a.log = start_node("executor_node", a.log_path, "blend:=bogus",
                               "watchdog_timeout:=5.0")
    try:
        a.robot = load_robot_config("sim_arm")
        a.node = Node("lifecycle_probe", context=rclpy_context)
        a.commands = []
        a.q = a.robot.home.copy()

        def on_command(msg):
            a.commands.append(msg)
            if msg.points:  # a perfect arm: at a track's target, or at rest where a stop ends
                a.q = np.array(msg.points[-1 if is_stop(msg) else 0].positions)

        a.command_sub = a.node.create_subscription(JointTrajectory, a.robot.trajectory_topic,
                                                   on_command, 100)
        a.js_pub = js_pub = a.node.create_publisher(JointState, "/joint_states", 10)
        a.chunk_pub = a.node.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)

        def publish_state():
            msg = JointState(name=list(a.robot.joint_names),
                             position=[*map(float, a.q), 0.04, 0.04])
            msg.header.stamp = a.node.get_clock().now().to_msg()
            js_pub.publish(msg)

        a.node.create_timer(0.01, publish_state)
        a.diagnostics = diagnostics_of(a.node, "executor_node")
        a.executor = SingleThreadedExecutor(context=rclpy_context)
        a.executor.add_node(a.node)
        a.lifecycle = Lifecycle(a.node, a.executor, "executor_node")

        def chunk(target, horizon=40, dt=0.1):
            from roboalign_ros.conversions import numpy_to_action_chunk

            actions = np.tile(np.append(target, 1.0), (horizon, 1)).astype(np.float32)
            return numpy_to_action_chunk(
                actions, stamp=a.node.get_clock().now().nanoseconds * 1e-9, dt=dt,
                action_space="joint_position",
                dimension_names=[*a.robot.arm_joints, "gripper"])

        def wait(seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                a.executor.spin_once(timeout_sec=0.005)

        def holding():
            """Wait until the active executor holds the arm it hears (its control loop runs and
            has the fake arm's joint state: 'hold', not 'no_state')."""
            return spin_until(a.executor, lambda: any(
                v.get("lifecycle_state") == ACTIVE and v.get("state") == "hold"
                for _, _, v in a.diagnostics), 10)

        def configured():
            """After configure: the executor's chunk, joint-state and command topics matched
            with this probe's (the stop it sends on activate goes out once)."""
            wait_matched(a.executor, a.chunk_pub, a.js_pub, a.command_sub)

        a.chunk, a.wait, a.holding, a.configured = chunk, wait, holding, configured
        a.streamed = lambda: [m.points[0].positions for m in a.commands if not is_stop(m)]
        yield a
    finally:
        stop_node(a.proc, a.log)
    a.executor.shutdown()
    a.node.destroy_node()


def is_stop(msg):
    """executor_node's stop: from where the reference is, braking to rest (two points)."""
    return len(msg.points) == 2


def test_executor_unconfigured_until_configured_bad_parameter_fails_cleanup_releases(arm):
    from lifecycle_msgs.msg import Transition

    lc = arm.lifecycle
    assert lc.state() == UNCONFIGURED, "autostart:=false must leave the node unconfigured"
    assert said(arm.executor, arm.diagnostics, UNCONFIGURED)
    # its diagnostics and services answered: its endpoints are known here
    assert arm.chunk_pub.get_subscription_count() == 0, "unconfigured but subscribed"
    # blend:=bogus: configure fails, names the parameter, the node stays unconfigured and up
    assert not lc.transition(Transition.TRANSITION_CONFIGURE)
    assert lc.state() == UNCONFIGURED and arm.proc.poll() is None
    assert "configure failed: blend: 'bogus' breaks the rule: one of" in arm.log_path.read_text()
    assert said(arm.executor, arm.diagnostics, UNCONFIGURED, "configure failed: blend")
    assert arm.chunk_pub.get_subscription_count() == 0, "failed configure but subscribed"
    lc.set_parameter("blend", "latest")
    assert lc.transition(Transition.TRANSITION_CONFIGURE)
    assert lc.state() == INACTIVE
    arm.configured()
    assert said(arm.executor, arm.diagnostics, INACTIVE, "holding, not streaming")
    # inactive: a chunk is not followed (the node says it ignored it), nothing is commanded
    arm.chunk_pub.publish(arm.chunk(arm.robot.home + 0.3))
    assert spin_until(arm.executor, lambda: "chunk ignored: executor_node is inactive"
                      in arm.log_path.read_text(), 10), arm.log_path.read_text()[-800:]
    assert not arm.commands, "an inactive executor commanded the arm"
    # cleanup: back to unconfigured, the topics released
    assert lc.transition(Transition.TRANSITION_CLEANUP)
    assert lc.state() == UNCONFIGURED
    assert spin_until(arm.executor, lambda: arm.chunk_pub.get_subscription_count() == 0, 10), \
        "cleanup kept the chunk subscription"
    assert said(arm.executor, arm.diagnostics, UNCONFIGURED, "not configured")
    # configurable again, and a clean shutdown
    assert lc.transition(Transition.TRANSITION_CONFIGURE)
    assert lc.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
    assert lc.state() == FINALIZED and arm.proc.poll() is None


def test_executor_deactivated_mid_chunk_holds_where_the_arm_is_then_resumes(arm):
    from lifecycle_msgs.msg import Transition

    lc = arm.lifecycle
    lc.set_parameter("blend", "latest")
    assert lc.transition(Transition.TRANSITION_CONFIGURE)
    arm.configured()
    assert lc.transition(Transition.TRANSITION_ACTIVATE)
    assert lc.state() == ACTIVE
    assert said(arm.executor, arm.diagnostics, ACTIVE)
    assert spin_until(arm.executor, lambda: arm.commands, 10), "no stop command on activate"
    assert arm.holding(), arm.diagnostics[-3:]
    target = arm.robot.home + np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    arm.chunk_pub.publish(arm.chunk(target))          # 4 s of chunk at <= 1 rad/s
    assert spin_until(arm.executor, lambda: arm.q[0] > arm.robot.home[0] + 0.1, 10), \
        f"did not track: {arm.log_path.read_text()[-800:]}"
    assert lc.transition(Transition.TRANSITION_DEACTIVATE)      # mid-chunk
    assert lc.state() == INACTIVE
    assert spin_until(arm.executor, lambda: is_stop(arm.commands[-1]), 5), \
        "no stop (hold) after deactivate"
    held = np.array(arm.commands[-1].points[-1].positions)   # where the stop comes to rest
    n = len(arm.commands)
    arm.wait(0.8)   # an observation window: nothing may come in it
    assert len(arm.commands) == n, "commanded the arm while inactive"
    np.testing.assert_allclose(arm.q, held)                   # the arm stays where it was
    assert held[0] < target[0] - 0.3, "followed the chunk to its end instead of holding"
    assert said(arm.executor, arm.diagnostics, INACTIVE, "holding")
    # activate again: a new chunk is followed from where the arm is, not from the old plan
    arm.diagnostics.clear()
    assert lc.transition(Transition.TRANSITION_ACTIVATE)
    assert arm.holding(), arm.diagnostics[-3:]
    arm.chunk_pub.publish(arm.chunk(target))
    assert spin_until(arm.executor, lambda: len(arm.streamed()) > len(
        [m for m in arm.commands[:n] if not is_stop(m)]), 10), "did not resume after activate"
    first = next(m for m in arm.commands[n:] if not is_stop(m))
    np.testing.assert_allclose(first.points[0].positions, held, atol=0.011)


# ---------------------------------------------------------------- policy_node


def test_policy_unconfigured_bad_parameter_then_no_chunks_while_inactive(rclpy_context,
                                                                          tmp_path):
    from lifecycle_msgs.msg import Transition
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from roboalign_ros.conversions import numpy_to_image
    from roboalign_ros.msg import ActionChunk, PolicyStatus
    from roboalign_ros.robot import load_robot_config

    log_path = tmp_path / "policy.log"
    proc, log = start_node("policy_node", log_path, "model_path:=tiny", "device:=cpu",
                           "reasoning_every:=0", "torch_threads:=1", "reasoning_mode:=bogus")
    node = Node("policy_lifecycle_probe", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        robot = load_robot_config("sim_arm")
        chunks, statuses = [], []
        chunk_sub = node.create_subscription(ActionChunk, "/roboalign/action_chunk",
                                             chunks.append, 10)
        status_sub = node.create_subscription(PolicyStatus, "/roboalign/status",
                                              statuses.append, 50)
        diagnostics = diagnostics_of(node, "policy_node")
        image_pub = node.create_publisher(Image, robot.color_topic, 10)
        instruction_pub = node.create_publisher(String, "/roboalign/instruction", 10)
        js_pub = node.create_publisher(JointState, "/joint_states", 10)
        image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)

        def feed():  # the sim: images at 10 Hz, joint states at 50 Hz, the instruction
            now = node.get_clock().now()
            state = JointState(name=list(robot.joint_names),
                               position=[*map(float, robot.home), 0.02, 0.02])
            state.header.stamp = now.to_msg()
            js_pub.publish(state)
            feed.n += 1
            if feed.n % 5 == 0:
                image_pub.publish(numpy_to_image(image, "rgb8",
                                                 stamp=now.nanoseconds * 1e-9))
                instruction_pub.publish(String(data="pick up the red cube"))
        feed.n = 0
        node.create_timer(0.02, feed)

        def wait(seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.01)

        def status_says(state, lifecycle, needle=""):
            return spin_until(executor, lambda: any(
                s.state == state and s.message.startswith(f"{lifecycle}: ") and needle in s.message
                for s in statuses), 20), [s.message for s in statuses[-3:]]

        def published_when_deactivated():
            """chunks_published of the first status after deactivate: every chunk it sent."""
            return next(s.chunks_published for s in statuses if s.state ==
                        PolicyStatus.STATE_BLOCKED and s.message.startswith(f"{INACTIVE}: "))

        lc = Lifecycle(node, executor, "policy_node")
        assert lc.state() == UNCONFIGURED, "autostart:=false must leave the node unconfigured"
        ok, last = status_says(PolicyStatus.STATE_UNCONFIGURED, UNCONFIGURED)
        assert ok, last
        assert said(executor, diagnostics, UNCONFIGURED)
        assert image_pub.get_subscription_count() == 0, "unconfigured but subscribed"
        # reasoning_mode:=bogus: configure fails naming it; the node stays up, unconfigured
        assert not lc.transition(Transition.TRANSITION_CONFIGURE)
        assert lc.state() == UNCONFIGURED and proc.poll() is None
        ok, last = status_says(PolicyStatus.STATE_ERROR, UNCONFIGURED,
                               "configure failed: reasoning_mode: 'bogus'")
        assert ok, last
        assert "configure failed: reasoning_mode" in log_path.read_text()
        lc.set_parameter("reasoning_mode", "async")
        assert lc.transition(Transition.TRANSITION_CONFIGURE, timeout=120), \
            log_path.read_text()[-1500:]
        assert lc.state() == INACTIVE
        ok, last = status_says(PolicyStatus.STATE_BLOCKED, INACTIVE, "not acting")
        assert ok, last
        assert said(executor, diagnostics, INACTIVE)
        # inactive: inputs arrive, no chunk goes out (in a 1 s observation window)
        wait_matched(executor, image_pub, instruction_pub, js_pub, chunk_sub, status_sub)
        wait(1.0)
        assert not chunks, "an inactive policy published chunks"
        # active: chunks
        assert lc.transition(Transition.TRANSITION_ACTIVATE)
        assert lc.state() == ACTIVE
        assert spin_until(executor, lambda: chunks, 30), log_path.read_text()[-1500:]
        ok, last = status_says(PolicyStatus.STATE_ACTING, ACTIVE, "acting")
        assert ok, last
        # inactive again: chunks stop. The status sent on deactivate counts every chunk
        # published before it; once those have arrived, none may follow (1 s window).
        statuses.clear()
        assert lc.transition(Transition.TRANSITION_DEACTIVATE)
        ok, last = status_says(PolicyStatus.STATE_BLOCKED, INACTIVE, "not acting")
        assert ok, last
        n = published_when_deactivated()
        assert spin_until(executor, lambda: len(chunks) >= n, 10), (len(chunks), n)
        wait(1.0)
        assert len(chunks) == n, "published chunks after deactivate"
        # and resume
        assert lc.transition(Transition.TRANSITION_ACTIVATE)
        assert spin_until(executor, lambda: len(chunks) > n, 30), "no chunks after activate"
        # cleanup: model released, back to unconfigured, topics gone
        assert lc.transition(Transition.TRANSITION_DEACTIVATE)
        assert lc.transition(Transition.TRANSITION_CLEANUP)
        assert lc.state() == UNCONFIGURED
        assert spin_until(executor, lambda: image_pub.get_subscription_count() == 0, 10)
        assert said(executor, diagnostics, UNCONFIGURED, "not configured")
    finally:
        stop_node(proc, log)
        executor.shutdown()
        node.destroy_node()


def test_autostart_with_a_bad_parameter_ends_the_process_and_names_it(tmp_path):
    """``ros2 run`` / the apps (autostart true): a node that cannot configure exits 1 at once."""
    args = [sys.executable, "-m", "roboalign_ros.nodes.executor_node", "--ros-args",
            "-p", "blend:=bogus"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert proc.returncode == 1
    assert "blend" in proc.stdout + proc.stderr
