"""camera_node: a pyrealsense2 driver in the realsense2_camera topic layout (no realsense-ros).

Publishes, under ``/<camera_namespace>/<camera_name>``:
``color/image_raw`` (rgb8) + ``color/camera_info``; with ``align_depth``
``aligned_depth_to_color/image_raw`` (16UC1, mm, colour geometry and frame) + its camera_info,
else ``depth/image_rect_raw`` + ``depth/camera_info`` in the depth optical frame; and
``/diagnostics`` (achieved fps, frames dropped, device). A capture thread reads framesets from
:class:`~roboalign_ros.camera.realsense.RealSenseCamera`; a missing device is retried every
``retry_period`` s (``max_retries``, -1 = forever), an unsupported mode shuts the node down
with the reason. ``software_device: true`` streams synthetic frames from an
``rs.software_device`` instead of a camera (demos, tests). Stamps: see ``timestamp_source``.
"""

from __future__ import annotations

import threading
import time

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from roboalign_ros.camera.realsense import (
    CameraError,
    CameraSettings,
    FrameTimeoutError,
    Intrinsics,
    PipelineSource,
    RealSenseCamera,
    SoftwareSource,
    StampMapper,
    UnsupportedProfileError,
)
from roboalign_ros.conversions import numpy_to_image, seconds_to_stamp
from roboalign_ros.nodes.common import (
    ERROR,
    IMAGE_QOS,
    OK,
    WARN,
    Diagnostics,
    declare_parameters,
    run_node,
)


def camera_info_msg(intrinsics: Intrinsics, frame_id: str) -> CameraInfo:
    """Build a CameraInfo from the intrinsics (header stamp left to the caller)."""
    fields = intrinsics.camera_info_fields()
    info = CameraInfo(width=fields["width"], height=fields["height"],
                      distortion_model=fields["distortion_model"], d=fields["d"],
                      k=fields["k"], r=fields["r"], p=fields["p"])
    info.header.frame_id = frame_id
    return info


class CameraNode(Node):
    """Wires RealSenseCamera (capture thread) to image / camera_info / diagnostics topics."""

    def __init__(self, source_factory=None, autostart: bool = True, **node_kwargs):
        super().__init__("camera_node", **node_kwargs)
        p = self.p = declare_parameters(self, "camera_node")
        self.settings = CameraSettings(
            serial_no=p["serial_no"], width=p["width"], height=p["height"], fps=p["fps"],
            enable_depth=p["enable_depth"], align_depth=p["align_depth"],
            depth_width=p["depth_width"], depth_height=p["depth_height"])
        self.stamps = StampMapper(p["timestamp_source"])
        if source_factory is None:
            source_factory = SoftwareSource if p["software_device"] else PipelineSource
        self.camera = RealSenseCamera(self.settings, source_factory(self.settings))

        base = "/" + "/".join(x.strip("/") for x in (p["camera_namespace"], p["camera_name"])
                              if x.strip("/"))
        depth = "aligned_depth_to_color" if p["align_depth"] else "depth"
        depth_image = "image_raw" if p["align_depth"] else "image_rect_raw"
        self.topics = {"color": f"{base}/color/image_raw",
                       "color_info": f"{base}/color/camera_info",
                       "depth": f"{base}/{depth}/{depth_image}",
                       "depth_info": f"{base}/{depth}/camera_info"}
        self.color_pub = self.create_publisher(Image, self.topics["color"], IMAGE_QOS)
        self.color_info_pub = self.create_publisher(CameraInfo, self.topics["color_info"],
                                                    IMAGE_QOS)
        if p["enable_depth"]:
            self.depth_pub = self.create_publisher(Image, self.topics["depth"], IMAGE_QOS)
            self.depth_info_pub = self.create_publisher(CameraInfo, self.topics["depth_info"],
                                                        IMAGE_QOS)
        self.diagnostics = Diagnostics(self, f"{self.get_name()}: {base}")
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)

        self.finished = False  # set when the capture thread gives up: main() then exits
        self.exit_code = 0
        self._state, self._attempts, self._timeouts = "starting", 0, 0
        self._infos: dict[str, CameraInfo] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if autostart:
            self.start()

    def start(self) -> None:
        """Start the capture thread (main() calls it once the node object is held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._capture_loop, name="camera",
                                            daemon=True)
            self._thread.start()

    # -- capture thread ------------------------------------------------------------------

    def _capture_loop(self) -> None:
        p = self.p
        while not self._stop.is_set():
            if not self.camera.streaming and not self._open():
                continue
            try:
                frames = self.camera.read(timeout=p["frame_timeout"])
            except FrameTimeoutError as exc:
                self._timeouts += 1
                self.get_logger().warning(f"{exc}; restarting the camera")
                self._restart()
                continue
            except CameraError as exc:
                self.get_logger().error(f"camera stopped streaming: {exc}; restarting")
                self._restart()
                continue
            if frames is not None:
                self._publish(frames)
        self.camera.stop()

    def _open(self) -> bool:
        """Try to start the camera once; False (after waiting / giving up) when it failed."""
        p = self.p
        self._attempts += 1
        try:
            info = self.camera.start()
        except UnsupportedProfileError as exc:
            self._give_up(f"unsupported stream settings: {exc}")
            return False
        except CameraError as exc:
            limit = p["max_retries"]
            if 0 <= limit < self._attempts:
                self._give_up(f"{exc} (gave up after {self._attempts} attempts)")
                return False
            self._state = f"not streaming: {exc}"
            self.get_logger().error(
                f"{exc}; retrying in {p['retry_period']} s (attempt {self._attempts}"
                + (f" of {limit + 1})" if limit >= 0 else ")"))
            self._stop.wait(p["retry_period"])
            return False
        self._attempts, self._state = 0, "streaming"
        self.stamps.reset()
        self._infos.clear()
        self.get_logger().info(
            f"streaming {info.name} (serial {info.serial}) {p['width']}x{p['height']}@"
            f"{p['fps']} on {self.topics['color']}")
        return True

    def _restart(self) -> None:
        self.camera.stop()
        self._state = "restarting"

    def _give_up(self, reason: str) -> None:
        self.get_logger().fatal(f"{reason}; shutting down")
        self._state, self.exit_code, self.finished = f"failed: {reason}", 1, True
        self._publish_diagnostics()
        self._stop.set()

    def _info_msg(self, key: str, intrinsics: Intrinsics, frame_id: str) -> CameraInfo:
        info = self._infos.get(key)
        if info is None or (info.width, info.height) != (intrinsics.width, intrinsics.height):
            info = self._infos[key] = camera_info_msg(intrinsics, frame_id)
        return info

    def _publish(self, frames) -> None:
        p = self.p
        arrival = self.get_clock().now().nanoseconds * 1e-9
        stamp = self.stamps.stamp(frames.timestamp_ms, frames.timestamp_domain, arrival)
        color_frame = p["color_frame_id"]
        self.color_pub.publish(numpy_to_image(frames.color, "rgb8", stamp=stamp,
                                              frame_id=color_frame))
        info = self._info_msg("color", frames.color_intrinsics, color_frame)
        seconds_to_stamp(stamp, info.header.stamp)
        self.color_info_pub.publish(info)
        if frames.depth_mm is not None:
            frame_id = color_frame if frames.depth_aligned else p["depth_frame_id"]
            self.depth_pub.publish(numpy_to_image(frames.depth_mm, "16UC1", stamp=stamp,
                                                  frame_id=frame_id))
            info = self._info_msg("depth", frames.depth_intrinsics, frame_id)
            seconds_to_stamp(stamp, info.header.stamp)
            self.depth_info_pub.publish(info)

    # -- diagnostics ---------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        stats, p = self.camera.stats, self.p
        fps = stats.fps(time.monotonic())
        if self._state != "streaming":
            level, message = ERROR, self._state
        elif fps < 0.8 * p["fps"]:
            level, message = WARN, f"{fps:.1f} fps of {p['fps']} requested"
        else:
            level, message = OK, "streaming"
        info = self.camera.info
        self.diagnostics.publish(level, message, {
            "fps": fps, "fps_requested": p["fps"], "frames": stats.frames,
            "frames_dropped": stats.dropped, "frame_timeouts": self._timeouts,
            "stamp_resyncs": self.stamps.resyncs,
            "device": info.name if info else "", "serial_no": info.serial if info else "",
            "resolution": f"{p['width']}x{p['height']}"})

    def close(self) -> None:
        """Stop the capture thread and the camera."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.camera.stop()


def _started_camera_node() -> CameraNode:
    node = CameraNode(autostart=False)
    node.start()
    return node


def main(args=None) -> int:
    """Entry point of ``ros2 run roboalign_ros camera_node``: spin until Ctrl-C or give-up."""
    return run_node(_started_camera_node, args)


if __name__ == "__main__":
    raise SystemExit(main())
