"""executor_node over DDS: tracking, malformed chunks, watchdog hold, e-stop, instruction change."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import spin_until, wait_matched

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
            if not is_stop(msg) and r.follow:  # a perfectly tracking fake arm
                r.q = np.array(msg.points[0].positions)

        command_sub = r.node.create_subscription(JointTrajectory, r.robot.trajectory_topic,
                                                 on_command, 100)
        js_pub = r.node.create_publisher(JointState, "/joint_states", 10)
        r.chunk_pub = r.node.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)
        r.estop_pub = r.node.create_publisher(Bool, "/roboalign/estop", 10)
        r.instruction_pub = r.node.create_publisher(String, "/roboalign/instruction", 10)
        r.q = r.robot.home.copy()
        r.publish_states = False  # until every topic is matched: the first stop follows them

        def publish_state():
            if not r.publish_states:
                return
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
        # both ways: our publishers reach the executor, its command publisher reaches us
        wait_matched(r.executor, r.chunk_pub, r.estop_pub, r.instruction_pub, js_pub,
                     command_sub)
        r.publish_states = True
        # with a joint state the executor holds: the stop (from where the arm is), once
        assert spin_until(r.executor, lambda: len(r.commands) > 0, 30), \
            f"no stop command: {r.log.read_text()[-600:]}"
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


def is_stop(msg):
    """The executor's stop: from where the reference is, braking to rest (two points). A track
    is one point (at rest) or three (the target with its velocity, coasting, braking)."""
    return len(msg.points) == 2


def last_positions(rig):
    """The last streamed arm target (the home pose before any)."""
    points = [m.points[0].positions for _, m in rig.commands if not is_stop(m)]
    return np.array(points[-1]) if points else rig.robot.home


def streamed(rig):
    """Arm targets of the streamed commands, in the order the executor sent them."""
    return np.array([m.points[0].positions for _, m in rig.commands if not is_stop(m)])


def diagnostics(rig):
    """The tail of the executor log, for failure messages."""
    return {"log": rig.log.read_text()[-600:]}


def settled(rig):
    """True when the executor holds: its last command is the stop."""
    return bool(rig.commands) and is_stop(rig.commands[-1][1])


def stamp(m):
    return m.header.stamp.sec + m.header.stamp.nanosec * 1e-9


def assert_feasible(rig, start_q):
    """Every streamed target is reachable from the previous one in the time between their
    stamps (the fake arm tracks perfectly, so that is where the arm is) within the URDF
    velocity limits; every trajectory ends at rest (a JTC's default refuses anything else)."""
    q, t = np.asarray(start_q, float), None
    for _, m in rig.commands:
        assert not any(m.points[-1].velocities), "a trajectory that ends moving"
        if is_stop(m):
            t = None
            continue
        p = np.array(m.points[0].positions)
        if t is not None:
            speed = np.abs(p - q) / max(stamp(m) - t, 1e-3)
            assert np.all(speed <= rig.robot.velocity + 1e-6), f"infeasible: {speed} rad/s"
        q, t = p, stamp(m)


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
    # no chunk for > watchdog_timeout (0.3 s): hold, i.e. the controller's stop
    assert spin_until(rig.executor, lambda: settled(rig), 10), "did not hold"
    positions = streamed(rig)
    assert np.all(np.abs(np.diff(positions, axis=0)) <= 0.05 + 1e-6), "step limit exceeded"
    assert_feasible(rig, rig.robot.home)
    assert not np.allclose(positions[-1], target), "should hold, not jump to the target"
    n = len(rig.commands)
    rig.wait(0.5)
    assert len(rig.commands) == n, "a hold streams nothing after the stop"


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
                      rig.log.read_text() and "max_horizon" in rig.log.read_text(), 10), \
        diagnostics(rig)
    assert len(streamed(rig)) == 0, "a refused chunk moved the arm"


@pytest.mark.parametrize("reliability", ["reliable", "best_effort"])
def test_estop_from_any_publisher_stops_and_latches_without_streaming(rig, reliability):
    """Items 1 and 2 of issue 10: a best-effort e-stop was ignored; the latched hold was the
    measured position behind where the controller stopped, streamed with a fixed lead."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool

    policy = (ReliabilityPolicy.RELIABLE if reliability == "reliable"
              else ReliabilityPolicy.BEST_EFFORT)
    estop_pub = rig.node.create_publisher(Bool, "/roboalign/estop",
                                          QoSProfile(depth=1, reliability=policy))
    assert spin_until(rig.executor, lambda: estop_pub.get_subscription_count() > 0, 10), \
        "no e-stop subscription matches this publisher"
    target = rig.robot.home + np.array([0.0, 0.0, 0.4, 0.0, 0.0, 0.0])
    for _ in range(3):
        rig.chunk_pub.publish(rig.chunk(target))
        rig.wait(0.1)
    assert spin_until(rig.executor, lambda: last_positions(rig)[2] - rig.robot.home[2] > 0.05,
                      10), "the arm was not moving before the e-stop"
    rig.chunk_pub.publish(rig.chunk(target))  # keep it moving while the e-stop comes
    estop_pub.publish(Bool(data=True))
    assert spin_until(rig.executor, lambda: "E-STOP engaged" in rig.log.read_text(), 10)
    # the node's own reaction (message arrival -> stop sent, from the e-stop callback) must be
    # within one 10 ms control period; DDS delivery comes on top (see bench_executor_node.py).
    # The line is written once the stop is out, which may be after "engaged" is logged
    sent = r"stop sent ([0-9.]+) ms after"
    assert spin_until(rig.executor, lambda: re.search(sent, rig.log.read_text()), 10), \
        rig.log.read_text()[-800:]
    reaction = float(re.search(sent, rig.log.read_text()).group(1))
    assert reaction < 10.0, f"the executor took {reaction} ms to react"
    assert spin_until(rig.executor, lambda: settled(rig), 10)
    stop = len(rig.commands) - 1
    rig.chunk_pub.publish(rig.chunk(target))  # refused while engaged
    assert spin_until(rig.executor, lambda: "rejected: estop" in rig.log.read_text(), 10)
    rig.wait(0.5)
    moved = [m for _, m in rig.commands[stop:] if not is_stop(m)]
    assert not moved, f"{len(moved)} positions streamed while the e-stop was latched"
    assert_feasible(rig, rig.robot.home)
    assert rig.log.read_text().count("E-STOP engaged") == 1   # heard on both: taken once
    # release, then a new chunk: resumes from where the arm is, feasibly
    estop_pub.publish(Bool(data=False))
    assert spin_until(rig.executor, lambda: "e-stop released" in rig.log.read_text(), 10)
    rig.wait(0.1)
    rig.chunk_pub.publish(rig.chunk(target))
    assert spin_until(rig.executor, lambda: len(rig.commands) > stop + 1
                      and not is_stop(rig.commands[-1][1]), 10), "did not resume after release"
    assert_feasible(rig, rig.robot.home)


def test_estop_release_without_an_engaged_estop_says_so(rig):
    from std_msgs.msg import Bool

    rig.estop_pub.publish(Bool(data=False))
    assert spin_until(rig.executor, lambda: "release ignored: no e-stop was engaged" in
                      rig.log.read_text(), 10), diagnostics(rig)
    assert "e-stop released" not in rig.log.read_text()


def test_lost_joint_states_stop_the_stream_and_it_resumes_from_the_new_state(rig):
    """Item 6 of issue 10: after a driver restart the executor streamed its old hold."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    errors = []
    rig.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: errors.extend(s.message for s in m.status
                                if s.hardware_id == "executor_node"
                                and s.level == DiagnosticStatus.ERROR), 10)
    target = rig.robot.home + np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    rig.chunk_pub.publish(rig.chunk(target, horizon=40))
    assert spin_until(rig.executor, lambda: last_positions(rig)[0] > rig.robot.home[0] + 0.02,
                      10), "did not start tracking"
    rig.publish_states = False                         # the driver died
    assert spin_until(rig.executor, lambda: settled(rig), 10), "kept streaming without states"
    assert spin_until(rig.executor, lambda: any("joint state watchdog" in e for e in errors),
                      10), f"no ERROR diagnostics: {errors}"
    n = len(rig.commands)
    rig.chunk_pub.publish(rig.chunk(target, horizon=40))
    rig.wait(0.4)
    assert len(rig.commands) == n, "streamed while no joint state was coming"
    rig.q = rig.robot.home + np.array([-0.1, 0.0, 0.0, 0.0, 0.0, 0.0])   # restarted elsewhere
    rig.publish_states = True
    rig.wait(0.2)
    rig.chunk_pub.publish(rig.chunk(rig.q, horizon=40))
    assert spin_until(rig.executor, lambda: len(rig.commands) > n and
                      not is_stop(rig.commands[-1][1]), 10), "did not resume"
    first = next(m for _, m in rig.commands[n:] if not is_stop(m))
    np.testing.assert_allclose(first.points[0].positions, rig.q, atol=0.011)


def test_instruction_change_flushes_pending_chunks(rig):
    from std_msgs.msg import String

    target = rig.robot.home + np.array([-0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    rig.chunk_pub.publish(rig.chunk(target, horizon=40))
    assert spin_until(rig.executor, lambda: last_positions(rig)[0] < rig.robot.home[0] - 0.01,
                      10), "did not start tracking"
    rig.instruction_pub.publish(String(data="push the green block to the left"))
    assert spin_until(rig.executor, lambda: settled(rig), 10), "kept tracking the old chunk"
    assert streamed(rig)[-1][0] > target[0] + 0.05, "the flushed chunk was followed to its end"


def test_go_home_sends_one_slow_trajectory_then_holds_home_and_refuses_under_estop(rig):
    """Item 3 of issue 10: after homing the executor streamed holds at the pre-home pose."""
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    away = rig.robot.home + np.array([0.6, 0.0, 0.0, 0.0, 0.0, 0.0])
    rig.chunk_pub.publish(rig.chunk(away, horizon=40))
    rig.wait(0.1)
    rig.follow = False
    rig.q = away                                       # the arm is away
    rig.wait(0.2)
    client = rig.node.create_client(Trigger, "/executor_node/go_home")
    assert client.wait_for_service(timeout_sec=10)

    def call():
        future = client.call_async(Trigger.Request())
        assert spin_until(rig.executor, future.done, 10)
        return future.result()

    def home_move(m):  # from where the arm is to home at rest, in one slow cubic
        return len(m.points) == 2 and m.points[-1].time_from_start.sec == 1

    result = call()
    assert result.success and "going home" in result.message
    # 0.6 rad at home_speed 0.3 of joint1's 2 rad/s limit: 1.0 s
    assert spin_until(rig.executor, lambda: any(home_move(m) for _, m in rig.commands), 5)
    i = next(i for i, (_, m) in enumerate(rig.commands) if home_move(m))
    np.testing.assert_allclose(rig.commands[i][1].points[-1].positions, rig.robot.home,
                               atol=1e-9)
    assert not any(rig.commands[i][1].points[-1].velocities)
    rig.q = rig.robot.home.copy()                      # the arm got there
    rig.follow = True
    rig.wait(1.5)                                      # homing is over: nothing pulls it back
    after = [m for _, m in rig.commands[i + 1:] if not is_stop(m)]
    assert not after, f"streamed {len(after)} commands after homing, e.g. " \
        f"{after[0].points[0].positions if after else None}"
    rig.estop_pub.publish(Bool(data=True))
    assert spin_until(rig.executor, lambda: "E-STOP engaged" in rig.log.read_text(), 10)
    refused = call()
    assert not refused.success and "e-stop" in refused.message


def test_each_accepted_chunk_is_drawn_as_its_tool_path_in_the_base_frame(rig):
    """The MarkerArray's planned path ends at the FK of the chunk's last joint target (1 mm),
    the executed part follows the commands sent, and clamped rows are marked."""
    from visualization_msgs.msg import Marker, MarkerArray

    from roboalign_ros.control.kinematics import Kinematics

    arrays = []
    rig.node.create_subscription(MarkerArray, "/executor_node/planned_path", arrays.append, 10)
    assert spin_until(rig.executor, lambda: rig.chunk_pub.get_subscription_count() > 0, 10)
    rig.wait(0.5)
    horizon = 20
    ramp = np.linspace(0.0, 0.4, horizon)[:, None] * np.array([1.0, -0.5, 0.3, 0, 0, 0])
    actions = np.hstack([rig.robot.home + ramp, np.ones((horizon, 1))]).astype(np.float32)
    actions[-1, 1] = rig.robot.upper[1] + 0.5      # past the joint limit: clamped
    for _ in range(5):
        rig.chunk_pub.publish(rig.chunk(None, actions=actions))
        rig.wait(0.1)
    assert spin_until(rig.executor, lambda: len(arrays) >= 3, 10), diagnostics(rig)
    markers = {m.id: m for m in arrays[-1].markers}
    planned, executed, clamped = markers[0], markers[1], markers[2]
    assert planned.header.frame_id == rig.robot.base_frame and planned.type == Marker.LINE_STRIP
    assert len(planned.points) == horizon and len(planned.colors) == horizon
    kin = Kinematics(rig.robot)
    for row in (0, horizon // 2, horizon - 1):
        p = planned.points[row]
        fk = kin.fk_position(actions[row, :6].astype(float))
        assert np.linalg.norm(np.array([p.x, p.y, p.z]) - fk) < 1e-3, row
    assert len(clamped.points) >= 1       # the last row, past the limit
    assert len(executed.points) >= 1      # the arm has been commanded meanwhile
    sent = [kin.fk_position(np.array(m.points[0].positions)) for _, m in rig.commands
            if not is_stop(m)]
    last = executed.points[-1]
    assert min(np.linalg.norm(np.array([last.x, last.y, last.z]) - s) for s in sent) < 1e-3
