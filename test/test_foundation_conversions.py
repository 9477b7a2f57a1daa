"""sensor_msgs/Image and ActionChunk <-> numpy: round trips, zero-copy views, bad inputs."""

import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from roboalign_ros.conversions import (
    IMAGE_ENCODINGS,
    ConversionError,
    action_chunk_to_numpy,
    image_to_numpy,
    numpy_to_action_chunk,
    numpy_to_image,
    seconds_to_stamp,
    stamp_to_seconds,
)
from roboalign_ros.msg import ActionChunk


def sample(encoding, height=6, width=5, seed=0):
    dtype, channels = IMAGE_ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    if dtype == np.float32:
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


@pytest.mark.parametrize("encoding", sorted(IMAGE_ENCODINGS))
def test_image_round_trip_is_exact_and_zero_copy(encoding):
    original = sample(encoding)
    msg = numpy_to_image(original, encoding, stamp=3.25, frame_id="cam")
    view = image_to_numpy(msg)
    np.testing.assert_array_equal(view, original)
    assert view.dtype == original.dtype
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8)), "expected a view"
    assert stamp_to_seconds(msg.header.stamp) == 3.25 and msg.header.frame_id == "cam"
    assert msg.step == original.shape[1] * original.itemsize * (
        original.shape[2] if original.ndim == 3 else 1)


def test_image_with_row_padding_is_a_strided_view():
    original = sample("rgb8", height=4, width=3)
    padded = np.zeros((4, 16), np.uint8)  # 9 bytes of pixels + 7 bytes of padding per row
    padded[:, :9] = original.reshape(4, 9)
    msg = Image(height=4, width=3, encoding="rgb8", step=16,
                data=array.array("B", padded.tobytes()))
    view = image_to_numpy(msg)
    np.testing.assert_array_equal(view, original)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))


def test_big_endian_depth_is_byte_swapped():
    depth = np.array([[1, 256], [4096, 65535]], dtype=np.uint16)
    msg = Image(height=2, width=2, encoding="16UC1", step=4, is_bigendian=1,
                data=array.array("B", depth.astype(">u2").tobytes()))
    np.testing.assert_array_equal(image_to_numpy(msg), depth)


@pytest.mark.parametrize("field, change, message", [
    ("encoding", {"encoding": "yuv422"}, "encoding"),
    ("step", {"step": 8}, "step"),            # less than width*3 = 15
    ("data", {"height": 7}, "data"),          # buffer holds 6 rows
    ("size", {"width": 0}, "height/width"),
])
def test_bad_image_message_names_the_field(field, change, message):
    msg = numpy_to_image(sample("rgb8"), "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ConversionError, match=message):
        image_to_numpy(msg)


def test_step_not_multiple_of_item_size():
    msg = numpy_to_image(sample("16UC1", height=2, width=2), "16UC1")
    msg.step, msg.data = 5, array.array("B", bytes(10))
    with pytest.raises(ConversionError, match="step"):
        image_to_numpy(msg)


@pytest.mark.parametrize("array_, encoding, message", [
    (np.zeros((4, 4, 3), np.float32), "rgb8", "dtype"),
    (np.zeros((4, 4), np.uint8), "rgb8", "shape"),
    (np.zeros((4, 4, 4), np.uint8), "rgb8", "shape"),
    (np.zeros((4, 4, 3), np.uint16), "16UC1", "shape"),
    (np.zeros((0, 4, 3), np.uint8), "rgb8", "empty"),
    (np.zeros((4, 4), np.float64), "32FC1", "dtype"),
    (np.zeros((4, 4), np.uint8), "jpeg", "encoding"),
])
def test_bad_array_is_refused_not_reshaped(array_, encoding, message):
    with pytest.raises(ConversionError, match=message):
        numpy_to_image(array_, encoding)


def test_single_channel_trailing_axis_is_accepted():
    depth = np.arange(6, dtype=np.uint16).reshape(2, 3, 1)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(depth, "16UC1")), depth[..., 0])


def make_chunk(horizon=8, dim=4, **overrides):
    kwargs = dict(stamp=10.0, dt=0.1, action_space="joint_position",
                  dimension_names=[f"d{i}" for i in range(dim)], sequence=3,
                  instruction="push", reasoning="r", inference_time=0.05)
    kwargs.update(overrides)
    actions = np.arange(horizon * dim, dtype=np.float32).reshape(horizon, dim)
    return actions, numpy_to_action_chunk(actions, **kwargs)


@given(horizon=st.integers(1, 50), dim=st.integers(1, 12),
       stamp=st.floats(0, 4e9, allow_nan=False), dt=st.floats(1e-3, 10))
@settings(max_examples=40, deadline=None)
def test_chunk_round_trip(horizon, dim, stamp, dt):
    actions, msg = make_chunk(horizon, dim, stamp=stamp, dt=dt)
    fields = action_chunk_to_numpy(msg)
    np.testing.assert_array_equal(fields.actions, actions)
    assert fields.actions.shape == (horizon, dim)
    assert abs(fields.stamp - stamp) <= 1e-9 * max(1.0, stamp)
    assert fields.dt == dt and fields.sequence == 3 and fields.inference_time == pytest.approx(0.05)
    assert np.shares_memory(fields.actions, np.frombuffer(msg.actions, np.float32))


@pytest.mark.parametrize("change, message", [
    ({"horizon": 0}, "horizon"),
    ({"action_dim": 0}, "action_dim"),
    ({"horizon": 9}, "actions"),
    ({"action_dim": 3}, "actions"),
    ({"dimension_names": ["a"]}, "dimension_names"),
    ({"dt": 0.0}, "dt"),
    ({"dt": float("nan")}, "dt"),
    ({"actions": array.array("f", [float("nan")] * 32)}, "NaN"),
    ({"actions": array.array("f", [float("inf")] * 32)}, "NaN or inf"),
])
def test_bad_chunk_message_names_the_field(change, message):
    _, msg = make_chunk()
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ConversionError, match=message):
        action_chunk_to_numpy(msg)


@pytest.mark.parametrize("actions, kwargs, message", [
    (np.zeros(8, np.float32), {}, "shape"),
    (np.zeros((8, 4), np.int32), {}, "float"),
    (np.zeros((0, 4), np.float32), {}, "empty"),
    (np.full((8, 4), np.nan, np.float32), {}, "NaN"),
    (np.zeros((8, 4), np.float32), {"dimension_names": ["a", "b"]}, "dimension_names"),
    (np.zeros((8, 4), np.float32), {"dt": -0.1}, "dt"),
    (np.zeros((8, 4), np.float32), {"stamp": -1.0}, "stamp"),
])
def test_bad_chunk_array_is_refused(actions, kwargs, message):
    base = dict(stamp=1.0, dt=0.1, action_space="joint_position",
                dimension_names=["a", "b", "c", "d"])
    base.update(kwargs)
    with pytest.raises(ConversionError, match=message):
        numpy_to_action_chunk(actions, **base)


def test_stamp_rounding_carries_into_seconds():
    stamp = seconds_to_stamp(1.9999999999)
    assert (stamp.sec, stamp.nanosec) == (2, 0)
    assert isinstance(ActionChunk().header.stamp, type(stamp))


def test_joint_state_mapper_matches_by_name_with_or_without_gripper():
    from sensor_msgs.msg import JointState

    from roboalign_ros.conversions import JointStateMapper
    from roboalign_ros.robot import load_robot_config

    robot = load_robot_config("sim_arm")
    names = list(reversed(robot.joint_names))  # any order
    values = {n: 0.1 * i for i, n in enumerate(robot.joint_names)}
    msg = JointState(name=names, position=[values[n] for n in names])
    arm = JointStateMapper(robot, with_gripper=False)(msg)
    np.testing.assert_allclose(arm, [values[j] for j in robot.arm_joints])
    state = JointStateMapper(robot)(msg)
    assert state.shape == (len(robot.arm_joints) + 1,)
    assert state[-1] == pytest.approx(robot.joint_to_gripper(values[robot.gripper_joints[0]]))
    arm_only = JointState(name=list(robot.arm_joints), position=[0.0] * len(robot.arm_joints))
    with pytest.raises(ConversionError, match="lacks"):
        JointStateMapper(robot)(arm_only)
    assert JointStateMapper(robot, with_gripper=False)(arm_only).shape == (6,)
