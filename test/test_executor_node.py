"""executor_node over DDS: tracking, malformed chunks, watchdog hold, e-stop, instruction change."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import spin_until

pytestmark = pytest.mark.ros


@pytest.fixture
def rig(rclpy_context, tmp_path):
    """executor_node in its own process + a fake arm (joint states) and a command recorder."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, String
    from trajectory_msgs.msg import JointTrajectory

    from roboalign_ros.msg import ActionChunk
    from roboalign_ros.robot import load_robot_config

    log = open(tmp_path / "executor.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "roboalign_ros.nodes.executor_node",
                             "--ros-args", "-p", "watchdog_timeout:=0.3"],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())

    try:
        class Rig:
            pass

        r = Rig()
        r.robot = load_robot_config("sim_arm")
        r.node = Node("executor_probe", context=rclpy_context)
        r.commands = []  # (receive time, JointTrajectory)
        r.follow = True

        def on_command(msg):
            r.commands.append((time.monotonic(), msg))
            if msg.points and r.follow:  # a perfectly tracking fake arm
                r.q = np.array(msg.points[0].positions)

        r.node.create_subscription(JointTrajectory, r.robot.trajectory_topic, on_command, 100)
        js_pub = r.node.create_publisher(JointState, "/joint_states", 10)
        r.chunk_pub = r.node.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)
        r.estop_pub = r.node.create_publisher(Bool, "/roboalign/estop", 10)
        r.instruction_pub = r.node.create_publisher(String, "/roboalign/instruction", 10)
        r.q = r.robot.home.copy()

        def publish_state():
            msg = JointState(name=list(r.robot.joint_names),
                             position=[*map(float, r.q), 0.04, 0.04])
            msg.header.stamp = r.node.get_clock().now().to_msg()
            js_pub.publish(msg)

        r.node.create_timer(0.01, publish_state)
        r.executor = SingleThreadedExecutor(context=rclpy_context)
        r.executor.add_node(r.node)
        r.log = tmp_path / "executor.log"

        def now():
            return r.node.get_clock().now().nanoseconds * 1e-9

        def wait(seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                r.executor.spin_once(timeout_sec=0.005)

        def chunk(target, horizon=20, dt=0.1, stamp=None, actions=None):
            from roboalign_ros.conversions import numpy_to_action_chunk

            if actions is None:
                actions = np.tile(np.append(target, 1.0), (horizon, 1)).astype(np.float32)
            return numpy_to_action_chunk(actions, stamp=stamp or now(), dt=dt,
                                         action_space="joint_position",
                                         dimension_names=[*r.robot.arm_joints, "gripper"])

        r.now, r.wait, r.chunk = now, wait, chunk
        assert spin_until(r.executor, lambda: r.chunk_pub.get_subscription_count() > 0 and
                          r.estop_pub.get_subscription_count() > 0, 30), "executor_node not up"
        assert spin_until(r.executor, lambda: len(r.commands) > 5, 30), "no hold commands"
        yield r
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    r.executor.shutdown()
    r.node.destroy_node()


def last_positions(rig):
    return np.array(rig.commands[-1][1].points[0].positions)


def streamed(rig):
    """Arm targets of the streamed commands, in the order the executor sent them."""
    return np.array([m.points[0].positions for _, m in rig.commands if m.points])


def diagnostics(rig):
    """The tail of the executor log, for failure messages."""
    return {"log": rig.log.read_text()[-600:]}


def settled(rig, n=20):
    """True when the last ``n`` commands are identical (holding)."""
    points = [tuple(m.points[0].positions) for _, m in rig.commands[-n:] if m.points]
    return len(points) == n and len(set(points)) == 1


# Receive times at the probe lag behind on a loaded machine, so the checks below use the
# order of the command stream and wait for conditions instead of fixed sleeps.


def test_tracks_chunks_within_the_velocity_clamp_then_watchdog_holds(rig):
    target = rig.robot.home + np.array([1.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    for _ in range(8):  # chunks keep arriving for ~0.8 s
        rig.chunk_pub.publish(rig.chunk(target))
        rig.wait(0.1)
    assert spin_until(rig.executor, lambda: last_positions(rig)[0] - rig.robot.home[0] > 0.1,
                      10), (f"joint1 did not move towards the chunk: {last_positions(rig)}, "
                            f"{len(rig.commands)} commands, {diagnostics(rig)}")
    # no chunk for > watchdog_timeout (0.3 s): hold
    assert spin_until(rig.executor, lambda: settled(rig), 10), "did not hold"
    positions = streamed(rig)
    assert np.all(np.abs(np.diff(positions, axis=0)) <=
                  0.5 * rig.robot.velocity * 0.01 + 1e-6), "velocity clamp exceeded"
    assert not np.allclose(last_positions(rig), target), "should hold, not jump to the target"


def test_nan_and_oversized_chunks_are_rejected(rig):
    import array

    bad = rig.chunk(rig.robot.home, horizon=10)
    bad.actions = array.array("f", [float("nan")] * 70)  # a malformed sender, past our checks
    huge = rig.chunk(rig.robot.home, horizon=500)
    for _ in range(3):
        rig.chunk_pub.publish(bad)
        rig.chunk_pub.publish(huge)
        rig.wait(0.2)
    assert spin_until(rig.executor, lambda: "chunk rejected: actions: NaN" in
                      rig.log.read_text() and "max_horizon" in rig.log.read_text(), 10)
    np.testing.assert_allclose(streamed(rig), np.tile(rig.robot.home, (len(streamed(rig)), 1)),
                               atol=1e-9)


def test_estop_stops_within_one_period_and_latches(rig):
    from std_msgs.msg import Bool

    target = rig.robot.home + np.array([0.0, 0.0, 0.4, 0.0, 0.0, 0.0])
    for _ in range(3):
        rig.chunk_pub.publish(rig.chunk(target))
        rig.wait(0.1)
    assert spin_until(rig.executor, lambda: last_positions(rig)[2] - rig.robot.home[2] > 0.05,
                      10), "the arm was not moving before the e-stop"
    rig.chunk_pub.publish(rig.chunk(target))  # keep it moving while the e-stop comes
    rig.estop_pub.publish(Bool(data=True))
    assert spin_until(rig.executor, lambda: "E-STOP engaged" in rig.log.read_text(), 10)
    # the node's own reaction (message arrival -> stop sent, from the e-stop callback) must be
    # within one 10 ms control period; DDS delivery comes on top (see bench_executor_node.py)
    reaction = float(re.search(r"stop sent ([0-9.]+) ms after", rig.log.read_text()).group(1))
    assert reaction < 10.0, f"the executor took {reaction} ms to react"
    assert spin_until(rig.executor, lambda: any(not m.points for _, m in rig.commands), 10)
    rig.chunk_pub.publish(rig.chunk(target))  # refused while engaged
    assert spin_until(rig.executor, lambda: "rejected: estop" in rig.log.read_text(), 10)
    stop = next(i for i, (_, m) in enumerate(rig.commands) if not m.points)
    assert spin_until(rig.executor, lambda: len(rig.commands) > stop + 30, 10)
    after = np.array([m.points[0].positions for _, m in rig.commands[stop + 1:] if m.points])
    before = np.array([m.points[0].positions for _, m in rig.commands[:stop] if m.points])
    assert np.all(after == after[0]), f"commands moved after the e-stop: {after[0]} {after[-1]}"
    # frozen at the measured position: between the start and the last commanded target
    assert rig.robot.home[2] <= after[0][2] <= before[-1][2] + 1e-9


def test_instruction_change_flushes_pending_chunks(rig):
    from std_msgs.msg import String

    target = rig.robot.home + np.array([-0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    rig.chunk_pub.publish(rig.chunk(target, horizon=40))
    assert spin_until(rig.executor, lambda: last_positions(rig)[0] < rig.robot.home[0] - 0.01,
                      10), "did not start tracking"
    rig.instruction_pub.publish(String(data="push the green block to the left"))
    assert spin_until(rig.executor, lambda: settled(rig), 10), "kept tracking the old chunk"
    assert last_positions(rig)[0] > target[0] + 0.05, "the flushed chunk was followed to its end"


def test_go_home_sends_one_slow_trajectory_and_refuses_under_estop(rig):
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    rig.follow = False
    rig.q = rig.robot.home + np.array([0.6, 0.0, 0.0, 0.0, 0.0, 0.0])  # the arm is away
    rig.wait(0.2)
    client = rig.node.create_client(Trigger, "/executor_node/go_home")
    assert client.wait_for_service(timeout_sec=10)

    def call():
        future = client.call_async(Trigger.Request())
        assert spin_until(rig.executor, future.done, 10)
        return future.result()

    result = call()
    assert result.success and "going home" in result.message
    # 0.6 rad at home_speed 0.3 of joint1's 2 rad/s limit: 1.0 s
    assert spin_until(rig.executor, lambda: any(
        m.points and m.points[0].time_from_start.sec == 1 for _, m in rig.commands), 5)
    home = next(m for _, m in rig.commands if m.points and m.points[0].time_from_start.sec == 1)
    np.testing.assert_allclose(home.points[0].positions, rig.robot.home, atol=1e-9)
    rig.estop_pub.publish(Bool(data=True))
    assert spin_until(rig.executor, lambda: "E-STOP engaged" in rig.log.read_text(), 10)
    refused = call()
    assert not refused.success and "e-stop" in refused.message
