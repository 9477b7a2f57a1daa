"""RealSense driver core (pyrealsense2, no rclpy): streams, alignment, intrinsics, stamps.

:class:`RealSenseCamera` turns framesets of a :class:`FrameSource` into
:class:`CameraFrames`: an RGB array, the depth in millimetres (uint16, aligned to the colour
image when asked), the intrinsics of each as :class:`Intrinsics` (with the ``CameraInfo``
fields K, R, P, D and distortion model) and the device timestamp. Two sources exist:

- :class:`PipelineSource`: a real camera through ``rs.pipeline`` (serial number or the first
  device), with clear errors when no such device is connected or the resolution is not offered.
- :class:`SoftwareSource`: an ``rs.software_device`` fed with synthetic frames, paced at the
  configured rate. Tests and camera-less demos use it; the frames go through the same
  librealsense code (``rs.align``, depth units, timestamps) as a real camera's.

Stamps (:class:`StampMapper`): ``device`` mode uses the frame's own timestamp. With global time
(enabled on real sensors that support it) librealsense already reports host-clock milliseconds
and those are used as they are; a hardware-clock timestamp is mapped to the host clock by an
offset anchored at the earliest-arriving frame and re-anchored when it drifts by more than
``tolerance``. ``arrival`` mode stamps with the host clock when the frameset reached us (use it
with ``use_sim_time``). Both images of one frameset carry the colour frame's stamp.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from roboalign_ros.parameters import default


class CameraError(RuntimeError):
    """The camera cannot be opened or stopped streaming."""


class DeviceNotFoundError(CameraError):
    """No (matching) RealSense device is connected; retrying may help (cable, power)."""


class UnsupportedProfileError(CameraError, ValueError):
    """The device does not offer the requested resolution / rate; retrying will not help."""


class FrameTimeoutError(CameraError):
    """No frameset arrived within the timeout."""


def _require_rs():
    """Import pyrealsense2 on first use (importing this module does not load it).

    pyrealsense2 2.59 links its own Fast-DDS and exports its symbols. In a process that also
    runs ROS 2 (rmw_fastrtps), import rclpy *before* pyrealsense2: the other order makes the
    process double-free at exit (SIGSEGV after all work is done). The nodes do this.
    """
    try:
        import pyrealsense2
    except ImportError as exc:
        raise CameraError(
            f"pyrealsense2 is not importable ({exc}); install it with "
            "`pip install pyrealsense2` (and `apt-get install libusb-1.0-0`)") from exc
    return pyrealsense2


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CameraSettings:
    """What to stream. ``depth_width``/``depth_height`` 0 = the colour resolution."""

    serial_no: str = default("camera_node", "serial_no")
    width: int = default("camera_node", "width")
    height: int = default("camera_node", "height")
    fps: int = default("camera_node", "fps")
    enable_depth: bool = default("camera_node", "enable_depth")
    align_depth: bool = default("camera_node", "align_depth")
    depth_width: int = default("camera_node", "depth_width")
    depth_height: int = default("camera_node", "depth_height")

    def __post_init__(self):
        """Validate every field (ValueError naming it)."""
        for name in ("width", "height", "fps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {value!r} must be a positive integer")
        for name in ("depth_width", "depth_height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: {value!r} must be an integer >= 0 (0 = colour size)")
        if (self.depth_width == 0) != (self.depth_height == 0):
            raise ValueError("depth_width/depth_height: set both or neither (0 = colour size)")
        if not isinstance(self.serial_no, str):
            raise ValueError(f"serial_no: {self.serial_no!r} must be a string ('' = any)")

    @property
    def depth_size(self) -> tuple[int, int]:
        """(width, height) of the depth stream."""
        if self.depth_width:
            return self.depth_width, self.depth_height
        return self.width, self.height


# --------------------------------------------------------------------------- intrinsics

_PLUMB_BOB_MODELS = ("none", "brown_conrady", "modified_brown_conrady", "inverse_brown_conrady")
_EQUIDISTANT_MODELS = ("kannala_brandt4", "ftheta")


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of one stream plus its librealsense distortion model and coeffs."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str = "none"
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_rs(cls, intrinsics) -> Intrinsics:
        """Copy an ``rs.intrinsics``."""
        model = getattr(intrinsics.model, "name", str(intrinsics.model).split(".")[-1])
        return cls(int(intrinsics.width), int(intrinsics.height), float(intrinsics.fx),
                   float(intrinsics.fy), float(intrinsics.ppx), float(intrinsics.ppy),
                   model, tuple(float(c) for c in intrinsics.coeffs))

    def to_rs(self):
        """Build an ``rs.intrinsics`` (for software devices)."""
        r = _require_rs()
        out = r.intrinsics()
        out.width, out.height = self.width, self.height
        out.fx, out.fy, out.ppx, out.ppy = self.fx, self.fy, self.ppx, self.ppy
        out.model = getattr(r.distortion, self.model)
        out.coeffs = list(self.coeffs)
        return out

    @property
    def distortion_model(self) -> str:
        """The ROS ``CameraInfo.distortion_model`` (as realsense2_camera maps it)."""
        if self.model in _EQUIDISTANT_MODELS:
            return "equidistant"
        if self.model in _PLUMB_BOB_MODELS:
            return "plumb_bob"
        raise ValueError(f"model: librealsense distortion {self.model!r} has no ROS equivalent")

    def camera_info_fields(self) -> dict[str, object]:
        """``CameraInfo`` fields: width, height, distortion_model, d, k, r, p (row-major lists).

        The image is not rectified by the driver, so R is the identity and P = [K | 0]
        (monocular: Tx = Ty = 0).
        """
        model = self.distortion_model
        d = list(self.coeffs[:4]) if model == "equidistant" else list(self.coeffs[:5])
        if model == "plumb_bob" and self.model == "none":
            d = [0.0] * 5
        fx, fy, cx, cy = self.fx, self.fy, self.ppx, self.ppy
        return {
            "width": self.width,
            "height": self.height,
            "distortion_model": model,
            "d": [float(c) for c in d],
            "k": [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
            "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            "p": [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        }


def depth_to_mm(raw: np.ndarray, depth_units: float) -> np.ndarray:
    """Convert raw z16 depth in ``depth_units`` metres per count to uint16 millimetres.

    0 stays 0 (no data); values past 65.535 m saturate. The common D400 unit (1 mm) is a copy.
    """
    if not np.isfinite(depth_units) or depth_units <= 0:
        raise ValueError(f"depth_units: {depth_units!r} must be a finite number > 0")
    raw = np.asarray(raw)
    if raw.dtype != np.uint16:
        raise ValueError(f"raw: expected uint16 z16 depth, got {raw.dtype}")
    if abs(depth_units - 0.001) < 1e-9:
        return raw.copy()
    mm = np.rint(raw.astype(np.float64) * (depth_units * 1000.0))
    return np.clip(mm, 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- frames and stamps


@dataclass
class CameraFrames:
    """One frameset, copied out of librealsense's buffers."""

    color: np.ndarray  # (H, W, 3) uint8 RGB
    color_intrinsics: Intrinsics
    depth_mm: np.ndarray | None  # (h, w) uint16 millimetres, 0 = no data
    depth_intrinsics: Intrinsics | None  # the colour intrinsics when aligned
    depth_aligned: bool
    depth_units: float  # metres per raw count as the device reported it
    timestamp_ms: float  # colour frame's device timestamp
    timestamp_domain: str  # hardware_clock / system_time / global_time
    frame_number: int
    arrival_time: float  # host clock (time.time()) when the frameset was read


class StampMapper:
    """Map frame timestamps to host-clock seconds (see the module docstring)."""

    HOST_DOMAINS = ("system_time", "global_time")

    def __init__(self, source: str = "device", tolerance: float = 0.5):
        if source not in ("device", "arrival"):
            raise ValueError(f"timestamp_source: {source!r} must be 'device' or 'arrival'")
        if not tolerance > 0:
            raise ValueError(f"tolerance: {tolerance!r} must be > 0")
        self.source, self.tolerance = source, float(tolerance)
        self._offset: float | None = None
        self.resyncs = 0

    def stamp(self, timestamp_ms: float, domain: str, arrival: float) -> float:
        """Return the stamp (s) of a frame with this timestamp that arrived at ``arrival``."""
        if self.source == "arrival":
            return arrival
        t = timestamp_ms * 1e-3
        if domain in self.HOST_DOMAINS and 0.0 <= arrival - t < self.tolerance:
            return t  # already the host clock (global time)
        error = None if self._offset is None else arrival - (t + self._offset)
        if error is None or abs(error) > self.tolerance:
            self._offset = arrival - t  # (re-)anchor: this frame's transport delay is included
            self.resyncs += error is not None
        elif error < 0:
            self._offset += error  # a faster arrival: less delay, never a stamp in the future
        return t + self._offset

    def reset(self) -> None:
        """Forget the offset (after a restart the device clock starts again)."""
        self._offset = None


class FrameStats:
    """Frames received, frames dropped (gaps in frame numbers) and the achieved rate."""

    def __init__(self, window: float = 2.0):
        self.window = window
        self.frames = 0
        self.dropped = 0
        self._last_number: int | None = None
        self._times: deque[float] = deque()

    def record(self, frame_number: int, now: float) -> None:
        """Count one frameset read at ``now`` (monotonic seconds)."""
        self.frames += 1
        if self._last_number is not None and frame_number > self._last_number:
            self.dropped += frame_number - self._last_number - 1
        self._last_number = frame_number
        self._times.append(now)
        while len(self._times) > 2 and now - self._times[0] > self.window:
            self._times.popleft()

    def fps(self, now: float | None = None) -> float:
        """Frames per second over the last ``window`` seconds (0 when stalled)."""
        if len(self._times) < 2:
            return 0.0
        if now is not None and now - self._times[-1] > self.window:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def restart(self) -> None:
        """Frame numbers start again after a device restart (no drops counted across it)."""
        self._last_number = None
        self._times.clear()


# --------------------------------------------------------------------------- device helpers


@dataclass(frozen=True)
class SourceInfo:
    """What a started source reports about its device."""

    name: str
    serial: str
    firmware: str = ""


def _info(device, key: str) -> str:
    r = _require_rs()
    info = getattr(r.camera_info, key)
    return device.get_info(info) if device.supports(info) else ""


def find_device(devices: Sequence, serial_no: str = ""):
    """Pick the device with ``serial_no`` ('' = the first) or raise DeviceNotFoundError."""
    serials = [_info(d, "serial_number") for d in devices]
    if not devices:
        wanted = f"serial_no {serial_no!r}" if serial_no else "serial_no '' (any device)"
        raise DeviceNotFoundError(
            f"no RealSense device connected (wanted {wanted}); check the USB 3 cable, power "
            "and udev rules (librealsense's 99-realsense-libusb.rules)")
    if not serial_no:
        return devices[0]
    for device, serial in zip(devices, serials):
        if serial == serial_no:
            return device
    raise DeviceNotFoundError(
        f"serial_no: no RealSense device with serial {serial_no!r}; connected: {serials}")


def _modes(device, stream_name: str, format_name: str) -> set[tuple[int, int, int]]:
    r = _require_rs()
    stream, fmt = getattr(r.stream, stream_name), getattr(r.format, format_name)
    modes = set()
    for sensor in device.query_sensors():
        for profile in sensor.get_stream_profiles():
            if profile.stream_type() == stream and profile.format() == fmt \
                    and profile.is_video_stream_profile():
                video = profile.as_video_stream_profile()
                modes.add((video.width(), video.height(), profile.fps()))
    return modes


def check_profiles(device, settings: CameraSettings) -> None:
    """Raise UnsupportedProfileError (listing what is offered) for an unavailable mode."""
    wanted = [("color", "rgb8", "width/height/fps", (settings.width, settings.height))]
    if settings.enable_depth:
        wanted.append(("depth", "z16", "depth_width/depth_height/fps", settings.depth_size))
    for stream, fmt, fields, (w, h) in wanted:
        modes = _modes(device, stream, fmt)
        if (w, h, settings.fps) not in modes:
            offered = sorted({(mw, mh) for mw, mh, mf in modes if mf == settings.fps},
                             reverse=True)
            rates = sorted({mf for mw, mh, mf in modes if (mw, mh) == (w, h)})
            name = _info(device, "name") or "device"
            raise UnsupportedProfileError(
                f"{fields}: {stream} {w}x{h}@{settings.fps} {fmt} is not offered by {name} "
                f"(serial {_info(device, 'serial_number')!r}); at {settings.fps} fps it offers "
                f"{[f'{a}x{b}' for a, b in offered]}"
                + (f"; {w}x{h} runs at {rates} fps" if rates else ""))


# --------------------------------------------------------------------------- sources


class PipelineSource:
    """A real camera through ``rs.pipeline``."""

    def __init__(self, settings: CameraSettings, *, global_time: bool = True):
        self.settings, self.global_time = settings, global_time
        self._pipeline = None

    def start(self) -> SourceInfo:
        """Find the device, check the modes, start streaming (CameraError on failure)."""
        r = _require_rs()
        s = self.settings
        context = r.context()
        device = find_device(list(context.query_devices()), s.serial_no)
        check_profiles(device, s)
        serial = _info(device, "serial_number")
        for sensor in device.query_sensors():
            if sensor.supports(r.option.global_time_enabled):
                sensor.set_option(r.option.global_time_enabled, 1.0 if self.global_time else 0.0)
        config = r.config()
        config.enable_device(serial)
        config.enable_stream(r.stream.color, s.width, s.height, r.format.rgb8, s.fps)
        if s.enable_depth:
            dw, dh = s.depth_size
            config.enable_stream(r.stream.depth, dw, dh, r.format.z16, s.fps)
        pipeline = r.pipeline(context)
        try:
            pipeline.start(config)
        except RuntimeError as exc:
            raise CameraError(f"starting {serial!r} failed: {exc}") from exc
        self._pipeline = pipeline
        return SourceInfo(_info(device, "name"), serial, _info(device, "firmware_version"))

    def wait(self, timeout: float):
        """Return the next frameset, or None after ``timeout`` seconds."""
        try:
            ok, frames = self._pipeline.try_wait_for_frames(int(timeout * 1000))
        except RuntimeError as exc:
            raise CameraError(f"streaming failed: {exc}") from exc
        return frames if ok else None

    def stop(self) -> None:
        """Stop streaming (idempotent)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            try:
                pipeline.stop()
            except RuntimeError:
                pass  # already stopped / device gone


# Modes a D435-like software device offers (width, height) x fps.
SOFTWARE_COLOR_MODES = ((1920, 1080), (1280, 720), (848, 480), (640, 480), (640, 360),
                        (424, 240), (320, 240), (320, 180))
SOFTWARE_DEPTH_MODES = ((1280, 720), (848, 480), (640, 480), (640, 360), (480, 270),
                        (424, 240), (256, 144))
SOFTWARE_FPS = (6, 15, 30, 60)


def synthetic_intrinsics(width: int, height: int, stream: str) -> Intrinsics:
    """Intrinsics of the software device: depth sees wider (87 vs 69 deg HFOV, like a D435)."""
    focal = (0.55 if stream == "depth" else 0.73) * width
    return Intrinsics(width, height, focal, focal, (width - 1) / 2.0, (height - 1) / 2.0,
                      "brown_conrady", (0.0, 0.0, 0.0, 0.0, 0.0))


def synthetic_color(frame_number: int, height: int, width: int) -> np.ndarray:
    """Make the software device's RGB frame ``frame_number``: moving gradients (uint8)."""
    x = np.arange(width, dtype=np.int64)[None, :]
    y = np.arange(height, dtype=np.int64)[:, None]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (x + frame_number) % 256
    rgb[..., 1] = (y + 2 * frame_number) % 256
    rgb[..., 2] = (x + y + 3 * frame_number) % 256
    return rgb


def synthetic_depth_m(frame_number: int, height: int, width: int) -> np.ndarray:
    """Make the software device's depth frame in metres: a fronto-parallel plane 0.8-1.29 m."""
    return np.full((height, width), 0.8 + 0.01 * (frame_number % 50), np.float64)


@dataclass
class SoftwareSource:
    """An ``rs.software_device`` with colour + depth sensors fed synthetic frames on ``wait``.

    ``color_fn(n, h, w) -> uint8 RGB`` and ``depth_fn(n, h, w) -> metres`` make frame ``n``;
    ``drop_frames`` are frame numbers that are skipped (to exercise drop counting);
    ``pace`` delivers frames at the configured rate in real time (False: as fast as asked).
    """

    settings: CameraSettings
    depth_units: float = 0.001
    color_fn: Callable[[int, int, int], np.ndarray] = synthetic_color
    depth_fn: Callable[[int, int, int], np.ndarray] = synthetic_depth_m
    drop_frames: Collection[int] = ()
    pace: bool = True
    timestamp_domain: str = "hardware_clock"
    serial: str = "000000000001"
    name: str = "Intel RealSense D435 (software device)"
    color_modes: Sequence[tuple[int, int]] = SOFTWARE_COLOR_MODES
    depth_modes: Sequence[tuple[int, int]] = SOFTWARE_DEPTH_MODES
    rates: Sequence[int] = SOFTWARE_FPS
    injected: dict = field(default_factory=dict, init=False)  # last frame number -> arrays

    def start(self) -> SourceInfo:
        """Build the device, check the requested modes, open and start its sensors."""
        r = _require_rs()
        s = self.settings
        device = r.software_device()
        device.register_info(r.camera_info.name, self.name)
        device.register_info(r.camera_info.serial_number, self.serial)
        color_sensor = device.add_sensor("RGB Camera")
        depth_sensor = device.add_sensor("Stereo Module")
        depth_sensor.add_read_only_option(r.option.depth_units, float(self.depth_units))
        profiles: dict[tuple[str, int, int, int], object] = {}
        uid = 0
        for stream, sensor, modes, fmt, bpp in (
                ("color", color_sensor, self.color_modes, r.format.rgb8, 3),
                ("depth", depth_sensor, self.depth_modes, r.format.z16, 2)):
            for w, h in modes:
                for fps in self.rates:
                    video = r.video_stream()
                    video.type, video.index, video.uid = getattr(r.stream, stream), 0, uid
                    video.width, video.height, video.fps, video.bpp, video.fmt = w, h, fps, bpp, fmt
                    video.intrinsics = synthetic_intrinsics(w, h, stream).to_rs()
                    profiles[(stream, w, h, fps)] = sensor.add_video_stream(video)
                    uid += 1
        check_profiles(device, s)
        color_profile = profiles[("color", s.width, s.height, s.fps)]
        identity = r.extrinsics()
        identity.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        identity.translation = [0.0, 0.0, 0.0]
        self._device, self._sensors, self._queues = device, [], {}
        self._profiles = {"color": color_profile.as_video_stream_profile()}
        streams = [("color", color_sensor, color_profile)]
        if s.enable_depth:
            dw, dh = s.depth_size
            depth_profile = profiles[("depth", dw, dh, s.fps)]
            depth_profile.register_extrinsics_to(color_profile, identity)
            self._profiles["depth"] = depth_profile.as_video_stream_profile()
            streams.append(("depth", depth_sensor, depth_profile))
        for stream, sensor, profile in streams:
            queue = r.frame_queue(2, keep_frames=True)
            sensor.open(profile)
            sensor.start(queue)
            self._sensors.append(sensor)
            self._queues[stream] = queue
        # librealsense's syncer drops software frames unpredictably: pair them ourselves.
        self._pending: list = []
        self._out = r.frame_queue(2, keep_frames=True)
        self._combiner = r.processing_block(self._combine)
        self._combiner.start(self._out)
        self._number, self._t0, self._keep = 0, time.monotonic(), []
        return SourceInfo(self.name, self.serial, "software")

    def _combine(self, frame, source) -> None:
        source.frame_ready(source.allocate_composite_frame(self._pending + [frame]))

    def _inject(self, stream: str, pixels: np.ndarray, number: int, timestamp_ms: float) -> None:
        r = _require_rs()
        profile = self._profiles[stream]
        frame = r.software_video_frame()
        frame.pixels = pixels
        frame.bpp = pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
        frame.stride = profile.width() * frame.bpp
        frame.timestamp = timestamp_ms
        frame.domain = getattr(r.timestamp_domain, self.timestamp_domain)
        frame.frame_number = number
        frame.profile = profile
        if stream == "depth":
            frame.depth_units = float(self.depth_units)
        self._sensors[0 if stream == "color" else 1].on_video_frame(frame)

    def wait(self, timeout: float):
        """Make, inject and return the next frameset (None when it is not due within timeout)."""
        s = self.settings
        while self._number in self.drop_frames:
            self._number += 1
        n = self._number
        if self.pace:
            delay = self._t0 + n / s.fps - time.monotonic()
            if delay > timeout:
                time.sleep(timeout)
                return None
            if delay > 0:
                time.sleep(delay)
        if self.timestamp_domain == "hardware_clock":
            timestamp_ms = 1000.0 * n / s.fps + 12.5  # device clock: ms since power-up
        else:
            timestamp_ms = time.time() * 1000.0
        color = np.ascontiguousarray(self.color_fn(n, s.height, s.width), dtype=np.uint8)
        arrays = {"color": color}
        self._keep = [color]  # software frames reference these buffers until they are released
        if s.enable_depth:
            dw, dh = s.depth_size
            metres = np.asarray(self.depth_fn(n, dh, dw), dtype=np.float64)
            raw = np.clip(np.rint(metres / self.depth_units), 0, 65535).astype(np.uint16)
            raw = np.ascontiguousarray(raw)
            arrays["depth"] = raw
            self._keep.append(raw)
            self._inject("depth", raw, n, timestamp_ms)
        self._inject("color", color, n, timestamp_ms)
        self._number += 1
        self.injected = {"frame_number": n, "timestamp_ms": timestamp_ms, **arrays}
        frames = {k: q.wait_for_frame(int(timeout * 1000) + 1000) for k, q in self._queues.items()}
        self._pending = [frames["depth"]] if "depth" in frames else []
        self._combiner.invoke(frames["color"])
        composite = self._out.wait_for_frame(int(timeout * 1000) + 1000)
        self._pending = []
        return composite

    def stop(self) -> None:
        """Stop and close the sensors (idempotent)."""
        for sensor in getattr(self, "_sensors", []):
            try:
                sensor.stop()
                sensor.close()
            except RuntimeError:
                pass
        self._sensors = []


# --------------------------------------------------------------------------- the camera


class RealSenseCamera:
    """Start a source, read framesets as :class:`CameraFrames`, keep drop / rate statistics."""

    def __init__(self, settings: CameraSettings, source=None):
        self.settings = settings
        self.source = source if source is not None else PipelineSource(settings)
        self.info: SourceInfo | None = None
        self.stats = FrameStats()
        self._align = None

    @property
    def streaming(self) -> bool:
        """True between a successful start() and stop()."""
        return self.info is not None

    def start(self) -> SourceInfo:
        """Start streaming; raises DeviceNotFoundError / UnsupportedProfileError / CameraError."""
        r = _require_rs()
        self.info = self.source.start()
        self._align = r.align(r.stream.color) if self.settings.align_depth else None
        self.stats.restart()
        return self.info

    def read(self, timeout: float = 1.0) -> CameraFrames | None:
        """Return the next frameset (None if a stream is missing); FrameTimeoutError on timeout."""
        if not self.streaming:
            raise CameraError("read: the camera is not started")
        frames = self.source.wait(timeout)
        if frames is None:
            raise FrameTimeoutError(f"no frameset from {self.info.serial!r} within {timeout} s")
        arrival = time.time()
        frameset = frames.as_frameset()
        s = self.settings
        if s.enable_depth and self._align is not None and frameset.get_depth_frame():
            frameset = self._align.process(frameset)
        color = frameset.get_color_frame()
        depth = frameset.get_depth_frame() if s.enable_depth else None
        if not color or (s.enable_depth and not depth):
            return None
        color_intr = Intrinsics.from_rs(color.profile.as_video_stream_profile().intrinsics)
        out = CameraFrames(
            color=np.array(np.asanyarray(color.get_data()), dtype=np.uint8),
            color_intrinsics=color_intr,
            depth_mm=None, depth_intrinsics=None, depth_aligned=False, depth_units=0.0,
            timestamp_ms=float(color.get_timestamp()),
            timestamp_domain=color.get_frame_timestamp_domain().name,
            frame_number=int(color.get_frame_number()),
            arrival_time=arrival)
        if depth:
            units = float(depth.get_units())
            out.depth_units = units
            out.depth_mm = depth_to_mm(np.asanyarray(depth.get_data()), units)
            out.depth_aligned = self._align is not None
            out.depth_intrinsics = (color_intr if out.depth_aligned else Intrinsics.from_rs(
                depth.profile.as_video_stream_profile().intrinsics))
        self.stats.record(out.frame_number, time.monotonic())
        return out

    def stop(self) -> None:
        """Stop streaming (idempotent)."""
        self.info = None
        self.source.stop()
