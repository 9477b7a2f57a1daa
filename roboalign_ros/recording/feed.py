"""ROS messages into a :class:`RecordingSession`, one method per input (ROS-free).

``recorder_node`` calls these from its callbacks, ``roboalign data from-bag`` from a bag's
messages in time order: live and replayed recordings go through the same code. The messages
may be rclpy's or ``rosbags``' (the same field names). Every method raises ``ValueError`` for
a message it refuses; the caller counts and logs it.
"""

from __future__ import annotations

import io

import numpy as np

from roboalign_ros.conversions import (
    JointStateMapper,
    action_chunk_to_numpy,
    image_to_numpy,
    stamp_to_seconds,
)

from . import actions as act
from .session import RecordingSession


class MessageFeed:
    """Adapts each message type to the session's inputs; ``now`` is the receive time (s)."""

    def __init__(self, session: RecordingSession, robot, action_max_age: float = 0.5):
        self.session = session
        self.robot = robot
        self.joint_mapper = JointStateMapper(robot)
        self.trajectory_parser = act.TrajectoryParser(robot.arm_joints)
        self.action_max_age = action_max_age

    def image(self, camera: str, msg) -> None:
        """Camera frame (colour or depth), a zero-copy view keyed by its stamp.

        A ``sensor_msgs/CompressedImage`` (image_transport's compressed / compressedDepth, as
        bags hold them) is decoded first.
        """
        stamp = stamp_to_seconds(msg.header.stamp)
        if hasattr(msg, "format"):
            self.session.push_image(camera, stamp, *compressed_image_to_numpy(msg))
        else:
            self.session.push_image(camera, stamp, image_to_numpy(msg), msg.encoding)

    def joint_state(self, msg) -> None:
        """Joint states -> state vector (arm joints + gripper opening)."""
        self.session.push_state(stamp_to_seconds(msg.header.stamp), self.joint_mapper(msg))

    def trajectory(self, msg, now: float) -> None:
        """Commanded joint trajectory (keyed by receive time; stamp 0 = now)."""
        start = stamp_to_seconds(msg.header.stamp) or now
        target = self.trajectory_parser(
            msg.joint_names, [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
                              for p in msg.points], [p.positions for p in msg.points], start)
        if target is not None:
            self.session.push_command(now, target)

    def twist(self, msg, now: float) -> None:
        """Servo twist command."""
        self.session.push_command(now, act.twist_vector(msg.twist.linear, msg.twist.angular))

    def gripper(self, msg, now: float) -> None:
        """Gripper opening command."""
        self.session.push_gripper(now, act.gripper_value(msg.data, self.robot))

    def chunk(self, msg, now: float) -> None:
        """Policy action chunk (joint_position space, arm joints + gripper)."""
        chunk = action_chunk_to_numpy(msg)
        names = self.session.config.action_names
        if chunk.action_space != "joint_position" or list(chunk.dimension_names) != names:
            raise ValueError(f"action_space/dimension_names: need joint_position {names}, "
                             f"got {chunk.action_space} {list(chunk.dimension_names)}")
        self.session.push_command(now, act.ChunkTarget(chunk.stamp, chunk.dt,
                                                       chunk.actions.copy(), self.action_max_age))

    def instruction(self, msg) -> None:
        """The instruction an episode without a task is recorded under."""
        self.session.set_instruction(msg.data)


def compressed_image_to_numpy(msg) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` of image_transport; returns (array, encoding).

    ``compressed`` (format ``"rgb8; jpeg compressed bgr8"``, or png): HxWx3 uint8 RGB,
    ``rgb8``. ``compressedDepth`` (``"16UC1; compressedDepth png"``: a 12-byte header, then a
    16-bit PNG): HxW uint16 millimetres, ``16UC1``. ValueError names any other format.
    """
    from PIL import Image as PILImage

    fmt = str(msg.format)
    original, _, kind = (p.strip() for p in fmt.partition(";")) if ";" in fmt \
        else ("", "", fmt.strip())
    data = bytes(msg.data)
    try:
        if "compressedDepth" in kind:
            if original not in ("16UC1", "mono16") or not kind.endswith(("compressedDepth",
                                                                           "png")):
                raise ValueError("only 16UC1 / mono16 depth in png is supported")
            depth = np.asarray(PILImage.open(io.BytesIO(data[12:])))
            if depth.dtype != np.uint16 or depth.ndim != 2:
                raise ValueError(f"the png holds {depth.dtype} {depth.shape}, not 16-bit grey")
            return depth, "16UC1"
        if kind.split(" ")[0] not in ("jpeg", "png"):
            raise ValueError("only jpeg and png are supported")
        return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB")), "rgb8"
    except ValueError as exc:
        raise ValueError(f"format: {fmt!r}: {exc}") from exc
    except OSError as exc:  # PIL: truncated or not an image
        raise ValueError(f"format: {fmt!r}: the data does not decode ({exc})") from exc
