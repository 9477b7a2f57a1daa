"""The sim's JTC stand-in, rate limiter and gripper command without ROS.

The follower's tests follow ros2_controllers' joint_trajectory_controller (kilted): the upstream
function each one follows is named (joint_trajectory_controller.cpp ``validate_trajectory_msg``
and ``update``; trajectory.cpp ``Trajectory::sample``, ``interpolate_between_points`` and
``set_point_before_trajectory_msg``). What goes beyond the JTC is the sim's motor
(:class:`RateLimiter`) and is tested as such.
"""

import numpy as np
import pytest

from roboalign_ros.control.trajectory import cubic_segment
from roboalign_ros.sim.controllers import (
    CommandRejected,
    JointTrajectoryFollower,
    RateLimiter,
    validate_gripper_command,
)

NAMES = ["j1", "j2"]
VELOCITY = np.array([2.0, 2.0])
P = 0.01  # the control period (JTC update_period_)
ZERO = np.zeros(2)


def follower(q0=(0.0, 0.0), **options):
    f = JointTrajectoryFollower(NAMES, [-3, -3], [3, 3], VELOCITY, **options)
    f.reset(np.array(q0))
    return f


def run(f, t0, t1, **measured):
    """Sample every period from ``t0`` up to (not including) ``t1``; the commands, [K, 2]."""
    return np.array([f.sample(k * P, P, **measured)
                     for k in range(round(t0 / P), round(t1 / P))])


# ------------------------------------------------------------------ validate_trajectory_msg


def test_empty_trajectory_is_refused_and_the_running_one_goes_on():
    # validate_trajectory_msg: "Empty trajectory received."; the topic callback drops the
    # message, so update() keeps sampling the running trajectory
    f = follower()
    f.command(NAMES, [1.0], [[1.0, 0.0]], start_time=0.0, now=0.0)
    run(f, 0.0, 0.5)
    with pytest.raises(CommandRejected, match=r"^Empty trajectory received\.$"):
        f.command(NAMES, [], [], start_time=0.0, now=0.5)
    assert f.active
    np.testing.assert_allclose(f.sample(0.5, P), [0.51, 0.0])  # still on its way
    np.testing.assert_allclose(run(f, 0.51, 1.2)[-1], [1.0, 0.0])  # to its goal


def test_joint_names_are_checked_in_upstream_order():
    # validate_trajectory_msg: the joint count first (allow_partial_joints_goal: false), so
    # no names at all is "don't match" too; then each name against the controller's joints
    f = follower()
    with pytest.raises(CommandRejected, match="Joints on incoming trajectory don't match"):
        f.command([], [1.0], [[]], start_time=0.0, now=0.0)
    with pytest.raises(CommandRejected, match="Joints on incoming trajectory don't match"):
        f.command(["j1"], [1.0], [[0.1]], start_time=0.0, now=0.0)
    with pytest.raises(CommandRejected, match="Incoming joint x doesn't match"):
        f.command(["j1", "x"], [1.0], [[0.1, 0.2]], start_time=0.0, now=0.0)
    with pytest.raises(CommandRejected, match="not strictly increasing"):
        f.command(NAMES, [1.0, 1.0], [[0.1, 0.0], [0.2, 0.0]], start_time=0.0, now=0.0)
    assert not f.active


def test_trajectory_that_ends_in_the_past_is_refused_and_one_ending_now_is_not():
    # validate_trajectory_msg: a non-zero stamp + last time_from_start < now is refused
    f, now = follower(), 10.0
    with pytest.raises(CommandRejected, match=r"non-zero start time \(8\.000000\) that ends in "
                                              r"the past \(9\.000000\)"):
        f.command(NAMES, [0.5, 1.0], [[0.2, 0.0], [0.5, 0.0]], start_time=8.0, now=now)
    assert not f.active
    np.testing.assert_allclose(f.sample(now, P), ZERO)
    # ending exactly now is not "< now": accepted, and played out at once (Trajectory::sample
    # returns the last point; the motor, not the JTC, keeps that from being a jump)
    f.command(NAMES, [1.0], [[0.5, 0.0]], start_time=9.0, now=now)
    np.testing.assert_allclose(f.sample(now, P), [0.5, 0.0])


def test_past_stamp_whose_end_is_ahead_is_sampled_inside_its_points():
    # validate_trajectory_msg accepts it; Trajectory::sample then finds now + period inside
    # the segment [stamp + 0.5, stamp + 2.0] and interpolates there: the state before the
    # message (here 0, or the measured 0.4) is never used
    for options, measured in (({}, {}),
                              ({"interpolate_from_desired_state": False},
                               {"measured_q": np.array([0.4, 0.4])})):
        f, now = follower(**options), 100.0
        f.command(NAMES, [0.5, 2.0], [[0.1, 0.0], [0.6, 0.0]], start_time=now - 1.0, now=now)
        q = f.sample(now, P, **measured)
        np.testing.assert_allclose(q, [0.1 + 0.5 * 0.51 / 1.5, 0.0])
        np.testing.assert_allclose(f.sample(now + 0.99, P, **measured), [0.6, 0.0])


def test_nonzero_end_velocity_is_refused_unless_allowed():
    # validate_trajectory_msg: |last velocity| > float eps, naming the first such joint
    f = follower()
    with pytest.raises(CommandRejected, match=r"Velocity of last trajectory point of joint j1 "
                                              r"is not zero: 0\.100000000000000"):
        f.command(NAMES, [1.0], [[0.5, 0.5]], [[0.1, 0.3]], start_time=0.0, now=0.0)
    assert not f.active
    # non-zero velocities before the last point are fine
    f.command(NAMES, [1.0, 2.0], [[0.5, 0.0], [1.0, 0.0]], [[0.5, 0.0], [0.0, 0.0]],
              start_time=0.0, now=0.0)
    assert f.active
    # allow_nonzero_velocity_at_trajectory_end: accepted; played out, the last point's
    # position holds (Trajectory::sample returns the last point itself)
    g = follower(allow_nonzero_velocity_at_trajectory_end=True)
    g.command(NAMES, [1.0], [[0.5, 0.5]], [[0.1, 0.3]], start_time=0.0, now=0.0)
    commands = run(g, 0.0, 1.5)
    np.testing.assert_allclose(commands[-10:], np.tile([0.5, 0.5], (10, 1)))


def test_too_fast_trajectory_is_accepted_by_the_follower():
    # validate_trajectory_msg has no speed check: 0.5 rad in 10 ms (50 rad/s, limit 2) is
    # accepted and sampled as it is
    f = follower()
    f.command(NAMES, [0.01], [[0.5, 0.0]], start_time=0.0, now=0.0)
    assert f.active
    np.testing.assert_allclose(f.sample(0.0, P), [0.5, 0.0])


# ------------------------------------------------------------------ update: replacement, start


def test_future_stamp_replaces_the_running_one_at_once_from_the_state_before_it():
    # update: a new message replaces current_trajectory_ at the next update, whatever its
    # stamp (no queueing); set_point_before_trajectory_msg keeps the last command (labelled
    # with the previous update's time) and Trajectory::sample interpolates from it to the first
    # point at stamp + time_from_start
    f = follower()
    f.command(NAMES, [1.0], [[1.0, 0.0]], start_time=0.0, now=0.0)
    np.testing.assert_allclose(run(f, 0.0, 0.5)[-1], [0.5, 0.0])  # the command for 0.5 at 0.49
    f.command(NAMES, [1.0], [[0.0, 0.0]], start_time=2.0, now=0.5)  # first point at 3.0
    # linear from (0.49, 0.5) to (3.0, 0.0), sampled at 0.5 + P
    np.testing.assert_allclose(f.sample(0.5, P), [0.5 - 0.5 * 0.02 / 2.51, 0.0])
    commands = run(f, 0.51, 3.5)  # [k]: the command for 0.52 + k P
    assert np.all(np.diff(commands[:248, 0]) < 0)  # never again towards the first goal
    np.testing.assert_allclose(commands[248:], np.zeros((51, 2)), atol=1e-12)  # at 3.0: there


def test_new_message_replaces_the_running_trajectory_at_the_next_sample():
    # update: current_trajectory_->update(new msg) before sampling; stamp 0 starts it at that
    # update's time (Trajectory::sample sets trajectory_start_time_)
    f = follower()
    f.command(NAMES, [2.0], [[1.0, 0.0]], start_time=0.0, now=0.0)
    run(f, 0.0, 1.0)  # the last command: 0.5 for t = 1.0, kept with t = 0.99
    f.command(NAMES, [1.0], [[0.0, 1.0]], start_time=0.0, now=0.995)
    np.testing.assert_allclose(f.sample(1.0, P), [0.5 - 0.5 * 0.02 / 1.01, 0.02 / 1.01])
    np.testing.assert_allclose(run(f, 1.01, 2.5)[-1], [0.0, 1.0])


def test_interpolate_from_desired_state_starts_from_the_last_command_one_period_early():
    # update with interpolate_from_desired_state: set_point_before_trajectory_msg(
    # last_commanded_time_, last_commanded_state_), where last_commanded_state_ = command_next_
    # (the sample for time + period, positions and velocities) and last_commanded_time_ = time
    f = follower()
    f.command(NAMES, [1.0, 2.0], [[0.5, 0.0], [1.0, 0.0]], [[0.5, 0.0], [0.0, 0.0]],
              start_time=0.0, now=0.0)
    run(f, 0.0, 0.5)
    q_cmd, v_cmd = cubic_segment(0.0, ZERO, ZERO, 1.0, [0.5, 0.0], [0.5, 0.0], 0.5)
    assert v_cmd[0] > 0.1  # moving: the velocity matters
    goal = np.array([0.2, 0.3])
    f.command(NAMES, [1.0], [goal], [ZERO], start_time=0.0, now=0.5)
    bogus = np.array([2.0, -2.0])  # the measured state is not used
    q = f.sample(0.5, P, measured_q=bogus, measured_v=bogus)
    expected, _ = cubic_segment(0.49, q_cmd, v_cmd, 1.5, goal, ZERO, 0.51)
    np.testing.assert_allclose(q, expected, atol=1e-9)
    unlabelled, _ = cubic_segment(0.5, q_cmd, v_cmd, 1.5, goal, ZERO, 0.51)
    assert np.abs(q - unlabelled).max() > 1e-4  # the one-period-early label shows


def test_without_interpolate_from_desired_state_starts_from_the_measured_state():
    # update without interpolate_from_desired_state: set_point_before_trajectory_msg(time,
    # state_current_), the state interfaces handed to sample() as measured_q / measured_v
    f = follower(interpolate_from_desired_state=False)
    f.command(NAMES, [1.0], [[1.0, 0.0]], start_time=0.0, now=0.0)
    run(f, 0.0, 0.5, measured_q=ZERO)
    goal = np.array([0.2, 0.3])
    f.command(NAMES, [1.0], [goal], [ZERO], start_time=0.0, now=0.5)
    mq, mv = np.array([0.45, 0.01]), np.array([0.8, 0.0])
    q = f.sample(0.5, P, measured_q=mq, measured_v=mv)
    np.testing.assert_allclose(q, cubic_segment(0.5, mq, mv, 1.5, goal, ZERO, 0.51)[0])
    # no measured velocity (no velocity state interface): zero, as
    # set_point_before_trajectory_msg fills it when the first point has velocities
    g = follower(interpolate_from_desired_state=False)
    g.command(NAMES, [1.0], [goal], [ZERO], start_time=0.0, now=0.5)
    np.testing.assert_allclose(g.sample(0.5, P, measured_q=mq),
                               cubic_segment(0.5, mq, ZERO, 1.5, goal, ZERO, 0.51)[0])


def test_sample_is_the_trajectory_one_period_ahead():
    # update: command_next_ = sample(traj_time_ + update_period_)
    for period in (0.01, 0.1):
        f = follower()
        f.command(NAMES, [1.0], [[1.0, -1.0]], start_time=0.0, now=0.0)
        np.testing.assert_allclose(f.sample(0.0, period), [period, -period])
        np.testing.assert_allclose(f.sample(0.5, period), [0.5 + period, -0.5 - period])


# ------------------------------------------------------------------ Trajectory::sample


def test_positions_only_interpolate_linearly_and_the_last_point_holds():
    # interpolate_between_points without velocities: linear, constant speed per segment;
    # Trajectory::sample after the last point: the last point
    f = follower()
    f.command(NAMES, [1.0, 2.0], [[1.0, 0.0], [1.0, 2.0]], start_time=0.0, now=0.0)
    commands = run(f, 0.0, 3.0)
    np.testing.assert_allclose(commands[49], [0.5, 0.0])  # at 0.49, for 0.5
    np.testing.assert_allclose(commands[149], [1.0, 1.0])
    speed = np.diff(commands, axis=0) / P
    np.testing.assert_allclose(speed[:98], np.tile([1.0, 0.0], (98, 1)), atol=1e-9)
    np.testing.assert_allclose(speed[100:198], np.tile([0.0, 2.0], (98, 1)), atol=1e-9)
    np.testing.assert_allclose(commands[200:], np.tile([1.0, 2.0], (100, 1)))
    assert not f.active


def test_velocities_interpolate_cubically_with_continuous_velocity():
    # interpolate_between_points with velocities at both ends: the cubic, so the velocity is
    # continuous at the points (a positions-only stream steps it)
    f = follower()
    f.command(NAMES, [1.0, 2.0], [[0.5, 0.0], [1.0, 0.0]], [[0.5, 0.0], [0.0, 0.0]],
              start_time=0.0, now=0.0)
    commands = run(f, 0.0, 3.0)
    for k in (20, 99, 100, 150, 198):
        t = k * P + P
        expected = (cubic_segment(0.0, ZERO, ZERO, 1.0, [0.5, 0.0], [0.5, 0.0], t) if t < 1.0
                    else cubic_segment(1.0, [0.5, 0.0], [0.5, 0.0], 2.0, [1.0, 0.0], ZERO, t))
        np.testing.assert_allclose(commands[k], expected[0], atol=1e-9)
    speed = np.diff(commands[:, 0]) / P
    assert speed[98] == pytest.approx(0.5, abs=0.03)  # just before the point at 1.0
    assert speed[100] == pytest.approx(0.5, abs=0.03)  # just after it
    assert np.abs(np.diff(speed[:199])).max() < 0.02  # no step anywhere
    np.testing.assert_allclose(commands[200:], np.tile([1.0, 0.0], (100, 1)))


# ------------------------------------------------------------------ the sim's motor


def test_rate_limiter_caps_each_step_and_counts():
    limiter = RateLimiter(NAMES, VELOCITY, tolerance=1.0)
    limiter.reset(np.zeros(2))
    out = [limiter(np.array([1.5, 0.005]), 0.01) for _ in range(3)]
    np.testing.assert_allclose(out[0], [0.02, 0.005])
    np.testing.assert_allclose(out[2], [0.06, 0.005])
    assert limiter.clamped == limiter.jumps == 3
    assert "j1 target jumped +1.4600 rad" in limiter.last_jump
    np.testing.assert_allclose(limiter(np.array([0.07, 0.0]), 0.01), [0.07, 0.0])
    assert limiter.clamped == 3  # within the limit: not counted
    np.testing.assert_allclose(limiter(np.array([0.095, 0.0]), 0.01), [0.09, 0.0])
    assert limiter.clamped == 4 and limiter.jumps == 3  # 25 % over (jitter): held, no jump


def test_server_accepts_a_too_fast_trajectory_and_the_motor_caps_it():
    # the JTC never refuses for speed (validate_trajectory_msg); the sim's RateLimiter holds
    # every target step to the velocity limits and counts what it held back
    from roboalign_ros.sim.server import SimServer

    server = SimServer("sim_arm")
    names = list(server.robot.arm_joints)
    q0 = server.env.q_target
    goal = q0 + 0.5
    server.command_trajectory(names, [0.01], [goal.tolist()], start_time=0.0, now=0.0)
    targets = [q0]
    for k in range(60):
        server.step(k * P)
        targets.append(server.env.q_target)
    speed = np.abs(np.diff(np.array(targets), axis=0)) / P
    assert np.all(speed <= server.robot.velocity * 1.05 + 1e-9)
    assert server.limiter.jumps > 0 and "held to the limit" in server.limiter.last_jump
    np.testing.assert_allclose(targets[-1], goal)  # it gets there, at the motor's pace


def test_server_never_moves_a_target_faster_than_the_limits():
    # Hermite segments with absurd point velocities overshoot any speed check of the
    # positions: the limiter behind the follower still holds every step to the limits
    from roboalign_ros.sim.server import SimServer

    server = SimServer("sim_arm")
    names = list(server.robot.arm_joints)
    q0 = server.env.q_target
    goal = q0 + 0.3
    server.command_trajectory(names, [0.5, 1.0], [goal.tolist(), q0.tolist()],
                              [[40.0] * 6, [0.0] * 6], start_time=0.0, now=0.0)
    targets = []
    for k in range(1, 120):
        server.step(k * 0.01)
        targets.append(server.env.q_target)
    speed = np.abs(np.diff(np.array(targets), axis=0)) / 0.01
    assert np.all(speed <= server.robot.velocity * 1.05 + 1e-9)
    assert server.limiter.jumps > 0


def test_server_refuses_control_characters_in_task_names():
    from roboalign_ros.sim.server import SimServer

    server = SimServer("sim_arm")
    server.reset("pick_red_cube", 0)
    with pytest.raises(ValueError, match="control characters"):
        server.reset("\x01\x02", 0)
    assert server.task_status()[0] == "pick_red_cube"


# ------------------------------------------------------------------ gripper


def test_gripper_command_is_the_finger_position_in_metres():
    # forward_command_controller update: the value goes to the position interface unchanged;
    # the sim's finger motor holds it inside the joint limits and says so
    assert validate_gripper_command([0.02], 0.0, 0.04) == (0.02, None)
    value, note = validate_gripper_command([0.5], 0.0, 0.04)
    assert value == 0.04
    assert "0.5000 m outside the finger's limits [0.0000, 0.0400] m" in note
    value, note = validate_gripper_command([-0.01], 0.0, 0.04)
    assert value == 0.0 and "[0.0000, 0.0400]" in note
    with pytest.raises(CommandRejected, match="not finite"):
        validate_gripper_command([float("nan")], 0.0, 0.04)
    for values in ([], [0.01, 0.02]):
        with pytest.raises(CommandRejected, match="expected one value"):
            validate_gripper_command(values, 0.0, 0.04)


def test_server_gripper_command_in_metres_sets_the_opening():
    from roboalign_ros.sim.server import SimServer

    server = SimServer("sim_arm")  # finger 0 (closed) .. 0.04 m (open)
    assert server.command_gripper([0.02]) is None
    assert server.env.gripper_target == pytest.approx(0.5)
    assert server.env.gripper_target == pytest.approx(server.robot.joint_to_gripper(0.02))
    note = server.command_gripper([1.0])  # an opening sent as if it were metres
    assert "outside the finger's limits" in note
    assert server.env.gripper_target == pytest.approx(1.0)
    with pytest.raises(CommandRejected):
        server.command_gripper([float("inf")])
    assert server.env.gripper_target == pytest.approx(1.0)
