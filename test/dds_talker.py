"""A real node in its own process for the DDS test: publishes a known chunk and image."""

import sys

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image

from roboalign_ros.conversions import numpy_to_action_chunk, numpy_to_image
from roboalign_ros.msg import ActionChunk

STAMP = 1234.5  # fixed observation stamp (s) the listener checks


def expected_chunk() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(16, 7)).astype(np.float32)


def expected_image() -> np.ndarray:
    return np.random.default_rng(8).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


def main() -> int:
    rclpy.init()
    node = Node("dds_talker")
    chunk_pub = node.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)
    image_pub = node.create_publisher(Image, "/camera/camera/color/image_raw", 10)
    names = [f"joint_{i}" for i in range(1, 7)] + ["gripper"]
    sequence = 0

    def publish():
        nonlocal sequence
        sequence += 1
        chunk_pub.publish(numpy_to_action_chunk(
            expected_chunk(), stamp=STAMP, dt=0.1, action_space="joint_position",
            dimension_names=names, sequence=sequence, instruction="pick up the red cube",
            reasoning="<think>the cube is left</think>", inference_time=0.042,
            frame_id="base_link"))
        image_pub.publish(numpy_to_image(expected_image(), "rgb8", stamp=STAMP,
                                         frame_id="camera_color_optical_frame"))

    node.create_timer(0.05, publish)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
