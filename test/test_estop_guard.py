"""The e-stop process: its protocol with executor_node, and a stop while the node's process
is stalled (its interpreter lock held, as taking a 12 MB message holds it)."""

import random
import threading
import time

import numpy as np
import pytest
from conftest import spin_until, wait_matched


def interpreter_holder(seconds: float):
    """A call that holds this process's interpreter lock for about ``seconds`` (one C call,
    no bytecode) and returns how long it held it; prepared here, so that calling it starts
    holding at once."""
    values = [random.random() for _ in range(200_000)]
    start = time.perf_counter()
    sorted(values)
    n = int(len(values) * seconds / max(time.perf_counter() - start, 1e-4))
    values = [random.random() for _ in range(n)]

    def hold() -> float:
        start = time.perf_counter()
        sorted(values)
        return time.perf_counter() - start

    return hold


@pytest.fixture
def in_process(rclpy_context):
    """executor_node in this process (its own executor thread) and a probe: a fake arm's
    joint states, chunks, the e-stop, and every trajectory sent to the controller."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool
    from trajectory_msgs.msg import JointTrajectory

    from roboalign_ros.conversions import numpy_to_action_chunk
    from roboalign_ros.msg import ActionChunk
    from roboalign_ros.nodes.executor_node import ExecutorNode
    from roboalign_ros.robot import load_robot_config

    class Rig:
        pass

    r = Rig()
    r.robot = robot = load_robot_config("sim_arm")
    r.node = ExecutorNode(context=rclpy_context,
                          parameter_overrides=[Parameter("path_topic", value="")])
    node_executor = SingleThreadedExecutor(context=rclpy_context)
    node_executor.add_node(r.node)
    spinning = threading.Event()
    spinning.set()

    def spin():
        while spinning.is_set():
            node_executor.spin_once(timeout_sec=0.01)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    r.probe = probe = Node("estop_guard_probe", context=rclpy_context)
    r.executor = SingleThreadedExecutor(context=rclpy_context)
    r.executor.add_node(probe)
    r.received = []   # JointTrajectory messages, in arrival order
    sub = probe.create_subscription(JointTrajectory, robot.trajectory_topic,
                                    r.received.append, 100)
    chunks = probe.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)
    r.estop = probe.create_publisher(Bool, "/roboalign/estop", 10)
    states = probe.create_publisher(JointState, "/joint_states", 10)

    def publish_state():
        msg = JointState(name=list(robot.joint_names),
                         position=[*map(float, robot.home), 0.04, 0.04])
        msg.header.stamp = probe.get_clock().now().to_msg()
        states.publish(msg)

    probe.create_timer(0.01, publish_state)
    r.now = lambda: probe.get_clock().now().nanoseconds * 1e-9

    def move():
        """A chunk to home + 0.5 rad on joint1; True once the arm is tracking it."""
        target = np.append(robot.home + [0.5, 0, 0, 0, 0, 0], 1.0)
        chunks.publish(numpy_to_action_chunk(
            np.tile(target, (20, 1)).astype(np.float32), stamp=r.now(), dt=0.1,
            action_space="joint_position", dimension_names=[*robot.arm_joints, "gripper"]))
        return spin_until(r.executor, lambda: len(r.received) > 1 and len(
            r.received[-1].points) == 3 and r.received[-1].points[0].velocities[0] > 0.05, 10)

    r.move = move
    try:
        # the node's two e-stop subscriptions and the e-stop process's two; both publishers
        # of trajectories (the node's, the e-stop process's), and the process has ours
        wait_matched(r.executor, r.estop, timeout=60, at_least=4)
        wait_matched(r.executor, chunks, states)
        wait_matched(r.executor, sub, timeout=60, at_least=2,
                     peers=("executor_node_estop_guard", "executor_node"))
        assert spin_until(r.executor, lambda: r.received, 30), "executor_node never held"
        yield r
    finally:
        spinning.clear()
        thread.join()
        r.node.close()
        r.node.destroy_node()
        probe.destroy_node()


def stops_after(received, t: float) -> list[int]:
    """Indices of the stops (two points) stamped at or after ``t``."""
    return [i for i, m in enumerate(received) if len(m.points) == 2 and stamp(m) >= t]


@pytest.mark.ros
def test_the_estop_process_stops_the_arm_while_the_node_process_is_stalled(in_process):
    """The node's interpreter lock held for ~0.5 s right after the e-stop: its own threads
    cannot run, the e-stop process stops the arm meanwhile, and nothing the node decided
    before is sent after that stop."""
    from std_msgs.msg import Bool

    r = in_process
    assert r.move(), "the arm was not moving before the e-stop"
    hold = interpreter_holder(0.5)
    t_estop = r.now()
    r.estop.publish(Bool(data=True))
    held = hold()
    assert held > 0.3, f"the interpreter was held only {held:.3f} s"
    assert spin_until(r.executor, lambda: stops_after(r.received, t_estop), 5)
    first = stops_after(r.received, t_estop)[0]
    stop = r.received[first]
    assert stamp(stop) - t_estop < held / 2, \
        f"the stop was sent {stamp(stop) - t_estop:.3f} s after the e-stop (held {held:.3f})"
    assert abs(stop.points[0].velocities[0]) > 0.05, "it brakes from the moving reference"
    spin_until(r.executor, lambda: False, 0.5)
    after = r.received[first + 1:]
    assert not after, f"{len(after)} commands after the stop: {[len(m.points) for m in after]}"


@pytest.mark.ros
def test_without_its_estop_process_the_node_publishes_and_stops_the_arm_itself(in_process):
    """The e-stop process killed: the node says so in its diagnostics, and commands and the
    e-stop's stop still go out, from the node."""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Bool

    r = in_process
    reports = []
    sub = r.probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: reports.extend(
        (s.message, {kv.key: kv.value for kv in s.values}) for s in m.status
        if s.hardware_id == "executor_node"), 10)
    wait_matched(r.executor, sub, peers=("executor_node",))
    r.node.estop_guard.process.kill()
    r.node.estop_guard.process.join()
    assert spin_until(r.executor, lambda: any(
        "e-stop process gone" in message and values.get("estop_process") == "gone"
        for message, values in reports), 5), f"diagnostics: {reports[-1:]}"
    assert r.move(), "no command after the e-stop process died"
    t_estop = r.now()
    r.estop.publish(Bool(data=True))
    assert spin_until(r.executor, lambda: stops_after(r.received, t_estop), 5), \
        "no stop after the e-stop"


def stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
