"""backend: position without DDS: the backend registry, the JointGroupPositionController
stand-in's rules and what the position backend sends.

The stand-in's tests follow ros2_controllers (kilted) ``forward_command_controller/src/
forward_controllers_base.cpp`` (the subscription callback, ``update``, ``on_activate``) and
ros2_control's ``controller_manager.cpp`` (``ControllerManager::update`` deactivates a controller
whose update failed). test_controller_conformance.py runs the same rules through DDS against the
sim and against the real controller.
"""

import numpy as np
import pytest

from roboalign_ros.sim.controllers import (
    POSITION_TYPE,
    CommandRejected,
    JointGroupPositionFollower,
)

NAMES = ["j1", "j2"]


def follower(q0=(0.0, 0.0)):
    f = JointGroupPositionFollower(NAMES, [-3, -3], [3, 3], name="fpc")
    f.reset(np.array(q0))
    return f


# ------------------------------------------------------------------ the stand-in's rules


def test_the_newest_command_is_written_as_it_is_at_the_next_update():
    f = follower()
    f.command([0.5, -0.5])
    f.command([1.0, 2.0])          # the newest wins (one realtime buffer)
    np.testing.assert_allclose(f.sample(), [1.0, 2.0])   # no interpolation, no limit
    np.testing.assert_allclose(f.sample(), [1.0, 2.0])   # held: written every update


def test_a_non_finite_value_drops_the_message_in_the_callback():
    f = follower()
    f.command([0.5, 0.5])
    with pytest.raises(CommandRejected, match=r"^Non-finite value received\. Dropping message$"):
        f.command([np.nan, 1.0])
    with pytest.raises(CommandRejected, match="Non-finite"):
        f.command([np.inf])        # checked before the size
    np.testing.assert_allclose(f.sample(), [0.5, 0.5])
    assert f.active and not f.failures


def test_no_value_is_no_command_and_the_joints_keep_theirs():
    f = follower((0.2, 0.3))
    f.command([])                  # all_of(NaN) over nothing: "no command received yet"
    np.testing.assert_allclose(f.sample(), [0.2, 0.3])
    assert f.active and not f.failures


def test_a_wrong_size_deactivates_the_controller_and_the_joints_hold():
    f = follower()
    f.command([0.1, 0.1])
    f.sample()
    f.command([0.5, 0.5, 0.5])     # taken by the callback: its size is update's business
    f.command([0.4])               # the newest, checked at the update
    np.testing.assert_allclose(f.sample(), [0.1, 0.1])
    assert not f.active
    assert f.failures == ["command size (1) does not match number of interfaces (2)",
                          "Deactivating controllers : [ fpc ] as their update resulted in an "
                          "error!"]
    f.command([0.9, 0.9])          # inactive: nothing is written
    np.testing.assert_allclose(f.sample(), [0.1, 0.1])
    f.activate()                   # on_activate: the command reset to NaN, nothing written
    np.testing.assert_allclose(f.sample(), [0.1, 0.1])
    f.command([0.9, 0.9])
    np.testing.assert_allclose(f.sample(), [0.9, 0.9])


def test_a_wrong_size_overwritten_before_the_update_is_never_seen():
    f = follower()
    f.command([0.1, 0.1, 0.1])
    f.command([0.2, 0.2])          # arrived in the same period: the update sees this one
    np.testing.assert_allclose(f.sample(), [0.2, 0.2])
    assert f.active


def test_the_sims_motors_refuse_a_position_outside_the_limits():
    f = follower()
    with pytest.raises(CommandRejected, match=r"data\[1\]: j2 = 3\.5000 outside its limits"):
        f.command([0.0, 3.5])
    np.testing.assert_allclose(f.sample(), [0.0, 0.0])


def test_the_sim_arm_runs_the_position_controller_through_its_motors():
    from roboalign_ros.sim.server import SimServer

    with pytest.raises(ValueError, match="arm_controller: 'x' is not one of"):
        SimServer("sim_arm", arm_controller="x")
    server = SimServer("sim_arm", arm_controller=POSITION_TYPE)
    q0 = server.env.arm_q()
    goal = q0 + np.array([0.2, 0, 0, 0, 0, 0])
    server.command_position(goal)
    dt = server.control_period
    steps = [server.step(k * dt).position[:6] for k in range(60)]
    # the motor caps the step at its velocity limit (x1.05): no jump even from a forward command
    assert np.max(np.abs(np.diff(steps, axis=0))[:, 0]) <= server.robot.velocity[0] * 1.05 * dt \
        + 2e-3
    np.testing.assert_allclose(steps[-1], goal, atol=2e-3)
    server.command_position(goal[:5])            # the wrong size: deactivated at the next step
    server.step(60 * dt)
    assert len(server.controller_errors()) == 2 and not server.controller_errors()
    server.command_position(q0)
    np.testing.assert_allclose(server.step(61 * dt).position[:6], goal, atol=2e-3)  # held
    server.reset("pick_red_cube", 0)             # the sim's restart: active again
    server.command_position(server.env.arm_q() + 0.01)
    assert server.position.active


# ------------------------------------------------------------------ the registry


def test_the_registry_names_the_choices_for_a_wrong_pair():
    pytest.importorskip("rclpy")
    from roboalign_ros.nodes import backends

    specs = backends.registered_backends()
    assert {"joint_trajectory", "servo", "moveit_py", "position"} <= set(specs)
    assert specs["position"].action_spaces == ("joint_position",)
    assert backends.backend_for("position", "joint_position") is specs["position"]
    with pytest.raises(ValueError, match=r"backend: 'position' does not stream action_space "
                                         r"'ee_delta' .*the backends that do: servo"):
        backends.backend_for("position", "ee_delta")
    with pytest.raises(ValueError, match=r"'moveit_py' .*home_backend.*joint_trajectory, "
                                         r"position"):
        backends.backend_for("moveit_py", "joint_position")
    with pytest.raises(ValueError, match=r"'jtc' is not one of joint_trajectory, moveit_py, "
                                         r"position, servo"):
        backends.backend_for("jtc", "joint_position")
    # its parameter is executor_node's, declared in the node's spec
    from roboalign_ros.parameters import node_parameters

    assert node_parameters("executor_node", "executor_position.yaml")["backend"] == "position"
    with pytest.raises(ValueError, match="position.controller"):
        node_parameters("executor_node", None, {"position.controller": ""})


def test_a_registered_backend_is_built_by_name_with_the_nodes_parameters(monkeypatch):
    pytest.importorskip("rclpy")
    from roboalign_ros.nodes import backends

    monkeypatch.setattr(backends, "_REGISTRY", dict(backends.registered_backends()))
    built = []
    backends.register_backend("echo", ("joint_position",),
                              lambda node, robot, params, guard: built.append(params) or "ok")
    params = {"action_space": "joint_position", "rate": 50.0}
    assert backends.make_backend("echo", None, None, params) == "ok" and built == [params]
    with pytest.raises(ValueError, match="registered twice"):
        backends.register_backend("echo", ("ee_delta",), None)


# ------------------------------------------------------------------ what the backend sends


@pytest.fixture
def sim_arm_executor():
    from roboalign_ros.control.build import build_executor, executor_parameters
    from roboalign_ros.robot import load_robot_config

    params = executor_parameters({"backend": "position", "blend": "latest"})
    robot = load_robot_config("sim_arm")
    return build_executor(params, robot), robot, params


def test_what_is_sent_keeps_the_executors_limits(rclpy_context, sim_arm_executor):
    """Ticks with jitter (and one 40 ms late) and a controller reading at its own phase: each
    position sent is within the velocity limit of the one before, but for what a new command
    may add (it starts where its velocity, at most acc_max x the tick gap faster, took it); the
    e-stop's stop brakes without speeding up and then holds; joint limits and the box hold."""
    from rclpy.node import Node

    from roboalign_ros.control.chunk import Chunk
    from roboalign_ros.control.kinematics import Kinematics
    from roboalign_ros.nodes.position_backend import PositionBackend

    executor, robot, params = sim_arm_executor
    node = Node("position_backend_test", context=rclpy_context)
    backend = PositionBackend(node, robot)
    rng = np.random.default_rng(0)
    ticks = [0.0]
    while ticks[-1] < 2.6:
        ticks.append(ticks[-1] + (0.04 if len(ticks) == 60 else 0.01 + rng.uniform(-3e-3, 3e-3)))
    reads = list(np.arange(0.0037, ticks[-1], 0.01))   # the controller's updates
    names, home, estop_at = (*robot.arm_joints, "gripper"), robot.home, 1.2   # moving then
    goals = [home + [0.6, -0.3, 0, 0, 0, 0.5], home + [-0.2, 0.1, 0, 0, 0, -0.4]]
    sent, gap, q = [], 0.0, home.copy()     # (read time, position, longest tick gap before it)
    try:
        for k, t in enumerate(ticks):
            while reads and reads[0] < t:   # what the controller reads between the ticks
                read = reads.pop(0)
                sent.append((read, backend.sample(read), gap))
                gap = 0.0
            gap = max(gap, t - ticks[k - 1]) if k else 0.0
            if t < estop_at:
                goal = np.append(goals[0] if t < 0.7 else goals[1], 1.0)
                executor.submit(Chunk(t, 0.1, np.tile(goal, (10, 1)), names, sequence=k + 1), t)
            if abs(t - estop_at) < 6e-3:
                executor.estop(True, t)
            backend.send(executor.tick(t, q))
            q = backend.sample(t)   # a perfectly tracking arm
    finally:
        backend.close()
        node.destroy_node()
    times = np.array([r for r, p, _ in sent if p is not None])
    positions = np.array([p for _, p, _ in sent if p is not None])
    gaps = np.array([g for _, p, g in sent if p is not None])
    assert len(positions) > 200 and np.all(np.isfinite(positions))
    limit, acc = robot.velocity * params["safety.velocity_scale"], params["safety.acc_max"]
    step = np.abs(np.diff(positions, axis=0))
    allowed = limit * np.diff(times)[:, None] + acc * gaps[1:, None] ** 2
    assert np.max(step / allowed) <= 1 + 1e-6, np.max(step / allowed)
    assert np.max(step[:, 0] / np.diff(times)) > 0.95 * limit[0]   # the limit was reached
    speed = np.max(step, axis=1) / np.diff(times)
    braking = speed[times[1:] > estop_at + 0.01]
    assert braking[0] > 0.5 and np.all(np.diff(braking) <= 1e-9)   # it only slows down
    held = positions[times > estop_at + 0.5]
    assert len(held) > 20 and np.ptp(held, axis=0).max() == 0.0    # then holds
    assert np.all((robot.lower < positions) & (positions < robot.upper))
    tool = np.array([Kinematics(robot).fk_position(p) for p in positions])
    assert np.all((tool > robot.workspace_min - 1e-3) & (tool < robot.workspace_max + 1e-3))
