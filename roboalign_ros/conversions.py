"""ROS message <-> numpy conversions for images, action chunks and stamps.

Messages are duck-typed, so this module imports no rclpy and the message classes only when it
has to build a message. Reading a message gives a zero-copy numpy view of its buffer wherever
the layout allows it (``np.frombuffer`` over the message's ``array.array``). Anything that does
not add up (encoding, step, size, shape, dtype, NaN) raises :class:`ConversionError` naming the
field: a wrong message is never silently reshaped.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass

import numpy as np

# encoding -> (numpy dtype, channels). Single-channel images are returned as (H, W).
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

_HOST_BIG_ENDIAN = sys.byteorder == "big"


class ConversionError(ValueError):
    """A message or array does not match what its fields say."""


# --------------------------------------------------------------------------- stamps


def stamp_to_seconds(stamp) -> float:
    """Return a ``builtin_interfaces/Time`` (or anything with sec/nanosec) as float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_stamp(seconds: float, stamp=None):
    """Fill (or create) a ``builtin_interfaces/Time`` from float seconds."""
    if not np.isfinite(seconds) or seconds < 0:
        raise ConversionError(f"stamp: {seconds!r} is not a finite, non-negative time")
    if stamp is None:
        from builtin_interfaces.msg import Time

        stamp = Time()
    sec = int(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:  # rounding carried into the next second
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    stamp.sec, stamp.nanosec = sec, nanosec
    return stamp


def duration_to_seconds(duration) -> float:
    """Return a ``builtin_interfaces/Duration`` as float seconds."""
    return float(duration.sec) + float(duration.nanosec) * 1e-9


def seconds_to_duration(seconds: float, duration=None):
    """Fill (or create) a ``builtin_interfaces/Duration`` from float seconds (>= 0)."""
    if duration is None:
        from builtin_interfaces.msg import Duration

        duration = Duration()
    seconds_to_stamp(seconds, duration)  # same sec/nanosec layout and checks
    return duration


def trajectory_msg(joint_names, stamp: float, times, positions, velocities):
    """One ``trajectory_msgs/JointTrajectory`` of ``(time_from_start, q, v)`` points.

    ``stamp`` (s, the node's clock) is when its time 0 is.
    """
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    points = [JointTrajectoryPoint(positions=[float(q) for q in p],
                                   velocities=[float(v) for v in w],
                                   time_from_start=seconds_to_duration(t))
              for t, p, w in zip(times, positions, velocities)]
    msg = JointTrajectory(joint_names=list(joint_names), points=points)
    msg.header.stamp = seconds_to_stamp(stamp)
    return msg


# --------------------------------------------------------------------------- images


def image_to_numpy(msg) -> np.ndarray:
    """View a ``sensor_msgs/Image`` as a numpy array without copying.

    Returns (H, W, C) for colour encodings and (H, W) for mono8 / 16UC1 / 32FC1. The result
    shares memory with ``msg.data`` (read-only when the buffer is); a big-endian image on a
    little-endian host is the one case that is copied (byte-swapped).
    """
    encoding = msg.encoding
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(
            f"encoding: {encoding!r} is not supported (use one of {sorted(IMAGE_ENCODINGS)})"
        )
    dtype, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ConversionError(f"height/width: {height}x{width} is not a positive image size")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ConversionError(
            f"step: {step} bytes is less than width*channels*itemsize = {row_bytes} "
            f"for {width} px of {encoding}"
        )
    if step % dtype.itemsize:
        raise ConversionError(f"step: {step} is not a multiple of the {dtype} item size")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size != step * height:
        raise ConversionError(
            f"data: {buffer.size} bytes, expected step*height = {step}*{height} = {step * height}"
        )
    big_endian = bool(msg.is_bigendian) and dtype.itemsize > 1
    view_dtype = dtype.newbyteorder(">") if big_endian else dtype
    shape = (height, width, channels) if channels > 1 else (height, width)
    pixel = channels * dtype.itemsize
    strides = (step, pixel, dtype.itemsize) if channels > 1 else (step, dtype.itemsize)
    image = np.ndarray(shape, dtype=view_dtype, buffer=buffer, strides=strides)
    if big_endian != _HOST_BIG_ENDIAN and dtype.itemsize > 1:
        image = image.astype(dtype)  # native byte order for downstream code (copies)
    return image


_RGB_FROM = {"rgb8": lambda a: a, "bgr8": lambda a: a[..., ::-1], "rgba8": lambda a: a[..., :3]}


def image_to_rgb(msg) -> np.ndarray:
    """A colour ``sensor_msgs/Image`` (rgb8, bgr8, rgba8) as an (H, W, 3) RGB view, no copy."""
    if msg.encoding not in _RGB_FROM:
        raise ConversionError(f"encoding: {msg.encoding!r} is not a colour encoding "
                              f"({', '.join(_RGB_FROM)})")
    return _RGB_FROM[msg.encoding](image_to_numpy(msg))


def numpy_to_image(image: np.ndarray, encoding: str, *, stamp: float | None = None,
                   frame_id: str = "", msg=None):
    """Build (or fill) a ``sensor_msgs/Image`` from an array of the encoding's dtype and shape.

    ``stamp`` is float seconds (left untouched when None). The array must already have the
    encoding's dtype: converting (say float depth to 16UC1 millimetres) is the caller's
    decision, never done silently here.
    """
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(
            f"encoding: {encoding!r} is not supported (use one of {sorted(IMAGE_ENCODINGS)})"
        )
    dtype, channels = IMAGE_ENCODINGS[encoding]
    image = np.asarray(image)
    if image.dtype != dtype:
        raise ConversionError(f"dtype: {encoding} needs {dtype}, got {image.dtype}")
    expected_ndim = 3 if channels > 1 else 2
    if channels == 1 and image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != expected_ndim or (channels > 1 and image.shape[2] != channels):
        want = f"(H, W, {channels})" if channels > 1 else "(H, W)"
        raise ConversionError(f"shape: {encoding} needs {want}, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ConversionError(f"shape: empty image {image.shape}")
    if msg is None:
        from sensor_msgs.msg import Image

        msg = Image()
    contiguous = np.ascontiguousarray(image)
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = _HOST_BIG_ENDIAN
    msg.step = int(image.shape[1] * channels * dtype.itemsize)
    data = array.array("B")
    # one memcpy; the message setter would convert element by element
    data.frombytes(contiguous.reshape(-1).view(np.uint8).data)
    msg.data = data
    if stamp is not None:
        seconds_to_stamp(stamp, msg.header.stamp)
    msg.header.frame_id = frame_id
    return msg


# --------------------------------------------------------------------------- action chunks


@dataclass(frozen=True)
class ChunkFields:
    """The content of an ``ActionChunk`` message as plain Python / numpy."""

    actions: np.ndarray  # float32 [horizon, action_dim] (a view of the message's buffer)
    stamp: float  # observation time, seconds
    dt: float
    action_space: str
    dimension_names: tuple[str, ...]
    sequence: int
    instruction: str
    reasoning: str
    inference_time: float
    frame_id: str


def action_chunk_to_numpy(msg) -> ChunkFields:
    """Read and validate an ``ActionChunk``; the actions are a zero-copy [H, D] view.

    Raises :class:`ConversionError` naming the field for: zero horizon or action_dim, a size
    mismatch between ``actions`` and ``horizon * action_dim``, ``dimension_names`` of the wrong
    length, a non-positive or non-finite ``dt``, and NaN/inf actions.
    """
    horizon, action_dim = int(msg.horizon), int(msg.action_dim)
    if horizon <= 0:
        raise ConversionError(f"horizon: {horizon} must be > 0")
    if action_dim <= 0:
        raise ConversionError(f"action_dim: {action_dim} must be > 0")
    actions = np.frombuffer(msg.actions, dtype=np.float32)
    if actions.size != horizon * action_dim:
        raise ConversionError(
            f"actions: {actions.size} values, expected horizon*action_dim = "
            f"{horizon}*{action_dim} = {horizon * action_dim}"
        )
    names = tuple(msg.dimension_names)
    if len(names) != action_dim:
        raise ConversionError(
            f"dimension_names: {len(names)} names for action_dim {action_dim}"
        )
    dt = float(msg.dt)
    if not np.isfinite(dt) or dt <= 0:
        raise ConversionError(f"dt: {dt!r} must be a finite number > 0")
    actions = actions.reshape(horizon, action_dim)
    if not np.isfinite(actions).all():
        row = int(np.argwhere(~np.isfinite(actions))[0][0])
        raise ConversionError(f"actions: NaN or inf in row {row}")
    return ChunkFields(
        actions=actions,
        stamp=stamp_to_seconds(msg.header.stamp),
        dt=dt,
        action_space=msg.action_space,
        dimension_names=names,
        sequence=int(msg.sequence),
        instruction=msg.instruction,
        reasoning=msg.reasoning,
        inference_time=duration_to_seconds(msg.inference_time),
        frame_id=msg.header.frame_id,
    )


def numpy_to_action_chunk(actions: np.ndarray, *, stamp: float, dt: float, action_space: str,
                          dimension_names, sequence: int = 0, instruction: str = "",
                          reasoning: str = "", inference_time: float = 0.0,
                          frame_id: str = "", reasoning_sequence: int = 0, msg=None):
    """Build (or fill) an ``ActionChunk`` from a [horizon, action_dim] array.

    The same checks as :func:`action_chunk_to_numpy` apply, so a message this function returns
    always reads back.
    """
    actions = np.asarray(actions)
    if actions.ndim != 2:
        raise ConversionError(
            f"actions: expected [horizon, action_dim], got shape {actions.shape}")
    if not np.issubdtype(actions.dtype, np.floating):
        raise ConversionError(f"actions: expected a float array, got {actions.dtype}")
    horizon, action_dim = actions.shape
    if horizon == 0 or action_dim == 0:
        raise ConversionError(f"actions: empty chunk of shape {actions.shape}")
    if not np.isfinite(actions).all():
        raise ConversionError("actions: NaN or inf")
    names = [str(n) for n in dimension_names]
    if len(names) != action_dim:
        raise ConversionError(f"dimension_names: {len(names)} names for action_dim {action_dim}")
    if not np.isfinite(dt) or dt <= 0:
        raise ConversionError(f"dt: {dt!r} must be a finite number > 0")
    if msg is None:
        from roboalign_ros.msg import ActionChunk

        msg = ActionChunk()
    seconds_to_stamp(stamp, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.sequence = int(sequence)
    msg.instruction = instruction
    msg.reasoning = reasoning
    msg.reasoning_sequence = int(reasoning_sequence)
    msg.action_space = action_space
    msg.dimension_names = names
    msg.horizon, msg.action_dim = int(horizon), int(action_dim)
    msg.dt = float(dt)
    values = array.array("f")
    flat = np.ascontiguousarray(actions, dtype=np.float32).reshape(-1)
    values.frombytes(flat.view(np.uint8).data)
    msg.actions = values
    seconds_to_duration(max(0.0, float(inference_time)), msg.inference_time)
    return msg


# --------------------------------------------------------------------------- joint states


class JointStateMapper:
    """``sensor_msgs/JointState`` -> the policy's state vector (arm joints + gripper opening).

    Joints are matched by name (any order, extra joints ignored); the gripper opening in [0, 1]
    comes from the first gripper joint through ``robot.joint_to_gripper``. The name lookup is
    cached and rebuilt only when the message's joint list changes. ``with_gripper=False``
    returns the arm joints only (float64), for users that command the arm alone.
    """

    def __init__(self, robot, with_gripper: bool = True):
        self.robot, self.with_gripper = robot, with_gripper
        self._names: tuple[str, ...] | None = None
        self._index: np.ndarray | None = None

    def __call__(self, msg) -> np.ndarray:
        """Return the state vector (or raise ConversionError naming the missing joint)."""
        names = tuple(msg.name)
        if names != self._names:
            wanted = list(self.robot.arm_joints)
            if self.with_gripper:
                wanted += list(self.robot.gripper_joints[:1])
            position = {n: i for i, n in enumerate(names)}
            missing = [n for n in wanted if n not in position]
            if missing:
                raise ConversionError(f"name: joint_states lacks {missing}")
            self._names, self._index = names, np.array([position[n] for n in wanted])
        positions = np.asarray(msg.position, dtype=np.float64)
        if positions.size != len(names):
            raise ConversionError(f"position: {positions.size} values for {len(names)} names")
        q = positions[self._index]
        if not np.isfinite(q).all():
            raise ConversionError("position: NaN or inf")
        if not self.with_gripper:
            return q
        n_arm = len(self.robot.arm_joints)
        state = np.empty(n_arm + 1, np.float32)
        state[:n_arm] = q[:n_arm]
        state[n_arm] = self.robot.joint_to_gripper(q[n_arm]) if len(q) > n_arm else 0.0
        return state


def reasoning_msg(sequence: int, text: str, *, stamp: float, instruction: str, seconds: float,
                  frame_id: str):
    """A ``roboalign_ros/Reasoning``: one generation, stamped with its observation's time."""
    from roboalign_ros.msg import Reasoning

    msg = Reasoning(sequence=sequence, instruction=instruction, text=text or "")
    seconds_to_stamp(stamp, msg.header.stamp)
    msg.header.frame_id = frame_id
    seconds_to_duration(seconds, msg.generation_time)
    return msg
