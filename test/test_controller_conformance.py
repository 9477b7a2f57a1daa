"""One conformance suite, two targets: what a real joint_trajectory_controller does, the sim does.

Each scenario runs against sim_node (``make test``) and against the REAL ros2_control
controller_manager + joint_trajectory_controller + forward_command_controller with
``mock_components/GenericSystem`` (``make test-controllers``: ``jtc_exact``, state = command;
``jtc_lagging``, velocity commands through the JTC's PID, the state trails). The raw
scenarios publish to the controller as any client would; the executor scenarios drive
executor_node (chunks, e-stop, ``~/go_home``) and watch the arm.

Upstream rules checked (ros2_controllers kilted, ``joint_trajectory_controller.cpp``):
``validate_trajectory_msg`` (empty and ended-in-the-past trajectories refused), ``update`` /
``Trajectory::sample`` (a new message replaces the running one at once, a future stamp moves
towards its first point from now, no refusal for speed), forward_command_controller ``update``
(the gripper command is the finger position in m).
"""

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import spin_until, wait_matched

pytestmark = pytest.mark.ros

TARGETS = ["sim", pytest.param("jtc_exact", marks=pytest.mark.controllers),
           pytest.param("jtc_lagging", marks=pytest.mark.controllers)]


class Target:
    """A controller under test, the executor_node driving it, and a probe watching both."""

    def __init__(self, name: str, log_dir: Path):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        from roboalign_ros.apps.node_processes import NodeProcesses
        from roboalign_ros.apps.ros2_control_rig import Probe
        from roboalign_ros.nodes.common import COMMAND_QOS
        from roboalign_ros.robot import load_robot_config

        self.name, self.rig, self.nodes = name, None, NodeProcesses(log_dir)
        self.log_start, self.estops = 0, 0
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(f"conformance_{name}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.robot = load_robot_config("sim_arm")
        self.traj_pub = self.node.create_publisher(JointTrajectory, self.robot.trajectory_topic,
                                                   COMMAND_QOS)
        self.grip_pub = self.node.create_publisher(Float64MultiArray, self.robot.gripper_topic,
                                                   COMMAND_QOS)
        self.probe = Probe(self.node, self.robot, controller_state=False)
        # the number of points of every trajectory on the controller's topic (ours too)
        self.sent: list[int] = []
        self.traj_sub = self.node.create_subscription(
            JointTrajectory, self.robot.trajectory_topic,
            lambda m: self.sent.append(len(m.points)), 100)
        if name == "sim":
            self.log_path = log_dir / "sim_node.log"
            self.nodes.start("sim_node", "sim.yaml", {"camera.enabled": "false"})
        else:
            from roboalign_ros.apps.ros2_control_rig import Ros2ControlRig, find_ros2_control

            self.rig = Ros2ControlRig(self.node, find_ros2_control(), log_dir,
                                      name.removeprefix("jtc_"))
            self.log_path = self.rig.log_path
            self.rig.activate(self.executor)
        wait_matched(self.executor, self.traj_pub, self.grip_pub, self.probe.state_sub,
                     self.traj_sub)
        assert spin_until(self.executor, lambda: self.probe.arm() is not None, 30)
        self.move(self.robot.home, 1.5)   # the mock starts at zeros
        self.executor_log = log_dir / "executor_node.log"
        self.nodes.start("executor_node", "executor.yaml", {"servo.manage": "false"})
        wait_matched(self.executor, self.probe.chunk_pub, self.probe.estop_pub,
                     self.probe.home_client, timeout=60)
        # it sends one stop (a hold where the arm is) once it has a joint state: wait for that,
        # or it would replace a scenario's first trajectory
        self.probe.wait_executor_holding(self.executor, 30)

    def log(self) -> str:
        """The controller's log since the scenario began."""
        return self.log_path.read_text(errors="replace")[self.log_start:]

    def now(self) -> float:
        return self.probe.now()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.005)

    def joint1(self) -> float:
        return float(self.probe.arm()[0])

    def trajectory(self, points, stamp: float = 0.0):
        """Publish [(time_from_start, positions, velocities or None), ...] stamped ``stamp``."""
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        from roboalign_ros.conversions import seconds_to_duration, seconds_to_stamp

        msg = JointTrajectory(joint_names=list(self.robot.arm_joints))
        msg.header.stamp = seconds_to_stamp(stamp)
        for t, q, v in points:
            msg.points.append(JointTrajectoryPoint(
                positions=[float(x) for x in q],
                velocities=[] if v is None else [float(x) for x in v],
                time_from_start=seconds_to_duration(t)))
        self.traj_pub.publish(msg)

    def move(self, q, seconds: float) -> None:
        """To ``q`` at rest in ``seconds`` and wait until the arm is there."""
        self.trajectory([(seconds, q, np.zeros(len(q)))])
        assert spin_until(self.executor, lambda: np.max(np.abs(self.probe.arm() - q)) < 0.01,
                          seconds + 10), f"{self.name}: did not reach {q}: {self.probe.arm()}"

    def close(self) -> None:
        self.nodes.stop()
        if self.rig is not None:
            self.rig.stop()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture(scope="module", params=TARGETS)
def target(request, tmp_path_factory):
    t = Target(request.param, tmp_path_factory.mktemp(request.param))
    yield t
    t.close()


@pytest.fixture
def at_home(target):
    """Each scenario starts with the arm at rest at home, the executor holding (an e-stop and
    its release flush whatever it was streaming) and the controller's log read from here on."""
    before = len(target.sent)
    target.probe.estop(True)
    assert spin_until(target.executor, lambda: target.executor_log.read_text().count(
        "E-STOP engaged") > target.estops, 10), target.executor_log.read_text()[-800:]
    target.estops += 1
    # the e-stop's stop (two points, braking to rest) comes from another process (the e-stop
    # process or executor_node) and may still be on its way when the move home is sent, and
    # replace it when it lands: let it arrive here first (an arm already held gets none)
    spin_until(target.executor, lambda: 2 in target.sent[before:], 1.0)
    target.probe.estop(False)
    target.move(target.robot.home, 1.0)
    target.wait(0.3)
    target.log_start = len(target.log_path.read_text(errors="replace"))
    return target


def offset(target, dq1: float):
    return target.robot.home + np.array([dq1, 0, 0, 0, 0, 0])


def test_an_empty_trajectory_is_refused_and_the_running_one_goes_on(at_home):
    t = at_home
    goal = offset(t, 0.4)
    t.trajectory([(1.2, goal, np.zeros(6))])
    t.wait(0.3)
    t.trajectory([])
    assert spin_until(t.executor, lambda: "Empty trajectory received." in t.log(), 5), t.name
    assert spin_until(t.executor, lambda: abs(t.joint1() - goal[0]) < 0.01, 5), \
        f"{t.name}: the move stopped at {t.joint1()}"


def test_a_stamped_trajectory_that_ended_in_the_past_is_refused(at_home):
    t = at_home
    t.trajectory([(1.0, offset(t, 0.3), None)], stamp=t.now() - 2.0)
    assert spin_until(t.executor, lambda: "ends in the past" in t.log(), 5), t.name
    t.wait(0.5)
    assert abs(t.joint1() - t.robot.home[0]) < 1e-3, f"{t.name}: moved to {t.joint1()}"


def test_a_past_stamp_still_running_is_followed_from_where_it_is_due(at_home):
    """Stamped 1 s ago with points until 2 s: the JTC samples inside the points (its start
    state is not used), so the arm joins the trajectory where it is due now."""
    t = at_home
    home = t.robot.home
    start = t.now() - 1.0
    t.trajectory([(0.0, home, None), (2.0, offset(t, 0.4), None)], stamp=start)
    assert spin_until(t.executor, lambda: t.joint1() > home[0] + 0.15, 1.0), \
        f"{t.name}: not on the trajectory: {t.joint1()}"
    assert spin_until(t.executor, lambda: abs(t.joint1() - home[0] - 0.4) < 0.01, 3), t.name


def test_a_future_stamp_replaces_at_once_and_moves_from_now(at_home):
    t = at_home
    goal = offset(t, 0.3)
    t.trajectory([(5.0, offset(t, -0.3), np.zeros(6))])   # running: slowly the other way
    t.wait(0.3)
    sent = t.now()
    t.trajectory([(0.5, goal, np.zeros(6))], stamp=sent + 0.5)   # due at +1.0 s
    assert spin_until(t.executor, lambda: t.joint1() > t.robot.home[0], 0.9), \
        f"{t.name}: still on the old trajectory: {t.joint1()}"
    assert spin_until(t.executor, lambda: abs(t.joint1() - goal[0]) < 0.01, 3), t.name


def test_a_new_trajectory_replaces_the_running_one(at_home):
    t = at_home
    t.trajectory([(2.0, offset(t, 0.6), np.zeros(6))])
    t.wait(0.4)
    t.trajectory([(1.0, offset(t, -0.1), np.zeros(6))])
    peak = t.joint1()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and abs(t.joint1() - offset(t, -0.1)[0]) > 0.01:
        peak = max(peak, t.joint1())
        t.executor.spin_once(timeout_sec=0.005)
    assert abs(t.joint1() - offset(t, -0.1)[0]) < 0.01, t.name
    assert peak < t.robot.home[0] + 0.3, f"{t.name}: went on to {peak}"


def test_a_too_fast_trajectory_is_not_refused(at_home):
    """No released JTC refuses a trajectory for its speed; the arm gets there (the sim's motor
    caps the speed at its velocity limit, as a kilted controller_manager's limits do)."""
    t = at_home
    goal = offset(t, 0.3)
    t.trajectory([(0.02, goal, None)])   # 15 rad/s asked, joint1's limit is 2
    # (lagging: the JTC's cmd_timeout holds where the PID got to 0.5 s after the end, ~1 cm)
    assert spin_until(t.executor, lambda: abs(t.joint1() - goal[0]) < 0.03, 2), t.name
    assert "rejected" not in t.log()


def test_the_gripper_command_is_the_finger_position_in_metres(at_home):
    t = at_home
    finger = t.robot.joint_names.index(t.robot.gripper_joints[0])
    q = t.probe.arm()
    for _ in range(5):   # an opening of 0.5 from the policy
        t.probe.chunk(np.tile(np.append(q, 0.5), (20, 1)), dt=0.1)
        t.wait(0.1)
    assert spin_until(t.executor, lambda: abs(t.probe.states[-1][1][finger] - 0.02) < 2e-3,
                      5), f"{t.name}: finger at {t.probe.states[-1][1][finger]}"
    assert t.probe.gripper_commands and abs(t.probe.gripper_commands[-1] - 0.02) < 1e-9


def stream_then_estop(t, speed: float = 1.0, seconds: float = 0.8):
    """Stream joint1 at ``speed`` through executor_node, then e-stop; returns (q at e-stop)."""
    start, t0 = t.probe.arm().copy(), t.now()
    while t.now() - t0 < seconds:
        now = t.now()
        rows = [np.append(start + [speed * (now - t0 + 0.1 * i), 0, 0, 0, 0, 0], 1.0)
                for i in range(20)]
        t.probe.chunk(np.array(rows), dt=0.1, stamp=now)
        t.wait(0.1)
    moving = t.joint1()
    t.probe.estop(True)
    return moving


def settle(t, seconds: float = 1.0):
    """Wait for the arm to come to rest; returns the joint1 positions seen meanwhile."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t.executor.spin_once(timeout_sec=0.005)
        seen.append(t.joint1())
    return np.array(seen)


def test_an_estop_while_streaming_stops_the_arm_within_its_braking_distance(at_home):
    t = at_home
    t.move(offset(t, -0.5), 1.5)
    before = t.joint1()
    at_estop = stream_then_estop(t)
    assert at_estop - before > 0.3, f"{t.name}: the arm was not streaming ({at_estop})"
    seen = settle(t)
    # 1 rad/s braking at 8 rad/s^2 (x1.5 margin): 0.09 rad, plus what was in flight
    assert seen.max() - at_estop < 0.25, f"{t.name}: travelled {seen.max() - at_estop} rad"
    assert np.ptp(seen[-50:]) < 1e-3, f"{t.name}: still moving after the e-stop"
    assert "Empty trajectory received" not in t.log()


def test_an_estop_during_homing_stops_the_home_move(at_home):
    t = at_home
    t.move(offset(t, 0.8), 2.0)
    future = t.probe.go_home()
    assert spin_until(t.executor, future.done, 10) and future.result().success
    t.wait(0.5)
    t.probe.estop(True)
    seen = settle(t, 2.5)   # the move would have reached home by now
    assert abs(seen[-1] - t.robot.home[0]) > 0.2, \
        f"{t.name}: the home move went on to {seen[-1]} after the e-stop: " \
        f"{t.executor_log.read_text()[-800:]}"
    assert np.ptp(seen[-50:]) < 1e-3, f"{t.name}: still moving after the e-stop"


def test_a_sim_reset_is_noticed_and_no_plan_from_before_it_moves_the_arm(at_home):
    """Only the sim resets the world: sim_node announces it on /roboalign/scene_reset and
    refuses trajectories stamped before it; executor_node drops its plans and holds there."""
    from roboalign_ros.srv import ResetTask

    t = at_home
    if t.name != "sim":
        pytest.skip("only the sim teleports the arm (a real JTC has no reset)")
    client = t.node.create_client(ResetTask, "/sim_node/reset_task")
    wait_matched(t.executor, client)
    for _ in range(10):
        t.move(offset(t, 0.3), 0.5)
        start, t0 = t.probe.arm().copy(), t.now()
        for _ in range(3):   # streaming away from home when the reset comes
            now = t.now()
            rows = [np.append(start + [0.5 * (now - t0 + 0.1 * i), 0, 0, 0, 0, 0], 1.0)
                    for i in range(20)]
            t.probe.chunk(np.array(rows), dt=0.1, stamp=now)
            t.wait(0.1)
        future = client.call_async(ResetTask.Request(task="", seed=0))
        assert spin_until(t.executor, future.done, 10) and future.result().success
        seen = settle(t, 0.6)
        # the reset puts the arm home; nothing planned before it pulls it back out
        assert np.max(np.abs(seen[-20:] - t.robot.home[0])) < 0.01, \
            f"pulled away after the reset: {seen.max():.3f}"
    assert t.executor_log.read_text().count("scene reset:") >= 10
