"""A synthetic teleoperation bag: what a rosbag2 recording of the arm looks like.

Camera 30 Hz (raw ``sensor_msgs/Image``, or image_transport's compressed colour and aligned
depth), joint states 100 Hz, arm trajectory commands 50 Hz, the gripper command and the
instruction, as ``ros2 bag record`` (or recorder_node's bag) writes them. For tests and for
checks of the bag -> dataset path (``roboalign data from-bag``) without a robot. It builds
rclpy messages, so it lives above the ROS-free core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer

from roboalign_ros.conversions import numpy_to_image, seconds_to_stamp
from roboalign_ros.data.synthetic import synthetic_image
from roboalign_ros.recording.bag import typestore
from roboalign_ros.robot import load_robot_config

H, W = 96, 128
ROBOT = load_robot_config("sim_arm")
ARM = list(ROBOT.arm_joints)
GRIPPER_JOINT = ROBOT.gripper_to_joint(0.7)  # a gripper command is the finger's position (m)
T0 = 1_764_590_400.0  # a 2025 ROS time


def joints(t: float) -> list[float]:
    """Arm + finger joint positions at ``t`` (s)."""
    return [0.1 * np.sin(t + i) for i in range(len(ARM))] + [0.02, 0.02]


COLOUR, DEPTH = "/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw"


def compressed(image: np.ndarray, stamp: float, depth_format: str = "png"):
    """The CompressedImage image_transport sends for ``image`` at ``stamp``.

    Colour: JPEG (``<topic>/compressed``); depth: a 12-byte header + 16-bit PNG
    (``<topic>/compressedDepth``).
    """
    import io
    import struct

    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    buf = io.BytesIO()
    if image.dtype == np.uint16:
        buf.write(struct.pack("<iff", 1, 0.0, 0.0))
        PILImage.fromarray(image).save(buf, format="PNG")
        msg = CompressedImage(format=f"16UC1; compressedDepth {depth_format}",
                              data=buf.getvalue())
    else:
        PILImage.fromarray(image).save(buf, format="JPEG", quality=95)
        msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=buf.getvalue())
    seconds_to_stamp(stamp, msg.header.stamp)
    return msg


def write_bag(path: Path, segments, storage=StoragePlugin.MCAP, instruction=True,
              compressed_images=False, depth_format="png") -> list:
    """A bag of `segments` [(start, seconds)]: camera 30 Hz, joints 100 Hz, commands 50 Hz.

    ``compressed_images``: the camera as image_transport's compressed topics (colour and an
    aligned depth), in zstd-compressed MCAP chunks.
    """
    from rosbags.rosbag2 import CompressionFormat, CompressionMode
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from roboalign_ros.data.synthetic import synthetic_depth

    store = typestore()
    w = Writer(path, version=9, storage_plugin=storage)
    images = [(COLOUR, "sensor_msgs/msg/Image")]
    if compressed_images:
        w.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        images = [(COLOUR + "/compressed", "sensor_msgs/msg/CompressedImage"),
                  (DEPTH + "/compressedDepth", "sensor_msgs/msg/CompressedImage")]
    w.open()
    conn = {t: w.add_connection(t, ty, typestore=store) for t, ty in [
        *images,
        ("/joint_states", "sensor_msgs/msg/JointState"),
        ("/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory"),
        ("/gripper_controller/commands", "std_msgs/msg/Float64MultiArray"),
        ("/roboalign/instruction", "std_msgs/msg/String")]}
    events, frames = [], []
    if instruction:
        events.append((T0 - 0.5, "/roboalign/instruction", String(data="pick up the red cube")))
    events.append((T0 - 0.5, "/gripper_controller/commands",
                   Float64MultiArray(data=[GRIPPER_JOINT])))
    k = 0
    for start, seconds in segments:
        for i in range(int(seconds * 100)):
            t = T0 + start + i / 100
            js = JointState(name=[*ARM, "finger_left_joint", "finger_right_joint"],
                            position=joints(t))
            seconds_to_stamp(t, js.header.stamp)
            events.append((t, "/joint_states", js))
            if i % 2 == 0:
                msg = JointTrajectory(joint_names=ARM)
                msg.points = [JointTrajectoryPoint(positions=[t - T0] * len(ARM))]
                events.append((t + 0.001, "/arm_controller/joint_trajectory", msg))
            if i % 3 == 0 and compressed_images:
                events.append((t + 0.002, COLOUR + "/compressed",
                               compressed(synthetic_image(k, H, W), t)))
                events.append((t + 0.002, DEPTH + "/compressedDepth",
                               compressed(synthetic_depth(k, H, W), t, depth_format)))
                frames.append((t, k))
                k += 1
            elif i % 3 == 0:
                events.append((t + 0.002, "/camera/camera/color/image_raw",
                               numpy_to_image(synthetic_image(k, H, W), "rgb8", stamp=t)))
                frames.append((t, k))
                k += 1
    for t, topic, msg in sorted(events, key=lambda e: e[0]):
        w.write(conn[topic], int(round(t * 1e9)), serialize_message(msg))
    w.close()
    return frames
