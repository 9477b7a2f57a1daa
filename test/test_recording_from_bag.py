"""`roboalign data from-bag`: bags (MCAP and sqlite3) into datasets through the recorder's own
sampler; bad bags and maps refused with their names, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer

from roboalign_ros.conversions import numpy_to_image, seconds_to_stamp
from roboalign_ros.data import DatasetReader
from roboalign_ros.data.synthetic import synthetic_image
from roboalign_ros.recording import from_bag as fb
from roboalign_ros.recording.bag import typestore
from roboalign_ros.robot import load_robot_config

H, W = 96, 128
ROBOT = load_robot_config("sim_arm")
ARM = list(ROBOT.arm_joints)
GRIPPER_JOINT = ROBOT.gripper_to_joint(0.7)  # a gripper command is the finger's position (m)
T0 = 1_764_590_400.0  # a 2025 ROS time


def joints(t: float) -> list[float]:
    return [0.1 * np.sin(t + i) for i in range(len(ARM))] + [0.02, 0.02]


COLOUR, DEPTH = "/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw"


def compressed(image: np.ndarray, stamp: float, depth_format: str = "png"):
    """The CompressedImage image_transport sends: colour JPEG (``<topic>/compressed``) or
    depth as a 12-byte header + 16-bit PNG (``<topic>/compressedDepth``)."""
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


def test_a_bag_with_a_pause_becomes_two_episodes_sampled_like_the_recorder(tmp_path):
    bag = tmp_path / "bag"
    frames = write_bag(bag, [(0.0, 2.0), (4.0, 1.5)])
    out = tmp_path / "ds"
    result = fb.convert([bag], gap_map(), out, progress=False)
    assert result.episodes == 2, result.summary()
    reader = DatasetReader(out)
    assert len(reader) == 2 and reader.fps == 15
    stamps = np.array([t for t, _ in frames])
    for e, seconds in ((0, 2.0), (1, 1.5)):
        ep = reader.episode(e)
        assert ep.task == "pick up the red cube"
        # the whole segment but the recorder's margins at both ends (~0.3 s)
        assert seconds * 15 - 6 <= len(ep) <= seconds * 15 + 1, len(ep)
        np.testing.assert_allclose(np.diff(ep.capture_times), 1 / 15, atol=1e-6)
        for i, t in enumerate(ep.capture_times):
            k = frames[int(np.argmin(np.abs(stamps - t)))][1]   # nearest published frame
            diff = np.abs(ep.frames["scene"][i].astype(int) - synthetic_image(k, H, W))
            assert diff.mean() < 3.0
            # the stored state is the joint state published nearest the frame time
            q = joints(round(t * 100) / 100)
            np.testing.assert_allclose(ep.states[i][:6], q[:6], atol=1e-6)
            assert ep.actions[i][6] == pytest.approx(0.7, abs=1e-6)
    assert result.messages["/camera/camera/color/image_raw"] == len(frames)


def test_compressed_image_topics_in_zstd_chunks_convert(tmp_path):
    """A bag of image_transport's compressed topics (what recorder_node's bag.images:
    compressed records): the map's raw topics fall back to them; depth stays bit-exact."""
    from mcap.reader import make_reader

    from roboalign_ros.data.synthetic import synthetic_depth

    bag = tmp_path / "bag"
    frames = write_bag(bag, [(0.0, 2.0)], compressed_images=True)
    with open(next(bag.glob("*.mcap")), "rb") as f:
        chunks = list(make_reader(f).get_summary().chunk_indexes)
    assert chunks and {c.compression for c in chunks} == {"zstd"}
    m = gap_map()
    m.depth_cameras = {"scene_depth": DEPTH}
    result = fb.convert([bag], m, tmp_path / "ds", progress=False)
    assert result.episodes == 1 and not result.skipped_frames, result.summary()
    ep = DatasetReader(tmp_path / "ds").episode(0, depth=True)
    stamps = np.array([t for t, _ in frames])
    assert len(ep) >= 24
    for i, t in enumerate(ep.capture_times):
        k = frames[int(np.argmin(np.abs(stamps - t)))][1]
        np.testing.assert_array_equal(ep.depth["scene_depth"][i], synthetic_depth(k, H, W))
        diff = np.abs(ep.frames["scene"][i].astype(int) - synthetic_image(k, H, W))
        assert diff.mean() < 3.0  # JPEG 95 then H.264
    # a depth format this converter cannot decode is named in what was skipped
    write_bag(tmp_path / "rvl", [(0.0, 1.0)], compressed_images=True, depth_format="rvl")
    with pytest.raises(fb.BagError, match="(?s)no episode converted.*compressedDepth rvl"):
        fb.convert([tmp_path / "rvl"], m, tmp_path / "x", progress=False)


def test_sqlite3_bags_convert_too_and_task_comes_from_the_command_line(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, [(0.0, 1.5)], storage=StoragePlugin.SQLITE3, instruction=False)
    with pytest.raises(fb.BagError, match="no task"):
        fb.convert([bag], gap_map(), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.tmp").exists()
    result = fb.convert([bag], gap_map(), tmp_path / "b", task="open the drawer",
                        progress=False)
    assert result.episodes == 1
    assert DatasetReader(tmp_path / "b").episode(0, False).task == "open the drawer"


def test_bad_bags_and_maps_are_named_and_nothing_is_written(tmp_path, capsys):
    bag = tmp_path / "bag"
    write_bag(bag, [(0.0, 1.5)])
    m = gap_map()
    # a mapped topic the bag lacks
    m.depth_cameras = {"scene_depth": "/camera/camera/aligned_depth_to_color/image_raw"}
    with pytest.raises(fb.BagError, match="aligned_depth_to_color.*not in the bag"):
        fb.convert([bag], m, tmp_path / "x", progress=False)
    # a topic of the wrong type for its role
    m = gap_map()
    m.state, m.instruction = "/roboalign/instruction", ""
    with pytest.raises(fb.BagError, match="as state it must be sensor_msgs/msg/JointState"):
        fb.convert([bag], m, tmp_path / "x", task="go", progress=False)
    m.instruction = "/roboalign/instruction"
    with pytest.raises(fb.BagError, match="mapped twice"):
        fb.convert([bag], m, tmp_path / "x", progress=False)
    # a truncated file
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 2])
    with pytest.raises(fb.BagError, match="truncated or corrupt|not a readable rosbag2"):
        fb.convert([bag], gap_map(), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()
    # not a bag; an unknown map key; the CLI says which, exit 2
    assert fb.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "no such bag" in capsys.readouterr().err
    bad = tmp_path / "map.yaml"
    bad.write_text("cameras: {scene: /c}\nfps: 15\nspeed: 3\n")
    with pytest.raises(fb.BagError, match="unknown key.*speed"):
        fb.load_map(bad)


def fb_map() -> Path:
    from roboalign_ros.robot import package_path

    return package_path("config", "bag_maps", "recorder.yaml")


def gap_map() -> fb.BagMap:
    """The shipped map, splitting by camera pauses (these bags have no recorder events)."""
    m = fb.load_map(fb_map())
    m.split = "gap"
    return m
