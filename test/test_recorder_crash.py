"""recorder_node crash safety: kill -9 mid-episode (the spooled frames are recovered or removed,
saved episodes intact) and a full disk."""

from __future__ import annotations

import errno
import io
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import spin_until
from test_recorder_node import Feeder, check_episode_matches_feed, start_recorder, start_when_ready

pytestmark = pytest.mark.ros


def record(feeder: Feeder, seconds: float, save: bool = True):
    """Record one episode of `seconds` through the services; return the stop response."""
    start = start_when_ready(feeder)  # a restarted recorder may not have every stream yet
    assert start.success, start.message
    feeder.wait(seconds)
    return feeder.stop_episode(save=save)


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout: float) -> bool:
    """Poll `condition` until it holds or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill9_mid_episode(feeder: Feeder, proc, root: Path, saved: int) -> int:
    """Record `saved` episodes, start one more and SIGKILL the recorder in the middle of it;
    return how many frames of that episode the spool holds (what a restart can recover)."""
    from roboalign_ros.msg import RecorderStatus
    from roboalign_ros.recording.spool import SpoolReader, spool_name

    feeder.wait_matched()
    feeder.start()
    feeder.wait(0.3)
    for _ in range(saved):
        stop = record(feeder, 1.0)
        assert stop.success, stop.message
    assert feeder.start_episode().success
    assert spin_until(feeder.executor, lambda: any(
        m.state == RecorderStatus.STATE_RECORDING and m.frames >= 8 for m in feeder.statuses),
        30), "the episode records no frames"
    encoders = [int(pid) for task in Path(f"/proc/{proc.pid}/task").iterdir()
                for pid in (task / "children").read_text().split()]
    assert len(encoders) == 1, encoders  # the recorder's encoder process
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    # the encoder dies with it: no writer is left on the dataset the restart recovers
    assert wait_until(lambda: not alive(encoders[0]), 10), "the encoder outlived its recorder"
    reader = SpoolReader(root / "spool" / spool_name(saved))
    try:
        assert reader.stop is None  # never stopped: a crash, not an unfinished save
        return reader.complete_frames()
    finally:
        reader.close()


def test_kill9_mid_episode_keeps_every_earlier_episode_and_recovers_the_spooled_frames(
        rclpy_context, tmp_path):
    """Issue 22: a recorder SIGKILLed mid-episode and restarted: the episodes saved before are
    intact, the cut one is saved from the spool with every frame it holds, named in the log
    and the status."""
    from roboalign_ros.data import DatasetReader

    root = tmp_path / "ds"
    proc = start_recorder(root, tmp_path / "recorder.log")
    feeder = Feeder(rclpy_context)
    try:
        spooled = kill9_mid_episode(feeder, proc, root, saved=2)
        assert spooled >= 8
        reader = DatasetReader(root)
        lengths = [e.length for e in reader.episodes]
        assert len(lengths) == 2
        for i in range(2):
            ep = reader.episode(i)
            assert len(ep.frames["scene"]) == len(ep.states) == lengths[i]
            check_episode_matches_feed(feeder, ep)
        # a new recorder on the same root saves the cut episode from its spool, then appends
        restarted = time.time()
        proc = start_recorder(root, tmp_path / "recorder2.log")
        feeder.wait_for_recorder(since=restarted)
        assert spin_until(feeder.executor, lambda: any(
            "recovered episode 2" in m.message for m in feeder.statuses), 30), \
            [m.message for m in feeder.statuses[-3:]]
        status = feeder.status()
        assert status.episodes_saved == 3 and "cut short by a crash" in status.message
        assert "recovered episode 2: " in (tmp_path / "recorder2.log").read_text()
        reader = DatasetReader(root)
        assert [e.length for e in reader.episodes] == [*lengths, spooled]
        cut = reader.episode(2)
        assert cut.info.success is None  # nobody said how it ended
        check_episode_matches_feed(feeder, cut)
        stop = record(feeder, 0.6)
        assert stop.success and stop.episode_index == 3, stop.message
        assert not list(root.rglob("*.tmp")) and not list((root / "spool").iterdir())
        assert len(DatasetReader(root)) == 4
    finally:
        feeder.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)


def test_kill9_without_recover_partial_removes_the_cut_episode_and_names_it(rclpy_context,
                                                                           tmp_path):
    from roboalign_ros.data import DatasetReader
    from roboalign_ros.recording.spool import spool_name

    root = tmp_path / "ds"
    proc = start_recorder(root, tmp_path / "recorder.log")
    feeder = Feeder(rclpy_context)
    try:
        spooled = kill9_mid_episode(feeder, proc, root, saved=1)
        restarted = time.time()
        proc = start_recorder(root, tmp_path / "recorder2.log",
                              **{"spool.recover_partial": "false"})
        feeder.wait_for_recorder(since=restarted)
        removed = f"removed the episode spooled in {root / 'spool' / spool_name(1)} " \
                  f"({spooled} frames, cut short by a crash"
        assert removed in feeder.status().message
        assert removed in (tmp_path / "recorder2.log").read_text()
        assert len(DatasetReader(root)) == 1 and not list((root / "spool").iterdir())
        stop = record(feeder, 0.6)
        assert stop.success and stop.episode_index == 1, stop.message
    finally:
        feeder.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)


class _FullDisk:
    """`storage.open_for_write` whose files hit ENOSPC after `budget` bytes in all."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, path: Path) -> io.FileIO:
        path.parent.mkdir(parents=True, exist_ok=True)
        disk = self

        class File(io.FileIO):
            def write(self, data) -> int:  # type: ignore[override]
                disk.budget -= len(data)
                if disk.budget < 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return super().write(data)

        return File(path, "wb")


def test_disk_full_sets_error_state_and_keeps_saved_episodes(rclpy_context, tmp_path,
                                                             monkeypatch):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from roboalign_ros.data import DatasetReader, storage
    from roboalign_ros.msg import RecorderStatus
    from roboalign_ros.nodes.recorder_node import RecorderNode

    root = tmp_path / "ds"
    node = RecorderNode(context=rclpy_context, parameter_overrides=[
        Parameter("dataset_root", value=str(root)), Parameter("fps", value=10),
        Parameter("max_skew", value=0.2)])  # a loaded CI machine delays the feeder
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    feeder = Feeder(rclpy_context)
    try:
        feeder.wait_matched()
        feeder.start()
        feeder.wait(0.3)
        first = record(feeder, 1.0)
        assert first.success, first.message

        monkeypatch.setattr(storage, "open_for_write", _FullDisk(4_000))
        start = feeder.start_episode()
        if start.success:  # the disk fills while frames are encoded
            assert spin_until(feeder.executor, lambda: feeder.status().state
                              == RecorderStatus.STATE_ERROR, 45), "no error state"
        status = feeder.status()
        assert status.state == RecorderStatus.STATE_ERROR
        assert "disk full" in status.message and "earlier episodes are intact" in status.message
        assert spin_until(feeder.executor, lambda: any(
            s.state == RecorderStatus.STATE_ERROR for s in feeder.statuses), 5)
        stop = feeder.stop_episode()
        assert not stop.success and "disk full" in stop.message
        reader = DatasetReader(root)
        assert [e.length for e in reader.episodes] == [first.frames]
        assert len(reader.episode(0).frames["scene"]) == first.frames

        monkeypatch.undo()  # space freed: the next start reopens the dataset and goes on
        again = record(feeder, 0.6)
        assert again.success and again.episode_index == 1, again.message
        assert feeder.status().state == RecorderStatus.STATE_IDLE
        assert len(DatasetReader(root)) == 2 and not list(root.rglob("*.tmp"))
    finally:
        feeder.close()
        executor.shutdown()
        node.close()
        node.destroy_node()
