"""The recorder's spool (issue 22): frames go raw to disk, the videos are encoded behind them.

ROS-free: a `RecordingSession` on a fake clock; where a test needs its encoder far behind the
recording, the encoder process is stopped (SIGSTOP) and continued later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import numpy as np
import pytest
from test_recording_session import ARM, Clock, feed, make

from roboalign_ros.data import DatasetReader
from roboalign_ros.data.synthetic import synthetic_depth
from roboalign_ros.recording.actions import TrajectoryParser
from roboalign_ros.recording.session import RecorderState
from roboalign_ros.recording.spool import (
    EpisodeSpool,
    SpoolLayout,
    SpoolReader,
    leftover_spools,
    spool_name,
)

PARSE = TrajectoryParser(ARM)


def command(t: float):
    """A trajectory command received at `t` (target t, -t)."""
    return PARSE(ARM, [0.1], [[t, -t]], start=t)


@contextlib.contextmanager
def stalled(session):
    """The session's encoder process stopped (SIGSTOP) until the block ends: a machine far
    too slow to encode live."""
    pid = session.encoder_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stalled_encoder_loses_no_frame_and_a_stop_saves_once_it_is_done(tmp_path):
    clock = Clock()
    s = make(tmp_path, clock, queue_seconds=0.4)  # 4 frames in memory: the spool takes them
    feed(s, clock, 0.3, command=command)
    with stalled(s):
        assert s.start_episode("reach").success
        for _ in range(10):  # 30 frames while the encoder does not run at all
            feed(s, clock, 0.3, command=command)
            s.wait_spooled()  # at the camera's pace, not all at once: the spool keeps up
        r = s.stop_episode(save=True, success=True, wait=0.0)
        assert r.success and r.frames >= 28 and "dropped 0" in r.message, r.message
        assert f"encoding (0 of {r.frames} frames done): saved when it finishes" in r.message
        status = s.status()
        assert status.state == RecorderState.IDLE and status.episodes_saved == 0
        assert f"encoding episode 0 (0 of {r.frames} frames), saved when done" in \
            status.message
        assert status.backlog == r.frames and status.drops == {}
        assert not (tmp_path / "ds" / "meta" / "episodes").exists()  # nothing committed yet
        # the next episode starts while the first one is still encoding
        nxt = s.start_episode("reach again")
        assert nxt.success and nxt.episode_index == 1, nxt.message
        feed(s, clock, 1.0, command=command)
    second = s.stop_episode(save=True, success=False)  # waits until both are saved
    assert second.success and second.message.startswith("saved episode 1"), second.message
    assert s.wait_encoded(30)
    status = s.status()
    assert status.episodes_saved == 2 and "encoding" not in status.message
    assert status.spool_bytes == 0 and not leftover_spools(tmp_path / "ds" / "spool")
    s.close()
    reader = DatasetReader(tmp_path / "ds")
    assert [e.length for e in reader.episodes] == [r.frames, second.frames]
    assert [e.success for e in reader.episodes] == [True, False]
    ep = reader.episode(0)
    np.testing.assert_allclose(np.diff(ep.capture_times), 0.1, atol=1e-6)  # no hole
    np.testing.assert_allclose(ep.actions[:, 0], ep.capture_times, atol=1e-4)


def test_the_spool_is_bounded_frames_beyond_it_are_dropped_and_counted(tmp_path):
    clock = Clock()
    layout = SpoolLayout(3, 3, [("scene", 8, 8, False)])
    assert layout.record_bytes == 64 + 192  # header block + 8x8x3 pixels, 64-byte aligned
    s = make(tmp_path, clock, spool_max_gb=5 * layout.record_bytes / 1e9)
    feed(s, clock, 0.3, command=command)
    with stalled(s):
        assert s.start_episode("reach").success
        feed(s, clock, 1.5, command=command)
        r = s.stop_episode(save=True, wait=0.0)
        assert r.success and r.frames == 5, r.message
        status = s.status()
        assert status.drops["spool_full"] >= 8 and status.spool_bytes == 5 * layout.record_bytes
    assert s.wait_encoded(30)
    assert s.status().spool_bytes == 0
    s.close()
    assert len(DatasetReader(tmp_path / "ds").episode(0)) == 5


def test_depth_goes_through_the_spool_bit_exact(tmp_path):
    clock = Clock()
    s = make(tmp_path, clock, depth_cameras=["scene_depth"])
    pushed = {}

    def run(seconds):
        for _ in range(int(round(seconds * 100))):
            k = int(round(clock.t * 100))
            if k % 10 == 0:  # the depth camera at the frame rate, stamped on the grid
                pushed[k] = synthetic_depth(k, 8, 8)
            s.push_image("scene_depth", k / 100, pushed[max(pushed)], "16UC1")
            feed(s, clock, 0.01, command=command)

    pushed[int(round(clock.t * 100))] = synthetic_depth(0, 8, 8)
    run(0.3)
    assert s.start_episode("go").success
    run(1.0)
    r = s.stop_episode(save=True)
    assert r.success, r.message
    s.close()
    ep = DatasetReader(tmp_path / "ds").episode(0, depth=True)
    for t, depth in zip(ep.capture_times, ep.depth["scene_depth"]):
        k = max(k for k in pushed if k <= round(t * 100))
        np.testing.assert_array_equal(depth, pushed[k])


def spool_of_a_killed_recorder(tmp_path, index: int, frames: int, stopped: bool | None = None,
                               torn: bool = False):
    """The spool a recorder killed mid-episode leaves (`stopped`: after its stop, with that
    outcome); `torn`: half of one more frame was being written."""
    spool = EpisodeSpool.create(tmp_path / "ds" / "spool", index, task="reach", operator="ana",
                                source="teleop", fps=10, state_dim=3, action_dim=3,
                                streams=[("scene", 8, 8, False)])
    for i in range(frames):
        spool.append(100.0 + i / 10, np.full(3, i, np.float32), np.full(3, -i, np.float32),
                     {"scene": np.full((8, 8, 3), 10 * i, np.uint8)})
    if torn:
        spool._file.write(bytes(spool.layout.record_bytes // 2))
    if stopped is not None:
        spool.finish(stopped)
    else:
        spool.close()  # the process died: nothing else happens
    return spool.path


def test_spools_left_by_a_dead_recorder_are_saved_at_the_next_start(tmp_path):
    stopped = spool_of_a_killed_recorder(tmp_path, 0, 6, stopped=False)
    cut = spool_of_a_killed_recorder(tmp_path, 1, 4, torn=True)
    messages = []
    s = make(tmp_path, Clock(), on_info=messages.append)
    assert s.wait_encoded(30)
    status = s.status()
    assert status.episodes_saved == 2 and status.episode_index == 2
    assert f"recovering episode 0 (6 frames, stopped, but the recorder exited before encoding " \
           f"it) from {stopped}" in messages
    assert f"recovering episode 1 (4 frames, cut short by a crash of the recorder, outcome " \
           f"unknown) from {cut}" in messages
    assert "recovered episode 1: 4 frames (cut short by a crash of the recorder, outcome " \
           "unknown)" in status.message
    s.close()
    reader = DatasetReader(tmp_path / "ds")
    assert [(e.length, e.success, e.operator) for e in reader.episodes] == [
        (6, False, "ana"), (4, None, "ana")]
    ep = reader.episode(1)  # the torn fifth frame is not in it
    np.testing.assert_array_equal(ep.states[:, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(ep.capture_times, [100.0, 100.1, 100.2, 100.3], atol=1e-6)
    assert not leftover_spools(tmp_path / "ds" / "spool")


def test_without_recover_partial_a_cut_episode_is_removed_and_named(tmp_path):
    cut = spool_of_a_killed_recorder(tmp_path, 0, 3)
    empty = spool_of_a_killed_recorder(tmp_path, 1, 0)
    messages = []
    s = make(tmp_path, Clock(), recover_partial=False, on_info=messages.append)
    assert s.wait_encoded(30)
    assert messages == [
        f"removed the episode spooled in {cut} (3 frames, cut short by a crash of the "
        "recorder; recover_partial off)",
        f"removed the episode spooled in {empty} (no complete frame)"]
    assert s.status().episodes_saved == 0 and messages[-1] in s.status().message
    assert not leftover_spools(tmp_path / "ds" / "spool")
    s.close()


def test_a_spool_that_does_not_fit_the_recorder_is_left_in_place_with_an_error(tmp_path):
    path = spool_of_a_killed_recorder(tmp_path, 0, 2)
    errors = []
    s = make(tmp_path, Clock(), depth_cameras=["scene_depth"], on_error=errors.append)
    assert s.wait_encoded(30)
    assert len(errors) == 1 and f"the spool {path} does not fit this recorder (streams" in \
        errors[0] and "left in place" in errors[0]
    assert path.is_dir() and s.status().episodes_saved == 0
    s.close()


def test_the_encoder_is_a_process_of_its_own_at_a_lower_cpu_priority(tmp_path):
    s = make(tmp_path, Clock(), encoder_nice=7)
    try:
        pid = s.encoder_pid
        assert pid is not None and pid != os.getpid()
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, base + 7)
    finally:
        s.close()
    assert s.encoder_pid is None  # closed with the session


def test_spool_records_round_trip_and_refuse_what_does_not_fit(tmp_path):
    layout = SpoolLayout(2, 1, [("c", 3, 5, False), ("d", 3, 5, True)])  # odd sizes: padded
    assert layout.record_bytes % 64 == 0 and layout.offsets["d"] % 64 == 0
    rgb = np.arange(45, dtype=np.uint8).reshape(3, 5, 3)
    depth = np.arange(15, dtype=np.uint16).reshape(3, 5) * 4000
    spool = EpisodeSpool.create(tmp_path, 3, task="t", operator="", source="teleop", fps=30,
                                state_dim=2, action_dim=1,
                                streams=[("c", 3, 5, False), ("d", 3, 5, True)])
    assert spool.path == tmp_path / spool_name(3)
    spool.append(1.5, np.array([1, 2]), np.array([3]), {"c": rgb, "d": depth})
    with pytest.raises(ValueError, match=r"images\['d'\]: expected uint16 \(3, 5\)"):
        spool.append(1.6, np.array([1, 2]), np.array([3]), {"c": rgb, "d": rgb})
    with pytest.raises(ValueError, match="state/action: 4 values"):
        spool.append(1.6, np.array([1, 2, 3]), np.array([3]), {"c": rgb, "d": depth})
    reader = SpoolReader(spool.path)
    assert reader.complete_frames() == 1 and reader.stop is None
    stamp, state, action, images = reader.frame(0)
    assert stamp == 1.5 and state.tolist() == [1, 2] and action.tolist() == [3]
    # rows are kept per frame by the writer: never views that pin a whole record in memory
    assert state.base is None or state.base.nbytes < 64
    assert not np.shares_memory(state, images["c"].base)
    np.testing.assert_array_equal(images["c"], rgb)
    np.testing.assert_array_equal(images["d"], depth)
    with pytest.raises(ValueError, match="frame 1 is not in the spool"):
        reader.frame(1)
    reader.close()
    spool.finish(True)
    assert SpoolReader(spool.path).stop == {"frames": 1, "success": True}
    (spool.path / "meta.json").write_text("{")
    with pytest.raises(ValueError, match="no readable meta.json"):
        SpoolReader(spool.path)


def test_an_encoder_that_dies_stops_the_recording_and_the_next_start_saves_its_spool(tmp_path):
    clock = Clock()
    errors, infos, failed = [], [], threading.Event()
    s = make(tmp_path, clock, on_error=lambda m: (errors.append(m), failed.set()),
             on_info=infos.append)
    feed(s, clock, 0.3, command=command)
    assert s.start_episode("reach").success
    for _ in range(4):
        feed(s, clock, 0.3, command=command)
        s.wait_spooled()
    spooled = s.status().frames
    os.kill(s.encoder_pid, signal.SIGKILL)  # out of memory, say
    assert failed.wait(30) and s.state == RecorderState.ERROR
    assert errors and "the encoder process exited (code -9)" in errors[0]
    assert "recorder error" in s.stop_episode().message
    feed(s, clock, 0.3, command=command)
    again = s.start_episode("reach again")  # reopens: the cut episode comes from its spool
    assert again.success and again.episode_index == 1, again.message
    assert any(m.startswith("recovering episode 0 (") for m in infos), infos
    feed(s, clock, 1.0, command=command)
    assert s.stop_episode(save=True).success
    s.close()
    reader = DatasetReader(tmp_path / "ds")
    assert [e.length for e in reader.episodes][0] == spooled
    assert reader.episodes[0].success is None and len(reader) == 2


def test_a_discard_answers_once_the_encoder_has_deleted_the_videos_it_began(tmp_path):
    """Found by a CI run beside a burner: the discard answered while the (niced, slow) encoder
    still had the episode's .mp4.tmp open; it now waits for the encoder to say it is gone."""
    import threading
    import time

    clock = Clock()
    s = make(tmp_path, clock)
    feed(s, clock, 0.3, command=command)
    assert s.start_episode("reach").success
    videos = tmp_path / "ds" / "videos"
    deadline = time.monotonic() + 30
    while not list(videos.rglob("*.tmp")):   # the encoder follows the spool: files begun
        assert time.monotonic() < deadline, "the encoder never began the episode's videos"
        feed(s, clock, 0.1, command=command)
        s.wait_spooled()
    pid = s.encoder_pid
    os.kill(pid, signal.SIGSTOP)             # as slow as a niced encoder beside a burner
    threading.Timer(0.5, os.kill, (pid, signal.SIGCONT)).start()
    start = time.monotonic()
    r = s.stop_episode(save=False, success=None)
    waited = time.monotonic() - start
    assert r.success and "discarded" in r.message, r.message
    assert not list(videos.rglob("*.tmp")), f"answered after {waited:.2f} s with files left"
    assert waited >= 0.4, f"answered after {waited:.2f} s, before the encoder could run"
    s.close()
