"""Depth streams in the dataset: 16-bit lossless (FFV1), read back bit-exact, LeRobot's
`video.is_depth_map` set, refused when malformed, appended like any stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from roboalign_ros.data import DatasetReader, DatasetWriter
from roboalign_ros.data.synthetic import (
    ACTION_NAMES,
    STATE_NAMES,
    record_synthetic_episode,
    synthetic_depth,
    synthetic_step,
)

COLOUR = {"scene": (96, 128)}
DEPTH = {"scene_depth": (96, 128)}
FRAMES = 12


def make(root: Path, episodes: int = 2) -> Path:
    w = DatasetWriter.create(root, 15, STATE_NAMES, ACTION_NAMES, COLOUR, "sim_arm",
                             depth_cameras=DEPTH)
    for e in range(episodes):
        record_synthetic_episode(w, e, FRAMES)
    w.close()
    return root


def test_depth_reads_back_bit_exact_and_is_a_lerobot_depth_map(tmp_path: Path) -> None:
    root = make(tmp_path / "d")
    reader = DatasetReader(root)
    assert reader.cameras == COLOUR and reader.depth_cameras == DEPTH
    for e in range(2):
        ep = reader.episode(e, depth=True)
        expected = np.stack([synthetic_depth(t, 96, 128, seed=e) for t in range(FRAMES)])
        assert ep.depth["scene_depth"].dtype == np.uint16
        np.testing.assert_array_equal(ep.depth["scene_depth"], expected)
        assert set(ep.frames) == {"scene"}          # colour as before
    assert reader.episode(0).depth == {}            # depth only when asked for
    info = json.loads((root / "meta" / "info.json").read_text())
    ft = info["features"]["observation.images.scene_depth"]
    assert ft["dtype"] == "video" and ft["shape"] == [96, 128, 1]
    assert ft["info"]["video.is_depth_map"] is True
    assert ft["info"]["video.codec"] == "ffv1" and ft["info"]["video.pix_fmt"] == "gray16le"
    assert info["features"]["observation.images.scene"]["info"]["video.is_depth_map"] is False
    stats = json.loads((root / "meta" / "stats.json").read_text())
    mean = np.asarray(stats["observation.images.scene_depth"]["mean"]).ravel()
    assert mean.shape == (1,) and 0.5 < mean[0] < 1.1          # metres


def test_appending_keeps_depth_and_training_samples_ignore_it(tmp_path: Path) -> None:
    root = make(tmp_path / "d", episodes=1)
    w = DatasetWriter.open(root)
    record_synthetic_episode(w, 1, FRAMES)
    w.close()
    reader = DatasetReader(root)
    assert len(reader) == 2
    np.testing.assert_array_equal(reader.episode(1, depth=True).depth["scene_depth"][3],
                                  synthetic_depth(3, 96, 128, seed=1))
    sample = next(iter(reader.iter_frames()))
    assert set(sample.images) == {"scene"}


@pytest.mark.parametrize("bad, message", [
    (np.zeros((96, 128), np.uint8), "uint16"),
    (np.zeros((96, 128, 3), np.uint16), "shape"),
])
def test_malformed_depth_is_refused_with_its_name(tmp_path: Path, bad, message) -> None:
    w = DatasetWriter.create(tmp_path / "d", 15, STATE_NAMES, ACTION_NAMES, COLOUR, "x",
                             depth_cameras=DEPTH)
    w.start_episode("go")
    s, a = synthetic_step(0, 0, len(STATE_NAMES), len(ACTION_NAMES))
    with pytest.raises(ValueError, match=f"scene_depth.*{message}"):
        w.add_frame(s, a, {"scene": np.zeros((96, 128, 3), np.uint8), "scene_depth": bad},
                    timestamp=1.0)
    with pytest.raises(ValueError, match="depth_cameras"):
        DatasetWriter.create(tmp_path / "e", 15, STATE_NAMES, ACTION_NAMES, COLOUR, "x",
                             depth_cameras={"scene": (96, 128)})
    w.close()
