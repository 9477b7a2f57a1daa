"""Two real nodes in separate processes exchange an ActionChunk and an Image over DDS."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import spin_until, wait_matched

pytestmark = pytest.mark.ros


def test_chunk_and_image_cross_dds(rclpy_context):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from roboalign_ros.conversions import action_chunk_to_numpy, image_to_numpy
    from roboalign_ros.msg import ActionChunk

    sys.path.insert(0, str(Path(__file__).parent))
    import dds_talker

    talker = subprocess.Popen([sys.executable, str(Path(__file__).parent / "dds_talker.py")],
                              env=os.environ.copy())
    node = Node("dds_listener", context=rclpy_context)
    chunks, images = [], []
    subs = [node.create_subscription(ActionChunk, "/roboalign/action_chunk", chunks.append, 10),
            node.create_subscription(Image, "/camera/camera/color/image_raw", images.append, 10)]
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        wait_matched(executor, *subs)  # the talker repeats at 20 Hz: matched is enough
        assert spin_until(executor, lambda: chunks and images, timeout=30.0), \
            "no chunk/image arrived from the talker process within 30 s"
    finally:
        talker.send_signal(signal.SIGINT)
        talker.wait(timeout=10)
        executor.shutdown()
        node.destroy_node()

    chunk = action_chunk_to_numpy(chunks[-1])
    np.testing.assert_array_equal(chunk.actions, dds_talker.expected_chunk())
    assert chunk.stamp == pytest.approx(dds_talker.STAMP, abs=1e-9)
    assert chunk.dimension_names[-1] == "gripper" and len(chunk.dimension_names) == 7
    assert chunk.instruction == "pick up the red cube"
    assert chunk.reasoning.startswith("<think>")
    assert chunk.inference_time == pytest.approx(0.042, abs=1e-9)
    assert chunk.frame_id == "base_link" and chunk.sequence >= 1

    image = images[-1]
    assert image.header.stamp.sec == 1234 and image.header.stamp.nanosec == 500_000_000
    assert image.header.frame_id == "camera_color_optical_frame"
    np.testing.assert_array_equal(image_to_numpy(image), dds_talker.expected_image())
