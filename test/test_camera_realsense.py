"""The RealSense core driven by an rs.software_device: arrays, intrinsics, depth units, errors."""

import numpy as np
import pytest

try:  # pyrealsense2 bundles Fast-DDS: loaded before rclpy's, a later ROS test crashes the exit
    import rclpy  # noqa: F401
except ImportError:
    pass
rs = pytest.importorskip("pyrealsense2")

from roboalign_ros.camera.realsense import (  # noqa: E402
    CameraError,
    CameraSettings,
    DeviceNotFoundError,
    FrameStats,
    Intrinsics,
    RealSenseCamera,
    SoftwareSource,
    StampMapper,
    UnsupportedProfileError,
    depth_to_mm,
    find_device,
    synthetic_color,
    synthetic_intrinsics,
)


def _same(a, b):
    """Intrinsics equal up to librealsense's float32 storage."""
    return (a.width, a.height, a.model) == (b.width, b.height, b.model) and np.allclose(
        [a.fx, a.fy, a.ppx, a.ppy, *a.coeffs], [b.fx, b.fy, b.ppx, b.ppy, *b.coeffs], rtol=1e-6)


def _camera(settings, **source_kwargs):
    source = SoftwareSource(settings, pace=False, **source_kwargs)
    camera = RealSenseCamera(settings, source)
    camera.start()
    return camera, source


def test_color_and_aligned_depth_arrays_and_units():
    settings = CameraSettings(width=424, height=240, fps=30)
    camera, source = _camera(settings, depth_units=0.0001)  # D405-style 0.1 mm units
    try:
        for _ in range(3):
            frames = camera.read(timeout=2.0)
            n = frames.frame_number
            assert frames.color.shape == (240, 424, 3) and frames.color.dtype == np.uint8
            np.testing.assert_array_equal(frames.color, synthetic_color(n, 240, 424))
            assert frames.depth_mm.shape == (240, 424) and frames.depth_mm.dtype == np.uint16
            assert frames.depth_aligned
            assert frames.depth_units == pytest.approx(1e-4)
            expected_mm = round((0.8 + 0.01 * n) * 1000)
            valid = frames.depth_mm[frames.depth_mm > 0]
            assert valid.size > 0.95 * frames.depth_mm.size  # the wider depth FOV covers colour
            np.testing.assert_array_equal(valid, expected_mm)
            # the raw counts were in 0.1 mm: the driver converted them to mm
            assert source.injected["depth"].max() == pytest.approx(expected_mm * 10, abs=1)
            assert frames.timestamp_domain == "hardware_clock"
            assert frames.timestamp_ms == pytest.approx(source.injected["timestamp_ms"])
        assert camera.stats.frames == 3 and camera.stats.dropped == 0
    finally:
        camera.stop()


def test_aligned_depth_has_colour_intrinsics_and_unaligned_keeps_its_own():
    aligned = CameraSettings(width=640, height=480, fps=15, depth_width=848, depth_height=480)
    camera, _ = _camera(aligned)
    try:
        frames = camera.read(timeout=2.0)
    finally:
        camera.stop()
    assert frames.depth_mm.shape == (480, 640)
    assert _same(frames.color_intrinsics, synthetic_intrinsics(640, 480, "color"))
    assert frames.depth_intrinsics == frames.color_intrinsics
    assert frames.depth_units == pytest.approx(0.001)

    raw = CameraSettings(width=640, height=480, fps=15, depth_width=848, depth_height=480,
                         align_depth=False)
    camera, source = _camera(raw)
    try:
        frames = camera.read(timeout=2.0)
    finally:
        camera.stop()
    assert not frames.depth_aligned and frames.depth_mm.shape == (480, 848)
    assert _same(frames.depth_intrinsics, synthetic_intrinsics(848, 480, "depth"))
    np.testing.assert_array_equal(frames.depth_mm, source.injected["depth"])  # 1 mm units


def test_color_only_and_dropped_frames_are_counted():
    settings = CameraSettings(width=320, height=240, fps=30, enable_depth=False)
    camera, _ = _camera(settings, drop_frames={2, 3})
    try:
        numbers = [camera.read(timeout=2.0).frame_number for _ in range(4)]
    finally:
        camera.stop()
    assert numbers == [0, 1, 4, 5]
    assert camera.stats.dropped == 2


def test_intrinsics_to_camera_info_fields():
    intr = Intrinsics(640, 480, 615.0, 616.0, 320.5, 240.25, "brown_conrady",
                      (0.1, -0.2, 0.001, 0.002, 0.03))
    f = intr.camera_info_fields()
    assert f["distortion_model"] == "plumb_bob"
    assert f["d"] == [0.1, -0.2, 0.001, 0.002, 0.03]
    assert f["k"] == [615.0, 0.0, 320.5, 0.0, 616.0, 240.25, 0.0, 0.0, 1.0]
    assert f["p"] == [615.0, 0.0, 320.5, 0.0, 0.0, 616.0, 240.25, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert f["r"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    fisheye = Intrinsics(848, 800, 286.0, 286.0, 424.0, 400.0, "kannala_brandt4",
                         (0.1, 0.2, 0.3, 0.4, 0.0))
    assert fisheye.camera_info_fields()["distortion_model"] == "equidistant"
    assert fisheye.camera_info_fields()["d"] == [0.1, 0.2, 0.3, 0.4]
    assert _same(Intrinsics.from_rs(intr.to_rs()), intr)


def test_depth_to_mm():
    raw = np.array([[0, 1, 1000, 65535]], np.uint16)
    np.testing.assert_array_equal(depth_to_mm(raw, 0.001), raw)
    np.testing.assert_array_equal(depth_to_mm(raw, 0.0001), [[0, 0, 100, 6554]])
    np.testing.assert_array_equal(depth_to_mm(raw, 0.01), [[0, 10, 10000, 65535]])  # saturates
    with pytest.raises(ValueError, match="depth_units"):
        depth_to_mm(raw, 0.0)
    with pytest.raises(ValueError, match="raw"):
        depth_to_mm(raw.astype(np.float32), 0.001)


def test_unsupported_resolution_names_the_mode_and_the_offer():
    settings = CameraSettings(width=123, height=45, fps=30)
    with pytest.raises(UnsupportedProfileError, match=r"color 123x45@30.*640x480"):
        RealSenseCamera(settings, SoftwareSource(settings)).start()
    settings = CameraSettings(width=1920, height=1080, fps=30)  # colour ok, depth not
    with pytest.raises(UnsupportedProfileError, match=r"depth_width.*depth 1920x1080"):
        RealSenseCamera(settings, SoftwareSource(settings)).start()
    settings = CameraSettings(width=640, height=480, fps=90)
    with pytest.raises(UnsupportedProfileError, match=r"runs at \[6, 15, 30, 60\] fps"):
        RealSenseCamera(settings, SoftwareSource(settings)).start()


def test_no_device_names_the_serial():
    with pytest.raises(DeviceNotFoundError, match="1234567890"):
        find_device([], "1234567890")
    settings = CameraSettings(width=640, height=480, fps=30)
    source = SoftwareSource(settings, serial="42")
    source.start()
    try:
        with pytest.raises(DeviceNotFoundError, match=r"serial '999'.*\['42'\]"):
            find_device([source._device], "999")
        assert find_device([source._device], "") is source._device
    finally:
        source.stop()


def test_real_pipeline_without_a_camera_fails_clearly():
    ctx = rs.context()
    if len(ctx.query_devices()):
        pytest.skip("a RealSense camera is connected")
    camera = RealSenseCamera(CameraSettings(serial_no="000111222"))
    with pytest.raises(DeviceNotFoundError, match="000111222"):
        camera.start()
    with pytest.raises(CameraError, match="not started"):
        camera.read()


def test_settings_validation_names_the_field():
    with pytest.raises(ValueError, match="width"):
        CameraSettings(width=0)
    with pytest.raises(ValueError, match="fps"):
        CameraSettings(fps=-30)
    with pytest.raises(ValueError, match="depth_width/depth_height"):
        CameraSettings(depth_width=640)
    with pytest.raises(ValueError, match="timestamp_source"):
        StampMapper("bogus")


def test_stamp_mapper_device_and_arrival():
    arrival = StampMapper("arrival")
    assert arrival.stamp(12.5, "hardware_clock", 1000.0) == 1000.0
    mapper = StampMapper("device", tolerance=0.5)
    # hardware clock: anchored at the first frame, then device intervals are kept exactly
    assert mapper.stamp(100.0, "hardware_clock", 5000.020) == pytest.approx(5000.020)
    assert mapper.stamp(133.0, "hardware_clock", 5000.070) == pytest.approx(5000.053)
    # a faster arrival lowers the offset: stamps never lie in the future of their arrival
    assert mapper.stamp(166.0, "hardware_clock", 5000.080) == pytest.approx(5000.080)
    assert mapper.stamp(199.0, "hardware_clock", 5000.200) == pytest.approx(5000.113)
    # a device clock jump (restart) re-anchors
    assert mapper.stamp(10.0, "hardware_clock", 5001.0) == pytest.approx(5001.0)
    assert mapper.resyncs == 1
    # global time is already host time
    assert StampMapper().stamp(1_700_000_000_000.0, "global_time", 1_700_000_000.01) \
        == pytest.approx(1_700_000_000.0)


def test_frame_stats_rate():
    stats = FrameStats(window=2.0)
    for i in range(31):
        stats.record(i, 10.0 + i / 30.0)
    assert stats.fps() == pytest.approx(30.0)
    assert stats.fps(now=20.0) == 0.0  # stalled
    stats.restart()
    stats.record(0, 21.0)
    assert stats.dropped == 0
