"""Commands as trajectories a real JTC executes: braking, track and stop points (no ROS)."""

import numpy as np
import pytest

from roboalign_ros.control.build import build_executor, executor_parameters
from roboalign_ros.control.chunk import Chunk
from roboalign_ros.control.trajectory import braking, cubic_segment, trajectory_points
from roboalign_ros.robot import load_robot_config

ROBOT = load_robot_config("sim_arm")
ACC = executor_parameters()["safety.acc_max"]


def executor():
    ex = build_executor(executor_parameters(), ROBOT)
    ex.resume(0.0)
    return ex


def ramp(ex, t, speed=1.0, joint=0, h=40):
    """A chunk that moves ``joint`` at ``speed`` from home, observed at ``t``."""
    rows = np.tile(np.append(ROBOT.home, 1.0), (h, 1))
    rows[:, joint] += speed * 0.1 * np.arange(h)
    return Chunk(t, 0.1, rows.astype(np.float32), tuple(ex.config.dimension_names),
                 "joint_position", 1)


def stream(ex, ticks):
    """Tick ``ex`` every 10 ms with a perfectly tracking arm; (last command, q, t)."""
    q, t, cmd = ROBOT.home.copy(), 0.0, None
    for _ in range(ticks):
        t += 0.01
        cmd = ex.tick(t, q)
        q = cmd.arm
    return cmd, q, t


def accelerations(points, samples=200):
    """Max |acceleration| along the cubic segments (finite differences of velocity)."""
    worst = 0.0
    for (t0, q0, v0), (t1, q1, v1) in zip(points, points[1:]):
        ts = np.linspace(t0, t1, samples)
        v = np.array([cubic_segment(t0, q0, v0, t1, q1, v1, t)[1] for t in ts])
        worst = max(worst, float(np.max(np.abs(np.diff(v, axis=0)) / (ts[1] - ts[0]))))
    return worst


def test_braking_stops_every_joint_together_within_the_acceleration_limit():
    q, v = np.array([0.0, 1.0]), np.array([1.0, -0.5])
    rest, seconds = braking(q, v, ACC, [-3, -3], [3, 3])
    assert seconds == pytest.approx(1.5 * 1.0 / ACC)         # the fastest joint, with margin
    np.testing.assert_allclose(rest, q + v * seconds / 2)
    assert accelerations([(0, q, v), (seconds, rest, np.zeros(2))]) <= ACC / 1.5 + 1e-6
    rest, seconds = braking(q, np.zeros(2), ACC, [-3, -3], [3, 3])
    assert seconds == 0.1 and np.array_equal(rest, q)         # at rest: hold, not a jolt
    rest, _ = braking([2.95, 0.0], [2.0, 0.0], ACC, [-3, -3], [3, 3])
    assert rest[0] == 3.0                                      # never past a joint limit


def test_a_track_is_the_target_with_its_velocity_then_coast_then_rest():
    ex = executor()
    assert ex.submit(ramp(ex, 0.0), 0.0)[0]
    cmd, q, t = stream(ex, 40)
    times, positions, velocities = trajectory_points(cmd)
    assert cmd.kind == "track" and cmd.stamp == t and len(times) == 3
    assert times[0] == 0.0 and times[1] == ex.config.lead_time
    np.testing.assert_array_equal(positions[0], cmd.arm)
    assert velocities[0][0] == pytest.approx(1.0, rel=1e-3)   # at the stream's speed
    np.testing.assert_allclose(positions[1], cmd.arm + velocities[0] * ex.config.lead_time)
    assert not np.any(velocities[2])                           # ends at rest: a JTC's default
    assert accelerations(list(zip(times, positions, velocities))) <= ACC + 1e-6


def test_consecutive_tracks_join_without_a_velocity_step():
    """Where message k+1 starts, message k's reference is within acc_max * dt of it."""
    ex = executor()
    assert ex.submit(ramp(ex, 0.0), 0.0)[0]
    q, t, previous = ROBOT.home.copy(), 0.0, None
    for _ in range(40):
        t += 0.01
        cmd = ex.tick(t, q)
        q = cmd.arm
        if previous is not None and cmd.kind == "track" and len(previous.points) == 3:
            (t0, q0, v0), (t1, q1, v1) = previous.points[:2]
            p, v = cubic_segment(t0, q0, v0, t1, q1, v1, t - previous.stamp)
            assert np.max(np.abs(p - cmd.points[0][1])) < ACC * 0.01 ** 2 + 1e-9
            assert np.max(np.abs(v - cmd.points[0][2])) <= ACC * 0.01 + 1e-6
        previous = cmd


def test_a_stop_brakes_from_where_the_reference_is_and_is_sent_once():
    ex = executor()
    assert ex.submit(ramp(ex, 0.0), 0.0)[0]
    last, q, t = stream(ex, 40)
    ex.estop(True, t + 0.005)
    stop = ex.tick(t + 0.005, q)          # the e-stop callback ticks at once
    again = ex.tick(t + 0.01, q)          # ... and the control thread next
    assert stop.kind == "estop" and stop.stop and not again.stop
    (t0, q0, v0), (t1, q1, v1) = stop.points
    assert t0 == 0.0 and stop.stamp == t + 0.005
    np.testing.assert_allclose(q0, last.arm + last.points[0][2] * 0.005)  # moved on 5 ms
    np.testing.assert_allclose(v0, last.points[0][2])
    assert not np.any(v1) and q1[0] > q0[0]                               # brakes forward
    assert accelerations(stop.points) <= ACC / 1.5 + 1e-6


def test_a_stop_during_the_home_move_brakes_from_the_home_move():
    ex = executor()
    away = ROBOT.home + np.array([0.8, 0, 0, 0, 0, 0])
    ex.tick(0.0, away)
    seconds = ex.home_move(0.0, ROBOT.home, away, speed=0.3)
    stamp, points = ex.motion_points()
    assert stamp == 0.0 and len(points) == 2 and points[1][0] == seconds
    np.testing.assert_array_equal(points[1][1], ROBOT.home)
    ex.estop(True, 0.5)
    stop = ex.tick(0.5, away)
    reference, velocity = cubic_segment(0.0, away, np.zeros(6), seconds, ROBOT.home,
                                        np.zeros(6), 0.5)
    np.testing.assert_allclose(stop.points[0][1], reference)
    np.testing.assert_allclose(stop.points[0][2], velocity)
    assert velocity[0] < -0.3 and stop.arm[0] > ROBOT.home[0] + 0.2       # stops short of home


def test_without_any_joint_state_no_stop_is_formed_until_one_arrives():
    ex = executor()
    first = ex.tick(0.0, None)
    assert first.kind == "no_state" and not first.stop and not first.points
    held = ex.tick(0.01, ROBOT.home)
    assert held.kind == "hold" and held.stop                  # now it can say where to hold
    np.testing.assert_array_equal(held.points[-1][1], ROBOT.home)
    assert not ex.tick(0.02, ROBOT.home).stop


def test_deactivate_holds_with_a_stop_from_the_stream():
    ex = executor()
    assert ex.submit(ramp(ex, 0.0), 0.0)[0]
    _, q, t = stream(ex, 30)
    stop = ex.hold(t + 0.01, q)
    assert stop.stop and stop.kind == "paused" and np.any(stop.points[0][2])
    assert ex.tick(t + 0.02, q).kind == "paused"


def test_a_late_tick_goes_on_from_where_the_controller_braked_to():
    """A starved executor (no tick for 0.3 s): its last track coasted and braked to rest in the
    controller meanwhile, so the next command starts from that rest, not from the old command
    with its old velocity (which would be a jump the arm cannot make)."""
    from roboalign_ros.control.trajectory import points_at

    ex = executor()
    assert ex.submit(ramp(ex, 0.0, h=60), 0.0)[0]
    last, q, t = stream(ex, 30)
    rest, _ = points_at(last.points, 0.3)          # where the controller is after the gap
    fresh = ramp(ex, t + 0.29, h=60)               # the policy kept planning meanwhile
    assert ex.submit(fresh, t + 0.3)[0]
    late = ex.tick(t + 0.3, q)
    assert late.kind == "track"
    step = np.abs(late.points[0][1] - rest)
    assert np.all(step <= ROBOT.velocity * 0.5 * 0.01 + 1e-6), step   # one period from rest
    assert np.all(np.abs(late.points[0][2]) <= ACC * 0.01 + 1e-6)     # accelerating from 0
