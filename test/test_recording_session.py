"""RecordingSession without ROS: action sources, fallbacks, state machine (fake clock)."""

from __future__ import annotations

import numpy as np
import pytest

from roboalign_ros.data import DatasetReader
from roboalign_ros.recording.actions import ChunkTarget, TrajectoryParser
from roboalign_ros.recording.session import RecorderState, RecordingSession, SessionConfig

ARM = ["j1", "j2"]


class Clock:
    """Manually advanced clock."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def feed(session: RecordingSession, clock: Clock, seconds: float, fps: int = 10,
         command=None, gripper=None) -> None:
    """Advance time at 100 Hz pushing images, states and commands, ticking as a node would."""
    for _ in range(int(round(seconds * 100))):
        clock.t += 0.01
        t = clock.t
        if int(round(t * 100)) % (100 // fps) == 0:
            img = np.full((8, 8, 3), int(t * 10) % 255, np.uint8)
            session.push_image("scene", t, img)
        session.push_state(t, np.array([np.sin(t), np.cos(t), 0.8], np.float32))
        if command is not None:  # received half a tick early: no ties with frame times
            session.push_command(t - 0.005, command(t))
        if gripper is not None:
            session.push_gripper(t, gripper)
        session.tick()


def make(tmp_path, clock, on_info=None, on_error=None, **kw) -> RecordingSession:
    cfg = SessionConfig(root=tmp_path / "ds", fps=10, arm_joints=ARM, cameras=["scene"],
                        max_skew=0.02, delay=0.05, **kw)
    return RecordingSession(cfg, clock=clock, on_info=on_info, on_error=on_error)


def test_joint_trajectory_actions_and_gripper_fallback(tmp_path):
    clock = Clock()
    s = make(tmp_path, clock)
    parse = TrajectoryParser(ARM)
    feed(s, clock, 0.2, command=lambda t: parse(ARM, [0.1], [[t, -t]], start=t))
    assert s.start_episode("reach", source="teleop").success
    feed(s, clock, 1.0, command=lambda t: parse(ARM, [0.1], [[t, -t]], start=t))
    r = s.stop_episode(save=True, success=None)
    assert r.success and r.frames >= 8, r.message
    ep = DatasetReader(tmp_path / "ds").episode(0)
    # the action is the latest command received at or before the frame time
    np.testing.assert_allclose(ep.actions[:, 0], ep.capture_times, atol=1e-4)
    np.testing.assert_allclose(ep.actions[:, 1], -ep.capture_times, atol=1e-4)
    np.testing.assert_allclose(ep.actions[:, 2], 0.8)  # no gripper command: measured opening
    assert ep.info.success is None
    s.close()


def test_servo_twist_times_out_to_zero_and_chunks_are_scheduled(tmp_path):
    clock = Clock()
    s = make(tmp_path / "servo", clock, action_source="servo", servo_timeout=0.2)
    twist = np.array([0.1, 0, 0, 0, 0, 0.5], np.float32)
    feed(s, clock, 0.2)
    assert s.start_episode("nudge").success
    feed(s, clock, 0.5, command=lambda t: twist, gripper=0.0)
    feed(s, clock, 0.6, gripper=0.0)  # twists stop: Servo halts after its timeout
    r = s.stop_episode()
    assert r.success, r.message
    ep = DatasetReader(tmp_path / "servo" / "ds").episode(0)
    assert DatasetReader(tmp_path / "servo" / "ds").action_names[:2] == ["vx", "vy"]
    moving = ep.actions[:, 0] > 0
    assert moving[:3].all() and not moving[-3:].any()
    np.testing.assert_allclose(ep.actions[-1], 0.0)
    s.close()

    clock = Clock()
    s = make(tmp_path / "chunk", clock, action_source="action_chunk", action_max_age=0.3)
    rows = np.stack([np.array([i, -i, 1.0], np.float32) for i in range(5)])
    first_push = {}

    def chunk(t):  # a new 5-row chunk (dt 0.1) every 0.5 s, stamped at its observation time
        key = round(np.floor(t * 2 + 1e-6) / 2, 2)
        first_push.setdefault(key, t - 0.005)
        return ChunkTarget(key, 0.1, rows + np.array([key, key, 0], np.float32), max_age=0.3)

    feed(s, clock, 0.1, command=chunk)
    assert s.start_episode("follow the policy", source="policy").success
    feed(s, clock, 1.0, command=chunk)
    feed(s, clock, 1.0)  # the policy stops: frames past the last row + max_age are dropped
    r = s.stop_episode()
    assert r.success, r.message
    assert s.status().drops.get("stale:command", 0) >= 2
    ep = DatasetReader(tmp_path / "chunk" / "ds").episode(0)
    for t, a in zip(ep.capture_times, ep.actions):
        key = max(k for k, pushed in first_push.items() if pushed <= t + 1e-9)
        i = min(int(np.floor((t - key) / 0.1 + 0.5)), 4)
        np.testing.assert_allclose(a, [i + key, -i + key, 1.0], atol=1e-3)
    s.close()


def test_state_machine_refuses_bad_requests(tmp_path):
    clock = Clock()
    s = make(tmp_path, clock)
    r = s.start_episode("x")
    assert not r.success and "no camera 'scene' received" in r.message
    feed(s, clock, 0.3)
    assert not s.stop_episode().success
    assert "source" in s.start_episode("x", source="dream").message
    assert "task" in s.start_episode("  ").message
    s.set_instruction("wave")
    assert s.start_episode("").success and s.status().task == "wave"
    assert "already being recorded" in s.start_episode("y").message
    feed(s, clock, 0.5)
    r = s.stop_episode(save=True)  # no commands at all: every frame dropped, nothing saved
    assert not r.success and "no frames" in r.message and "missing:command" in r.message
    assert s.state == RecorderState.IDLE and s.status().episodes_saved == 0
    s.close()


def test_incompatible_existing_dataset_is_refused(tmp_path):
    clock = Clock()
    s = make(tmp_path, clock)
    parse = TrajectoryParser(ARM)
    feed(s, clock, 0.2, command=lambda t: parse(ARM, [0.1], [[t, -t]], start=t))
    assert s.start_episode("reach").success
    feed(s, clock, 0.5, command=lambda t: parse(ARM, [0.1], [[t, -t]], start=t))
    assert s.stop_episode().success
    s.close()
    with pytest.raises(ValueError, match="dataset_root.*fps 10 \\(recorder: 20\\)"):
        RecordingSession(SessionConfig(root=tmp_path / "ds", fps=20, arm_joints=ARM,
                                       cameras=["scene"]))
    with pytest.raises(ValueError, match="action_source"):
        SessionConfig(root=tmp_path, fps=10, arm_joints=ARM, cameras=["scene"],
                      action_source="telepathy")


def test_outcomes_outside_the_enum_are_refused_with_the_valid_ones():
    from roboalign_ros.recording.session import outcome_success

    assert [outcome_success(k) for k in (0, 1, 2)] == [None, True, False]
    for bad in (7, 99):
        with pytest.raises(ValueError, match=rf"outcome: {bad} is not one of 0 \(unknown\), "
                                             r"1 \(success\), 2 \(failure\)"):
            outcome_success(bad)


def test_control_characters_in_task_or_operator_are_refused(tmp_path):
    clock = Clock()
    s = make(tmp_path, clock)
    feed(s, clock, 0.3)
    r = s.start_episode("\x01\x02")
    assert not r.success and "task: '\\x01\\x02' contains control characters" in r.message
    r = s.start_episode("pick up\nthe cube")
    assert not r.success and "control characters ['\\n']" in r.message
    assert "operator" in s.start_episode("reach", operator="ana\x1b[2J").message
    assert s.state == RecorderState.IDLE
    assert s.start_episode("reach", operator="ana").success
    s.close()


def test_depth_encodings_become_millimetres_and_a_colour_frame_is_no_depth(tmp_path):
    from roboalign_ros.recording.session import to_depth_mm

    metres = np.array([[0.5, np.nan], [np.inf, 70.0]], np.float32)
    np.testing.assert_array_equal(to_depth_mm(metres, "32FC1"), [[500, 0], [0, 0]])
    mm = np.array([[1, 65535]], np.uint16)
    assert to_depth_mm(mm, "16UC1").dtype == np.uint16
    with pytest.raises(ValueError, match="not a depth encoding"):
        to_depth_mm(mm, "rgb8")
    clock = Clock()
    s = make(tmp_path, clock, depth_cameras=["scene_depth"])
    parse = TrajectoryParser(ARM)

    def run(seconds, depth, encoding):
        for _ in range(int(round(seconds * 100))):
            s.push_image("scene_depth", clock.t + 0.01, depth, encoding)
            feed(s, clock, 0.01, command=lambda t: parse(ARM, [0.1], [[t, -t]], start=t))

    run(0.3, np.zeros((8, 8, 3), np.uint8), "rgb8")
    result = s.start_episode("go")
    assert not result.success and "scene_depth" in result.message and "depth" in result.message
    run(0.1, np.full((8, 8), 700, np.uint16), "16UC1")
    assert s.start_episode("go").success
    run(1.0, np.full((8, 8), 700, np.uint16), "16UC1")
    r = s.stop_episode(save=True)
    assert r.success, r.message
    s.close()
    ep = DatasetReader(tmp_path / "ds").episode(0, depth=True)
    assert len(ep) > 3 and np.all(ep.depth["scene_depth"] == 700)
    with pytest.raises(ValueError, match="duplicate"):
        SessionConfig(root=tmp_path, fps=10, arm_joints=ARM, cameras=["scene"],
                      depth_cameras=["scene"])
