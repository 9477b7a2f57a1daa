"""The sim's trajectory follower and rate limiter without ROS: stamps never make a joint jump."""

import numpy as np
import pytest

from roboalign_ros.sim.controllers import (
    CommandRejected,
    JointTrajectoryFollower,
    RateLimiter,
    TooFast,
)

NAMES = ["j1", "j2"]
VELOCITY = np.array([2.0, 2.0])


def follower(q0=(0.0, 0.0)):
    f = JointTrajectoryFollower(NAMES, [-3, -3], [3, 3], VELOCITY)
    f.reset(np.array(q0))
    return f


def max_speed(f, t0, t1, dt=0.01):
    """Largest joint speed of the commanded positions sampled every ``dt`` in [t0, t1]."""
    qs = np.array([f.sample(t) for t in np.arange(t0, t1 + dt / 2, dt)])
    return float(np.max(np.abs(np.diff(qs, axis=0)) / dt))


def test_probe_repro_past_stamp_is_refused_not_jumped():
    # issue 10 item 4: stamp now - 9.9 s, one point at 10 s, +1.5 rad: 0.15 rad/s nominally,
    # 15 rad/s over the 0.1 s that remain
    f, now = follower(), 100.0
    with pytest.raises(TooFast, match=r"15\.000 rad/s > velocity limit 2\.000.*9\.900 s in the "
                                      r"past"):
        f.command(NAMES, [10.0], [[1.5, 0.0]], start_time=now - 9.9, now=now,
                  current=np.zeros(2))
    assert not f.active
    np.testing.assert_allclose(f.sample(now + 0.05), [0.0, 0.0])


def test_feasible_past_stamp_is_followed_from_now_without_a_jump():
    f, now = follower(), 100.0
    note = f.command(NAMES, [0.5, 2.0], [[0.1, 0.0], [0.6, 0.0]], start_time=now - 1.0,
                     now=now, current=np.zeros(2))
    assert "1.000 s in the past" in note and "1 of 2 points already due were skipped" in note
    np.testing.assert_allclose(f.sample(now), [0.0, 0.0])  # no jump to where it "should" be
    # the remaining 0.6 rad over the remaining 1.0 s
    assert max_speed(f, now, now + 1.2) == pytest.approx(0.6, rel=0.02)
    np.testing.assert_allclose(f.sample(now + 1.0), [0.6, 0.0])


def test_stamp_now_and_stamp_zero_behave_alike():
    a, b, now = follower(), follower(), 50.0
    a.command(NAMES, [1.0], [[1.0, -1.0]], start_time=0.0, now=now, current=np.zeros(2))
    assert b.command(NAMES, [1.0], [[1.0, -1.0]], start_time=now - 0.01, now=now,
                     current=np.zeros(2)) is None  # transport latency: no note
    np.testing.assert_allclose(a.sample(now + 0.5), [0.5, -0.5])
    np.testing.assert_allclose(b.sample(now + 0.5), [0.5, -0.5], atol=0.01)


def test_trajectory_that_ends_now_is_refused():
    f, now = follower(), 10.0
    with pytest.raises(CommandRejected, match="ended 0.000 s in the past"):
        f.command(NAMES, [1.0], [[0.5, 0.0]], start_time=now - 1.0, now=now,
                  current=np.zeros(2))


def test_too_fast_is_still_refused_and_a_nearly_static_first_point_is_not():
    f, now = follower(), 0.0
    with pytest.raises(TooFast, match="velocity limit"):
        f.command(NAMES, [0.01], [[0.5, 0.0]], start_time=0.0, now=now, current=np.zeros(2))
    f.command(NAMES, [0.0, 1.0], [[5e-4, 0.0], [0.5, 0.0]], start_time=0.0, now=now,
              current=np.zeros(2))
    assert f.active


def test_future_trajectory_after_the_running_one_ends_does_not_cut_it_short():
    f, now = follower(), 0.0
    f.command(NAMES, [1.0], [[1.0, 0.0]], start_time=0.0, now=now, current=np.zeros(2))
    f.command(NAMES, [1.0], [[0.0, 0.0]], start_time=2.0, now=now + 0.1, current=np.zeros(2))
    np.testing.assert_allclose(f.sample(0.5), [0.5, 0.0])  # still on the first one
    assert max_speed(f, 0.5, 3.5) == pytest.approx(1.0, rel=0.02)
    np.testing.assert_allclose(f.sample(3.0), [0.0, 0.0])


def test_two_queued_future_trajectories_keep_the_running_one_until_they_start():
    f = follower()
    f.command(NAMES, [2.0], [[1.0, 0.0]], start_time=0.0, now=0.0, current=np.zeros(2))
    f.command(NAMES, [1.0], [[1.0, 1.0]], start_time=1.0, now=0.1, current=np.zeros(2))
    f.command(NAMES, [1.0], [[1.0, 1.0]], start_time=1.5, now=0.2, current=np.zeros(2))
    np.testing.assert_allclose(f.sample(0.5), [0.25, 0.0])
    assert max_speed(f, 0.5, 3.0) < 2.0
    np.testing.assert_allclose(f.sample(3.0), [1.0, 1.0])


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
