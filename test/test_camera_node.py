"""camera_node on an rs.software_device: images + camera_info over DDS, failure exits."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import spin_until, wait_matched

pytest.importorskip("rclpy")  # before pyrealsense2, which bundles its own Fast-DDS (see core)
pytest.importorskip("pyrealsense2")
pytestmark = pytest.mark.ros

W, H = 424, 240
CONFIG = Path(__file__).resolve().parents[1] / "config" / "camera.yaml"


def _node(context, **params):
    from rclpy.parameter import Parameter

    from roboalign_ros.nodes.camera_node import CameraNode

    values = {"software_device": True, "width": W, "height": H, "fps": 30, **params}
    return CameraNode(context=context,
                      parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


def test_images_and_camera_info_over_dds(rclpy_context):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image

    from roboalign_ros.camera.realsense import synthetic_color, synthetic_intrinsics
    from roboalign_ros.conversions import image_to_numpy, stamp_to_seconds

    camera = _node(rclpy_context, diagnostics_period=0.3)
    listener = Node("camera_listener", context=rclpy_context)
    got = {k: [] for k in ("color", "color_info", "depth", "depth_info", "diag")}
    base = "/camera/camera"
    subs = [
        listener.create_subscription(Image, f"{base}/color/image_raw", got["color"].append, 50),
        listener.create_subscription(CameraInfo, f"{base}/color/camera_info",
                                     got["color_info"].append, 50),
        listener.create_subscription(Image, f"{base}/aligned_depth_to_color/image_raw",
                                     got["depth"].append, 50),
        listener.create_subscription(CameraInfo, f"{base}/aligned_depth_to_color/camera_info",
                                     got["depth_info"].append, 50),
        listener.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 50)]
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(camera)
    executor.add_node(listener)

    def enough():
        streaming = [s for a in got["diag"] for s in a.status if s.message == "streaming"]
        return all(len(got[k]) >= 5 for k in ("color", "color_info", "depth", "depth_info")) \
            and streaming

    try:
        wait_matched(executor, *subs)  # all streams repeat: matched is enough
        assert spin_until(executor, enough, timeout=20.0), {k: len(v) for k, v in got.items()}
    finally:
        executor.shutdown()
        camera.close()
        camera.destroy_node()
        listener.destroy_node()

    color_stamps = [stamp_to_seconds(m.header.stamp) for m in got["color"]]
    assert color_stamps == sorted(color_stamps) and len(set(color_stamps)) == len(color_stamps)
    # device clock mapped to ROS time: stamps advance with the frames (their spacing depends on
    # how fast the software device is fed on a loaded machine, so only a loose bound)
    assert 0 < np.median(np.diff(color_stamps)) < 0.5
    now = listener.get_clock().now().nanoseconds * 1e-9
    assert 0 <= now - color_stamps[-1] < 5.0
    depth_by_stamp = {stamp_to_seconds(m.header.stamp): m for m in got["depth"]}
    info_stamps = {stamp_to_seconds(m.header.stamp) for m in got["color_info"]}
    matched = [s for s in color_stamps if s in depth_by_stamp]
    assert len(matched) >= 3  # colour and aligned depth of one frameset share a stamp
    assert set(matched) <= info_stamps

    for msg in got["color"]:
        assert (msg.encoding, msg.width, msg.height) == ("rgb8", W, H)
        assert msg.header.frame_id == "camera_color_optical_frame"
        image = image_to_numpy(msg)
        np.testing.assert_array_equal(image, synthetic_color(int(image[0, 0, 0]), H, W))
    for msg in got["depth"]:
        assert (msg.encoding, msg.width, msg.height) == ("16UC1", W, H)
        assert msg.header.frame_id == "camera_color_optical_frame"
        depth = image_to_numpy(msg)
        valid = depth[depth > 0]
        assert valid.size > 0.95 * depth.size and 800 <= valid.min() == valid.max() <= 1290
    expected = synthetic_intrinsics(W, H, "color")
    for info in got["color_info"] + got["depth_info"]:
        assert (info.width, info.height) == (W, H)
        assert info.header.frame_id == "camera_color_optical_frame"
        assert info.distortion_model == "plumb_bob" and len(info.d) == 5
        np.testing.assert_allclose(info.k, [expected.fx, 0, expected.ppx, 0, expected.fy,
                                            expected.ppy, 0, 0, 1], rtol=1e-6)
        np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], np.reshape(info.k, (3, 3)))
    status = [s for a in got["diag"] for s in a.status if s.message == "streaming"][-1]
    values = {kv.key: kv.value for kv in status.values}
    assert float(values["fps"]) > 20 and values["frames_dropped"] == "0"
    assert values["serial_no"] == "000000000001"


def test_missing_camera_retries_then_gives_up(rclpy_context):
    from roboalign_ros.camera.realsense import DeviceNotFoundError

    attempts = []

    class Missing:
        def __init__(self, settings):
            pass

        def start(self):
            attempts.append(1)
            raise DeviceNotFoundError("serial_no: no RealSense device with serial '42'")

        def stop(self):
            pass

    from rclpy.parameter import Parameter

    from roboalign_ros.nodes.camera_node import CameraNode

    node = CameraNode(Missing, context=rclpy_context, parameter_overrides=[
        Parameter("retry_period", value=0.05), Parameter("max_retries", value=2)])
    try:
        import time

        deadline = time.monotonic() + 5.0
        while not node.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node.finished and node.exit_code == 1
        assert len(attempts) == 3  # first try + 2 retries
    finally:
        node.close()
        node.destroy_node()


def test_unsupported_resolution_exits_cleanly_with_the_reason():
    launcher = [sys.executable, "-c", "from roboalign_ros.nodes.camera_node import main; "
                "raise SystemExit(main())"]
    proc = subprocess.run(
        launcher + ["--ros-args", "--params-file", str(CONFIG), "-p", "software_device:=true",
                    "-p", "width:=1000",
                    "-p", "height:=500"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=30,
        cwd=Path(__file__).parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "color 1000x500@30 rgb8 is not offered" in out and "shutting down" in out
    assert "Traceback" not in out
