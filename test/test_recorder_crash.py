"""recorder_node crash safety: kill -9 mid-episode and a full disk leave saved episodes intact."""

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
from test_recorder_node import Feeder, check_episode_matches_feed, start_recorder

pytestmark = pytest.mark.ros


def record(feeder: Feeder, seconds: float, save: bool = True):
    """Record one episode of `seconds` through the services; return the stop response."""
    start = feeder.start_episode()
    assert start.success, start.message
    feeder.wait(seconds)
    return feeder.stop_episode(save=save)


def test_kill9_mid_episode_keeps_every_earlier_episode(rclpy_context, tmp_path):
    from roboalign_ros.data import DatasetReader

    root = tmp_path / "ds"
    proc = start_recorder(root, tmp_path / "recorder.log")
    feeder = Feeder(rclpy_context)
    try:
        feeder.wait_matched()
        feeder.start()
        feeder.wait(0.3)
        lengths = []
        for _ in range(2):
            stop = record(feeder, 1.0)
            assert stop.success, stop.message
            lengths.append(stop.frames)
        assert feeder.start_episode().success
        feeder.wait(1.5)  # episode 2 is being encoded into temp files
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert list(root.rglob("*.tmp")), "expected the killed episode's temp files"
        reader = DatasetReader(root)
        assert [e.length for e in reader.episodes] == lengths
        for i in range(2):
            ep = reader.episode(i)
            assert len(ep.frames["scene"]) == len(ep.states) == lengths[i]
            check_episode_matches_feed(feeder, ep)
        # a new recorder on the same root recovers the dataset and appends
        restarted = time.time()
        proc = start_recorder(root, tmp_path / "recorder2.log")
        feeder.wait_for_recorder(since=restarted)
        stop = record(feeder, 0.6)
        assert stop.success and stop.episode_index == 2, stop.message
        assert not list(root.rglob("*.tmp"))
        assert len(DatasetReader(root)) == 3
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
