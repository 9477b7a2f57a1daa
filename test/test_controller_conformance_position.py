"""The conformance suite on a JointGroupPositionController: what the real one does, the sim does.

The arm on position_controllers/JointGroupPositionController instead of the JTC: the sim's
stand-in (sim_node arm_controller.plugin) and the real one (a ForwardCommandController with
interface_name position where position_controllers is not installed: the class upstream's
joint_group_position_controller.cpp builds), driven raw (executor_node inactive) and through
executor_node's position backend (config/executor_position.yaml). Upstream rules:
forward_controllers_base.cpp (the subscription drops non-finite values; update writes the
newest command as it is; a command of the wrong size fails update) and controller_manager.cpp
ControllerManager::update (a failed update deactivates the controller). A module of its own:
its nodes (named as the JTC suite's) start only once that suite's are stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import spin_until, wait_matched
from test_controller_conformance import Target, offset, settle, stream_then_estop

pytestmark = pytest.mark.ros

POSITION_TARGETS = ["sim", pytest.param("exact", marks=pytest.mark.controllers)]


class PositionTarget:
    """The arm on a JointGroupPositionController, executor_node (backend position) beside it."""

    def __init__(self, name: str, log_dir: Path):
        import rclpy
        from lifecycle_msgs.srv import ChangeState
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import Float64MultiArray

        from roboalign_ros.apps.node_processes import NodeProcesses
        from roboalign_ros.apps.ros2_control_rig import POSITION_CONTROLLER, Probe
        from roboalign_ros.nodes.common import COMMAND_QOS
        from roboalign_ros.parameters import load_parameters
        from roboalign_ros.robot import load_robot_config
        from roboalign_ros.sim.controllers import POSITION_TYPE

        self.name, self.rig, self.nodes = name, None, NodeProcesses(log_dir)
        self.log_start, self.estops = 0, 0
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(f"position_conformance_{name}", context=self.context)
        try:
            self._start(name, log_dir, ChangeState, SingleThreadedExecutor, Float64MultiArray,
                        NodeProcesses, POSITION_CONTROLLER, Probe, COMMAND_QOS, load_parameters,
                        load_robot_config, POSITION_TYPE)
        except BaseException:
            self.close()   # no node of a failed set-up may outlive it (they answer later tests)
            raise

    def _start(self, name, log_dir, ChangeState, SingleThreadedExecutor, Float64MultiArray,
               NodeProcesses, POSITION_CONTROLLER, Probe, COMMAND_QOS, load_parameters,
               load_robot_config, POSITION_TYPE) -> None:
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.robot = load_robot_config("sim_arm")
        self.controller = POSITION_CONTROLLER
        topic = f"/{POSITION_CONTROLLER}/commands"
        self._Float64MultiArray = Float64MultiArray
        self.cmd_pub = self.node.create_publisher(Float64MultiArray, topic, COMMAND_QOS)
        self.received: list[list[float]] = []   # every command on the controller's topic
        self.cmd_sub = self.node.create_subscription(
            Float64MultiArray, topic, lambda m: self.received.append(list(m.data)), 1000)
        self.probe = Probe(self.node, self.robot, controller_state=False)
        if name == "sim":
            self.log_path = log_dir / "sim_node.log"
            self.nodes.start("sim_node", "sim.yaml", {"camera.enabled": "false",
                                                      "arm_controller.plugin": POSITION_TYPE})
        else:
            from roboalign_ros.apps.ros2_control_rig import Ros2ControlRig, find_ros2_control

            self.rig = Ros2ControlRig(self.node, find_ros2_control(), log_dir, name,
                                      arm_controller=POSITION_CONTROLLER)
            self.log_path = self.rig.log_path
            self.rig.activate(self.executor)
        wait_matched(self.executor, self.cmd_pub, self.probe.state_sub)
        assert spin_until(self.executor, lambda: self.probe.arm() is not None, 30)
        self.move(self.robot.home)   # the mock starts at zeros
        self.executor_log = log_dir / "executor_node.log"
        # configured, inactive: the raw scenarios have the controller to themselves
        self.nodes.start("executor_node", "executor.yaml", {
            **load_parameters("executor_position.yaml", "executor_node"), "autostart": "false"})
        self.lifecycle = self.node.create_client(ChangeState, "/executor_node/change_state")
        wait_matched(self.executor, self.lifecycle, timeout=60)
        self.transition("configure")   # its subscriptions and ~/go_home come with it
        wait_matched(self.executor, self.probe.chunk_pub, self.probe.estop_pub,
                     self.probe.home_client)
        self.active = False

    def transition(self, label: str) -> None:
        """Drive executor_node's lifecycle (configure, activate, deactivate)."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = getattr(Transition, f"TRANSITION_{label.upper()}")
        future = self.lifecycle.call_async(request)
        assert spin_until(self.executor, future.done, 30) and future.result().success, \
            f"{label} failed: {self.executor_log.read_text()[-800:]}"

    def set_streaming(self, on: bool) -> None:
        """executor_node active (following chunks, holding where the arm is) or inactive."""
        if on and not self.active:
            self.transition("activate")
            self.probe.wait_executor_holding(self.executor, 30)
        elif not on and self.active:
            self.transition("deactivate")
            self.wait_silent()
        self.active = on

    def wait_silent(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Wait until no command arrived on the controller's topic for ``quiet`` s."""
        deadline, count, since = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() - since < quiet:
            assert time.monotonic() < deadline, f"{self.name}: commands never stopped"
            if len(self.received) != count:
                count, since = len(self.received), time.monotonic()
            self.executor.spin_once(timeout_sec=0.01)

    def command(self, values) -> None:
        """Publish one command to the controller, as any client would."""
        self.cmd_pub.publish(self._Float64MultiArray(data=[float(v) for v in values]))

    def move(self, q, seconds: float = 1.0) -> None:
        """A ramp of commands to ``q`` (a forward controller does not interpolate); wait until
        the arm rests there."""
        start, t0 = self.probe.arm().copy(), time.monotonic()
        while (s := (time.monotonic() - t0) / seconds) < 1.0:
            self.command(start + (np.asarray(q) - start) * s)
            self.wait(0.01)
        self.command(q)

        def resting_there():
            last = np.array([p[:6] for _, p in self.probe.states[-10:]])
            return np.max(np.abs(last[-1] - q)) < 1e-3 and np.ptp(last, axis=0).max() < 1e-5

        assert spin_until(self.executor, resting_there, 10), \
            f"{self.name}: did not reach {q}: {self.probe.arm()}"

    def reactivate(self) -> None:
        """Activate the controller again after its update failed."""
        if self.rig is not None:
            self.rig.switch(self.executor, [self.controller])
            return
        from roboalign_ros.srv import ResetTask  # the sim: a restart, as reset_task is

        client = self.node.create_client(ResetTask, "/sim_node/reset_task")
        wait_matched(self.executor, client)
        future = client.call_async(ResetTask.Request(task="", seed=0))
        assert spin_until(self.executor, future.done, 10) and future.result().success
        self.node.destroy_client(client)

    log, now, wait, joint1 = Target.log, Target.now, Target.wait, Target.joint1

    def close(self) -> None:
        self.nodes.stop()
        if self.rig is not None:
            self.rig.stop()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture(scope="module", params=POSITION_TARGETS)
def position_target(request, tmp_path_factory):
    t = PositionTarget(request.param, tmp_path_factory.mktemp(f"position_{request.param}"))
    yield t
    t.close()


def _at_home(t, streaming: bool):
    t.probe.estop(False)   # (a scenario that failed may have left it engaged)
    t.set_streaming(False)
    t.move(t.robot.home)
    t.set_streaming(streaming)
    t.log_start = len(t.log_path.read_text(errors="replace"))
    return t


@pytest.fixture
def raw(position_target):
    """The arm at home, the controller's alone (executor_node inactive), its log from here."""
    return _at_home(position_target, False)


@pytest.fixture
def streaming(position_target):
    """The arm at home, executor_node active and holding it there."""
    return _at_home(position_target, True)


def test_a_position_command_is_written_as_it_is_and_held(raw):
    t = raw
    goal = offset(t, 0.05)
    t.command(goal)
    assert spin_until(t.executor, lambda: np.max(np.abs(t.probe.arm() - goal)) < 1e-3, 3), \
        f"{t.name}: at {t.probe.arm()}"
    t.wait(0.3)
    assert np.max(np.abs(t.probe.arm() - goal)) < 1e-3, f"{t.name}: did not hold"


def test_a_non_finite_or_empty_command_changes_nothing(raw):
    t = raw
    t.command([float("nan")] * 6)
    assert spin_until(t.executor,
                      lambda: "Non-finite value received. Dropping message" in t.log(), 5), t.name
    t.command([])                 # no value: "no command", the joints keep theirs
    t.wait(0.5)
    assert abs(t.joint1() - t.robot.home[0]) < 1e-4, f"{t.name}: moved to {t.joint1()}"
    assert "does not match" not in t.log()
    t.command(offset(t, 0.03))    # still active
    assert spin_until(t.executor, lambda: abs(t.joint1() - t.robot.home[0] - 0.03) < 1e-3, 3)


def test_a_wrongly_sized_command_deactivates_the_controller(raw):
    t = raw
    t.command(offset(t, 0.2)[:5])
    assert spin_until(t.executor, lambda: "command size (5) does not match number of "
                      "interfaces (6)" in t.log(), 5), f"{t.name}: {t.log()[-800:]}"
    assert spin_until(t.executor, lambda: "as their update resulted in an error" in t.log(), 5)
    assert f"[ {t.controller} ]" in t.log()
    t.command(offset(t, 0.1))     # the controller is inactive: nothing is written
    t.wait(0.5)
    assert abs(t.joint1() - t.robot.home[0]) < 1e-4, f"{t.name}: moved to {t.joint1()}"
    t.reactivate()
    t.move(t.robot.home)
    t.command(offset(t, 0.03))
    assert spin_until(t.executor, lambda: abs(t.joint1() - t.robot.home[0] - 0.03) < 1e-3, 3)


def stream_to(t, goal, seconds: float):
    """Chunks holding ``goal`` every 0.1 s for ``seconds`` (the executor ramps to it)."""
    t0 = t.now()
    while t.now() - t0 < seconds:
        t.probe.chunk(np.tile(np.append(goal, 1.0), (20, 1)), dt=0.1)
        t.wait(0.1)


def test_chunks_are_followed_within_the_executors_limits(streaming):
    t = streaming
    start, goal = len(t.received), offset(t, 0.6)
    states, sent_at = len(t.probe.states), t.now()
    stream_to(t, goal, 2.0)
    assert abs(t.joint1() - goal[0]) < 0.01, f"{t.name}: at {t.joint1()}"
    # the executor's velocity limit set the pace, not the motor's (twice as fast): the arm is
    # never ahead of the reference, which left home after the first chunk was sent (a stalled
    # process only makes it later; the arm may then catch up, so no speed between samples)
    arrived = next(s for s, q in t.probe.states[states:] if q[0] > goal[0] - 0.02)
    limit = t.robot.velocity[0] * 0.5   # safety.velocity_scale
    assert arrived - sent_at >= 0.575 / limit, f"{t.name}: {arrived - sent_at:.3f} s"
    sent = np.array(t.received[start:])
    assert sent.ndim == 2 and sent.shape[1] == 6 and np.all(np.isfinite(sent))
    assert np.all((t.robot.lower < sent) & (sent < t.robot.upper))
    assert "rejected" not in t.log() and "does not match" not in t.log()


def test_an_estop_stops_the_arm_and_the_last_safe_position_is_held(streaming):
    t = streaming
    t.set_streaming(False)
    t.move(offset(t, -0.5))
    t.set_streaming(True)
    before = t.joint1()
    at_estop = stream_then_estop(t)
    assert at_estop - before > 0.3, f"{t.name}: the arm was not streaming ({at_estop})"
    seen = settle(t)
    assert seen.max() - at_estop < 0.25, f"{t.name}: travelled {seen.max() - at_estop} rad"
    held = len(t.received)
    # the stop's rest, sent every period: the controller holds it even if one is lost
    assert spin_until(t.executor, lambda: len(t.received) >= held + 20, 10), t.name
    hold = np.array(t.received[held:])
    assert np.ptp(hold, axis=0).max() == 0.0, f"{t.name}: not one position: {hold[[0, -1]]}"
    assert abs(t.joint1() - hold[-1][0]) < 1e-3
    t.probe.estop(False)


def test_go_home_moves_through_the_position_controller(streaming):
    t = streaming
    stream_to(t, offset(t, 0.4), 1.2)
    assert t.joint1() > t.robot.home[0] + 0.3, f"{t.name}: at {t.joint1()}"
    t.wait(0.6)   # the watchdog holds
    future = t.probe.go_home()
    assert spin_until(t.executor, future.done, 10) and future.result().success
    assert spin_until(t.executor, lambda: np.max(np.abs(t.probe.arm() - t.robot.home)) < 0.01,
                      10), f"{t.name}: at {t.probe.arm()}"


def test_deactivate_brakes_holds_and_leaves_the_controller_alone(streaming):
    t = streaming
    t0 = t.now()
    while t.now() - t0 < 0.6:   # moving at 1 rad/s
        now = t.now()
        rows = [np.append(t.robot.home + [now - t0 + 0.1 * i, 0, 0, 0, 0, 0], 1.0)
                for i in range(20)]
        t.probe.chunk(np.array(rows), dt=0.1, stamp=now)
        t.wait(0.1)
    moving = t.joint1()
    t.set_streaming(False)       # the stop, played out to rest, then no more commands
    seen = settle(t, 0.5)
    assert seen.max() - moving < 0.25 and np.ptp(seen[-30:]) < 1e-3, t.name
    t.command(offset(t, 0.05))   # another source takes over the controller
    assert spin_until(t.executor, lambda: abs(t.joint1() - t.robot.home[0] - 0.05) < 1e-3, 3)


def test_a_sim_reset_while_streaming_does_not_pull_the_arm_back(streaming):
    """executor_node's position backend forgets its reference on /roboalign/scene_reset."""
    from roboalign_ros.srv import ResetTask

    t = streaming
    if t.rig is not None:
        pytest.skip("only the sim teleports the arm (a real controller has no reset)")
    client = t.node.create_client(ResetTask, "/sim_node/reset_task")
    wait_matched(t.executor, client)
    for _ in range(3):
        stream_to(t, offset(t, 0.3), 0.5)   # streaming away from home when the reset comes
        future = client.call_async(ResetTask.Request(task="", seed=0))
        assert spin_until(t.executor, future.done, 10) and future.result().success
        seen = settle(t, 0.6)
        assert np.max(np.abs(seen[-20:] - t.robot.home[0])) < 0.01, \
            f"pulled away after the reset: {seen.max():.3f}"
    t.node.destroy_client(client)
