"""recorder_node while the encoder is behind (issue 22): a stop answers at once, the status says
"encoding" until the episode is saved, and no frame is lost meanwhile.

The node runs in this process so that its encoder process can be held back (SIGSTOP) for as
long as the test needs: a machine too slow to encode live.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from conftest import spin_until
from test_recorder_node import Feeder, check_episode_matches_feed

pytestmark = pytest.mark.ros


def test_a_stop_while_encoding_answers_at_once_and_saves_when_the_encoder_is_done(
        rclpy_context, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from roboalign_ros.data import DatasetReader
    from roboalign_ros.msg import RecorderStatus
    from roboalign_ros.nodes.recorder_node import RecorderNode

    root = tmp_path / "ds"
    node = RecorderNode(context=rclpy_context, parameter_overrides=[
        Parameter("dataset_root", value=str(root)), Parameter("fps", value=10),
        Parameter("stop_wait", value=0.0), Parameter("status_rate", value=5.0)])
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    feeder = Feeder(rclpy_context)
    encoder = node.session.encoder_pid
    try:
        feeder.wait_matched()
        feeder.start()
        feeder.wait(0.3)
        os.kill(encoder, signal.SIGSTOP)  # the encoder does not run at all from here
        assert feeder.start_episode().success
        feeder.wait(2.0)
        stop = feeder.stop_episode(save=True, outcome=1)
        assert stop.success and stop.frames >= 10, stop.message
        assert f"encoding (0 of {stop.frames} frames done): saved when it finishes" in \
            stop.message
        # none lost for the encoder (an input this loaded process sent late is another matter)
        assert "queue_full" not in stop.message and "spool_full" not in stop.message
        status = feeder.status()
        assert status.state == RecorderStatus.STATE_IDLE and status.episodes_saved == 0
        assert f"encoding episode 0 (0 of {stop.frames} frames), saved when done" in \
            status.message
        assert spin_until(feeder.executor, lambda: any(
            kv.key == "encoder_backlog_frames" and kv.value == str(stop.frames)
            for s in feeder.diagnostics for kv in s.values), 10)
        os.kill(encoder, signal.SIGCONT)
        assert spin_until(feeder.executor, lambda: any(
            m.episodes_saved == 1 for m in feeder.statuses), 60), "never saved"
        status = feeder.status()
        assert "encoding" not in status.message
        ep = DatasetReader(root).episode(0)
        assert len(ep) == stop.frames and ep.info.success is True
        check_episode_matches_feed(feeder, ep)
    finally:
        os.kill(encoder, signal.SIGCONT)
        feeder.close()
        executor.shutdown()
        node.close()
        node.destroy_node()
