"""The camera stream profile a policy expects, and how realsense2_camera is asked for it.

realsense2_camera starts each stream at the device default (1280x720 colour on a D435, 16:9)
unless its profile parameters say otherwise. Our checkpoints were trained on 640x480 (4:3)
frames: the robot config's ``camera: {width, height}`` (config/robots/<robot>.yaml) and
config/camera.yaml's ``fps`` are that profile, and a checkpoint's ``image_size`` (its input
after resizing, in vla_config.json) must have the same aspect ratio, or the policy would see
a squashed scene.

Parameter names of realsense-ros 4.x (github.com/IntelRealSense/realsense-ros,
realsense2_camera/launch/rs_launch.py ``configurable_parameters``): 4.55 and later take
``rgb_camera.color_profile`` and ``depth_module.depth_profile``; 4.51 / 4.54 took
``rgb_camera.profile`` and ``depth_module.profile``. rs_launch.py forwards only the names in its
own list to the node (``set_configurable_parameters``), so both spellings are passed and each
version uses its own. ``align_depth.enable: true`` publishes aligned_depth_to_color, the depth
topic the robot configs name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from roboalign_ros.robot import _extract_robot, _robot_yaml_path, package_path

VLA_CONFIG = "vla_config.json"   # roboalign_ros.model.config: a checkpoint's configuration


@dataclass(frozen=True)
class CameraProfile:
    """A colour (and depth) stream profile: pixels and frame rate."""

    width: int
    height: int
    fps: int

    @property
    def text(self) -> str:
        """realsense-ros profile string ``width,height,fps``."""
        return f"{self.width},{self.height},{self.fps}"

    def realsense_arguments(self) -> dict[str, str]:
        """Launch arguments for realsense2_camera's rs_launch.py (4.51 to 4.56 names)."""
        return {
            "rgb_camera.color_profile": self.text,     # 4.55+
            "depth_module.depth_profile": self.text,   # 4.55+
            "rgb_camera.profile": self.text,           # 4.51, 4.54
            "depth_module.profile": self.text,         # 4.51, 4.54
            "align_depth.enable": "true",
        }


def checkpoint_image_size(model_path: str | Path | None) -> tuple[int, int] | None:
    """(height, width) a checkpoint resizes its images to, if its config stores one."""
    if not model_path:
        return None
    path = Path(model_path) / VLA_CONFIG
    if not path.is_file():
        return None
    size = json.loads(path.read_text()).get("image_size")
    return (int(size[0]), int(size[1])) if size else None


def camera_fps(camera_yaml: str | Path | None = None) -> int:
    """The frame rate camera_node is configured with (config/camera.yaml ``fps``)."""
    path = Path(camera_yaml) if camera_yaml else package_path("config", "camera.yaml")
    doc = yaml.safe_load(path.read_text()) or {}
    return int(doc.get("camera_node", {}).get("ros__parameters", {}).get("fps", 30))


def camera_profile(robot: str, model_path: str | Path | None = None,
                   camera_yaml: str | Path | None = None) -> CameraProfile:
    """The colour/depth profile for ``robot`` (a config name or YAML path) and a checkpoint.

    Raises ValueError when the checkpoint's images have another aspect ratio than the robot
    config's camera (a profile realsense2_camera would deliver squashed).
    """
    source = _robot_yaml_path(robot)
    r = _extract_robot(yaml.safe_load(Path(source).read_text()), str(source))
    camera = r.get("camera") or {}
    width, height = int(camera.get("width", 640)), int(camera.get("height", 480))
    size = checkpoint_image_size(model_path)
    if size is not None and abs(size[0] / size[1] - height / width) > 0.01:
        raise ValueError(
            f"the checkpoint {model_path} works on {size[1]}x{size[0]} images (aspect "
            f"{size[1] / size[0]:.3f}) but robot.camera in {source} asks the camera for "
            f"{width}x{height} (aspect {width / height:.3f}): set robot.camera width/height to a "
            "camera profile with the checkpoint's aspect ratio")
    return CameraProfile(width, height, camera_fps(camera_yaml))
