"""Small synthetic episodes for tests and benchmarks (smooth moving images, smooth joints)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .lerobot_format import EpisodeInfo
from .writer import DatasetWriter

STATE_NAMES = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6", "gripper"]
ACTION_NAMES = STATE_NAMES
CAMERAS = {"scene": (96, 128), "wrist": (96, 128)}


def synthetic_image(t: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Return a smooth RGB image (gradients + a soft moving blob) for frame `t`; HxWx3 uint8."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width * (0.5 + 0.3 * np.sin(0.07 * t + seed))
    cy = height * (0.5 + 0.3 * np.cos(0.05 * t + 2 * seed))
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.12 * width) ** 2))
    r = 60 + 120 * x / width + 70 * blob
    g = 50 + 100 * y / height + 90 * blob
    b = 140 + 60 * np.sin(0.04 * (x + y) + 0.1 * t + seed) - 60 * blob
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def synthetic_depth(t: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Return a depth map in mm (a tilted table, a moving box, sensor noise); HxW uint16."""
    rng = np.random.default_rng(1000 * seed + t)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = 600 + 400 * y / height + rng.normal(0, 2.0, (height, width))
    box = (abs(x - width * (0.5 + 0.3 * np.sin(0.07 * t + seed))) < width / 8) & \
        (abs(y - height / 2) < height / 8)
    depth[box] -= 150
    depth[rng.random((height, width)) < 0.01] = 0   # holes: no return
    return np.clip(depth, 0, 65535).astype(np.uint16)


def synthetic_step(t: int, episode: int, state_dim: int, action_dim: int) -> tuple[np.ndarray, ...]:
    """Return a smooth joint state and action (the next state) at frame `t` of an episode."""
    phase = 0.3 * episode + np.arange(max(state_dim, action_dim)) * 0.5
    state = np.sin(0.05 * t + phase[:state_dim]).astype(np.float32)
    action = np.sin(0.05 * (t + 1) + phase[:action_dim]).astype(np.float32)
    return state, action


def record_synthetic_episode(
    writer: DatasetWriter,
    episode: int,
    frames: int,
    task: str = "pick up the red cube",
    success: bool | None = True,
    save: bool = True,
    t0: float = 1.7e9,
) -> EpisodeInfo | None:
    """Record one synthetic episode into `writer` (saved unless `save` is False)."""
    writer.start_episode(task, operator="synthetic", source="expert")
    for t in range(frames):
        state, action = synthetic_step(
            t, episode, len(writer.state_names), len(writer.action_names)
        )
        images = {
            cam: synthetic_image(t, h, w, seed=episode + 3 * k)
            for k, (cam, (h, w)) in enumerate(writer.cameras.items())
        }
        images.update({cam: synthetic_depth(t, h, w, seed=episode + 3 * k)
                       for k, (cam, (h, w)) in enumerate(writer.depth_cameras.items())})
        writer.add_frame(state, action, images, timestamp=t0 + episode * 100 + t / writer.fps)
    return writer.save_episode(success=success) if save else None


def write_synthetic_dataset(
    root: str | Path,
    episodes: int = 2,
    frames: int = 30,
    fps: int = 30,
    cameras: Mapping[str, tuple[int, int]] = CAMERAS,
    tasks: tuple[str, ...] = ("pick up the red cube", "open the drawer"),
) -> DatasetWriter:
    """Create a dataset at `root` holding `episodes` synthetic episodes; return the writer."""
    writer = DatasetWriter.create(root, fps, STATE_NAMES, ACTION_NAMES, cameras, "synthetic_arm")
    for e in range(episodes):
        record_synthetic_episode(writer, e, frames, task=tasks[e % len(tasks)])
    return writer
