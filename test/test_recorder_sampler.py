"""FrameSampler and action targets without ROS: nearest stamp, skew limit, drops, fps grid."""

import numpy as np
import pytest

from roboalign_ros.recording.actions import (
    ChunkTarget,
    TrajectoryParser,
    action_names,
    check_action_source,
    compose_action,
    gripper_value,
)
from roboalign_ros.recording.sampler import HOLD, FrameSampler


def make(fps=10, max_skew=0.02, delay=0.05):
    s = FrameSampler(fps=fps, max_skew=max_skew, delay=delay, history=10.0)
    s.add_stream("cam")
    s.add_stream("joints")
    return s


def test_nearest_stamp_is_picked_both_ways():
    s = make()
    for t in (0.0, 0.093, 0.108, 0.2):
        s.push("cam", t, f"img@{t}")
    for t in np.arange(0.0, 0.3, 0.002):
        s.push("joints", t, t)
    f = s.sample(0.1)
    assert f.dropped is None
    assert f.values["cam"] == "img@0.093" and f.stamps["cam"] == 0.093  # 7 ms before < 8 after
    assert abs(f.values["joints"] - 0.1) <= 0.001
    f = s.sample(0.104)
    assert f.values["cam"] == "img@0.108"  # the later one is nearer here
    assert f.skew == pytest.approx(0.004, abs=1e-3)


def test_nearest_tie_breaks_consistently_and_picks_closest():
    s = make()
    s.push("cam", 1.0, "a")
    s.push("cam", 1.010, "b")
    s.push("joints", 1.004, 0)
    assert s.sample(1.004).values["cam"] == "a"
    assert s.sample(1.006).values["cam"] == "b"


def test_skew_beyond_limit_drops_and_names_the_stream():
    s = make(max_skew=0.02)
    s.push("cam", 1.0, "img")
    s.push("joints", 1.05, 0)
    f = s.sample(1.0)
    assert f.dropped == "skew:joints" and f.values == {}
    assert f.skew == pytest.approx(0.05)


def test_missing_stream_drops():
    s = make()
    s.push("cam", 1.0, "img")
    assert s.sample(1.0).dropped == "missing:joints"


def test_grid_runs_at_fps_and_counts_drops():
    fps = 20
    s = make(fps=fps, max_skew=0.02, delay=0.05)
    for k in range(0, 300):  # 3 s of camera at 100 Hz and joints at 100 Hz
        t = k * 0.01
        s.push("cam", t + 0.001, k)
        if not 1.0 <= t < 1.5:  # a 0.5 s gap in the joint states
            s.push("joints", t, k)
    s.start(0.0)
    assert s.poll(now=0.04) == []  # nothing is due before t0 + delay
    frames = s.poll(now=2.0 + 0.05)
    times = [f.time for f in frames]
    np.testing.assert_allclose(np.diff(times), 1 / fps)
    assert times[0] == 0.0 and times[-1] == pytest.approx(2.0)
    dropped = [f for f in frames if f.dropped]
    # joints at 0.99 and 1.50: grid points 1.05 ... 1.45 have none within 20 ms
    assert [round(f.time, 2) for f in dropped] == [round(1.05 + 0.05 * i, 2) for i in range(9)]
    assert s.drops == {"skew:joints": 9}
    assert s.poll(now=2.05) == []  # each grid point is sampled once
    more = s.poll(now=2.2)  # a late tick catches up every missed grid point
    assert [round(f.time, 3) for f in more] == [2.05, 2.1, 2.15]


def test_stop_delivers_up_to_stop_time_then_halts():
    s = make(fps=10, delay=0.05)
    for k in range(100):
        s.push("cam", k * 0.01, k)
        s.push("joints", k * 0.01, k)
    s.start(0.0)
    s.stop(0.42)
    frames = s.poll(now=10.0)
    assert [round(f.time, 2) for f in frames] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert s.done()
    s.halt()
    assert not s.running and s.poll(now=20.0) == []


def test_out_of_order_samples_are_sorted():
    s = make()
    s.push("cam", 1.0, "a")
    s.push("cam", 0.9, "early")
    s.push("joints", 0.9, 0)
    assert s.sample(0.9).values["cam"] == "early"


def test_hold_stream_uses_latest_at_or_before_and_goes_stale():
    s = FrameSampler(fps=10, max_skew=0.02, delay=0.0)
    s.add_stream("cmd", HOLD, max_age=0.2)
    s.add_stream("twist", HOLD, max_age=0.2, stale_value="zero")
    s.add_stream("grip", HOLD, optional=True)
    s.push("cmd", 1.0, "c1")
    s.push("cmd", 1.3, "c2")
    s.push("twist", 1.0, "t1")
    f = s.sample(1.1)
    assert f.values == {"cmd": "c1", "twist": "t1", "grip": None}  # never the later c2
    assert s.sample(0.5).dropped == "missing:cmd"
    assert s.sample(1.25).dropped == "stale:cmd"
    assert s.sample(1.35).values["twist"] == "zero"  # Servo timed out: halted


def test_trajectory_and_chunk_targets():
    parse = TrajectoryParser(["j1", "j2"])
    target = parse(["j2", "j1"], [0.5, 1.0], [[2.0, 1.0], [4.0, 3.0]], start=10.0)
    np.testing.assert_allclose(target.at(10.2), [1.0, 2.0])  # heading to point 0
    np.testing.assert_allclose(target.at(10.7), [3.0, 4.0])
    np.testing.assert_allclose(target.at(99.0), [3.0, 4.0])  # JTC holds the last point
    assert parse(["j1", "j2"], [], [], start=0.0) is None
    with pytest.raises(ValueError, match="lacks arm joints"):
        parse(["j1"], [1.0], [[0.0]], start=0.0)
    with pytest.raises(ValueError, match="NaN"):
        parse(["j1", "j2"], [1.0], [[0.0, float("nan")]], start=0.0)
    chunk = ChunkTarget(stamp=5.0, dt=0.1, actions=np.arange(8, dtype=np.float32).reshape(4, 2),
                        max_age=0.5)
    np.testing.assert_allclose(chunk.at(5.0), [0, 1])
    np.testing.assert_allclose(chunk.at(5.21), [4, 5])
    np.testing.assert_allclose(chunk.at(5.6), [6, 7])
    assert chunk.at(5.81) is None  # 0.51 s past the last row: stale


def test_action_names_and_composition():
    assert action_names("servo", ["a"]) == ["vx", "vy", "vz", "wx", "wy", "wz", "gripper"]
    assert action_names("joint_trajectory", ["a", "b"]) == ["a", "b", "gripper"]
    with pytest.raises(ValueError, match="action_source"):
        check_action_source("telepathy")
    state = np.array([0.1, 0.2, 0.7], np.float32)
    np.testing.assert_allclose(compose_action("joint_trajectory", [1, 2], None, state), [1, 2, 0.7])
    np.testing.assert_allclose(compose_action("joint_trajectory", [1, 2], 0.0, state), [1, 2, 0])
    from roboalign_ros.robot import load_robot_config

    robot = load_robot_config("sim_arm")  # a command is the finger joint's position (m)
    assert gripper_value([robot.gripper_to_joint(0.3)], robot) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="outside"):
        gripper_value([1.5], robot)
    with pytest.raises(ValueError, match="1 value"):
        gripper_value([0.01, 0.02], robot)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="fps"):
        FrameSampler(fps=0, max_skew=0.1)
    with pytest.raises(ValueError, match="max_skew"):
        FrameSampler(fps=10, max_skew=-1)
    s = make()
    with pytest.raises(ValueError, match="already"):
        s.add_stream("cam")
    with pytest.raises(ValueError, match="kind"):
        s.add_stream("x", "sometimes")


def test_hold_stream_keeps_an_old_command_across_trimming():
    s = FrameSampler(fps=10, max_skew=0.02, delay=0.0, history=1.0)
    s.add_stream("grip", HOLD)
    s.push("grip", 0.0, "open")  # sent once, long ago
    s.push("grip", 10.0, "closed")  # trimming must keep "open" for frames before 10.0
    assert s.sample(9.9).values["grip"] == "open"
    assert s.sample(10.0).values["grip"] == "closed"
