"""Depth streams in the dataset: 16-bit lossless (FFV1 in Matroska), read back bit-exact,
ours and not a LeRobot feature (LeRobot 0.4 mangled them, 0.6 refuses FFV1 features), refused
when malformed, appended like any stream; datasets with depth as a feature still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from roboalign_ros.data import DatasetReader, DatasetWriter
from roboalign_ros.data import lerobot_format as fmt
from roboalign_ros.data.errors import DatasetFormatError
from roboalign_ros.data.synthetic import (
    ACTION_NAMES,
    STATE_NAMES,
    record_synthetic_episode,
    synthetic_depth,
    synthetic_step,
)
from roboalign_ros.data.video import VideoEncoder

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


def test_depth_reads_back_bit_exact_and_stays_outside_lerobots_features(tmp_path: Path) -> None:
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
    assert set(k for k in info["features"] if k.startswith("observation.images.")) == \
        {"observation.images.scene"}, "depth is a LeRobot feature"
    desc = info["roboalign"]["depth_streams"]["scene_depth"]
    assert desc["shape"] == [96, 128, 1] and desc["unit"] == "mm" and desc["codec"] == "ffv1"
    path = root / "depth" / "scene_depth" / "chunk-000" / "file-001.mkv"
    with av.open(str(path)) as container:
        assert "matroska" in container.format.name
        assert container.streams.video[0].codec_context.name == "ffv1"
    # its stats are ours too (LeRobot's tools check stats.json's as image stats)
    assert "observation.images.scene_depth" not in json.loads(
        (root / "meta" / "stats.json").read_text())
    mean = np.asarray(desc["stats"]["mean"]).ravel()
    assert mean.shape == (1,) and 0.5 < mean[0] < 1.1          # metres
    np.testing.assert_array_equal(reader.stats["observation.images.scene_depth"]["mean"],
                                  desc["stats"]["mean"])
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").column_names
    assert not any(c.startswith("stats/observation.images.scene_depth") for c in rows)


def test_an_unknown_depth_description_is_refused_by_name(tmp_path: Path) -> None:
    root = make(tmp_path / "d", episodes=1)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["roboalign"]["depth_streams"]["scene_depth"]["codec"] = "hevc"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match="depth_streams.*scene_depth"):
        DatasetReader(root)


def depth_as_video_feature(root: Path, feature_info: dict, encode) -> None:
    """Move the depth of ``root`` into a video feature (``encode(path, frames)`` writes each
    episode's file): our layout before depth left the features, or LeRobot 0.6's own."""
    key, layout = "observation.images.scene_depth", fmt.Layout(root)
    for e in range(len(DatasetReader(root))):
        encode(layout.video("scene_depth", e), DatasetReader(root).episode(e, depth=True)
               .depth["scene_depth"])
        row_path = layout.episode_meta(e)
        row = pq.read_table(row_path)
        for name, value in (("chunk_index", 0), ("file_index", e), ("from_timestamp", 0.0),
                            ("to_timestamp", FRAMES / 15)):
            row = row.append_column(f"videos/{key}/{name}", pa.array([value]))
        pq.write_table(row, row_path)
    for path in (root / "depth").rglob("*.mkv"):
        path.unlink()
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["roboalign"]["depth_streams"]
    info["features"][key] = {"dtype": "video", "shape": [96, 128, 1],
                             "names": ["height", "width", "channels"], "info": feature_info}
    (root / "meta" / "info.json").write_text(json.dumps(info))


def test_a_dataset_with_depth_as_a_video_feature_still_reads(tmp_path: Path) -> None:
    # the layout before depth left LeRobot's features: FFV1 in mp4 under videos/
    def ffv1(path, frames):
        enc = VideoEncoder(path, 15, 96, 128, depth=True)
        for f in frames:
            enc.encode(f)
        enc.close()

    root = make(tmp_path / "d")
    depth_as_video_feature(root, {"video.codec": "ffv1", "video.is_depth_map": True}, ffv1)
    reader = DatasetReader(root)
    assert reader.cameras == COLOUR and reader.depth_cameras == DEPTH
    np.testing.assert_array_equal(reader.episode(1, depth=True).depth["scene_depth"][5],
                                  synthetic_depth(5, 96, 128, seed=1))


def lerobot_quantize(mm: np.ndarray) -> np.ndarray:
    """LeRobot 0.6's quantize_depth (lerobot/datasets/depth_utils.py) with its defaults, for
    uint16 millimetres: log-spaced 12-bit codes, computed in mm."""
    lo, hi, shift = 10.0, 10000.0, 3500.0
    norm = (np.log(mm.astype(np.float32) + shift) - np.log(lo + shift)) / \
        (np.log(hi + shift) - np.log(lo + shift))
    return np.rint(norm * 4095).clip(0, 4095).astype(np.uint16)


def test_lerobots_own_depth_reads_as_its_reader_gives_it(tmp_path: Path) -> None:
    # LeRobot 0.6 stores depth as 12-bit codes, x265 lossless gray12le, is_depth_map
    def x265(path, frames):
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w", format="mp4") as out:
            stream = out.add_stream("libx265", rate=15)
            stream.width, stream.height, stream.pix_fmt = 128, 96, "gray12le"
            stream.options = {"x265-params": "lossless=1:log-level=error"}
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(lerobot_quantize(f),
                                                                 format="gray12le")))
            out.mux(stream.encode(None))

    root = make(tmp_path / "d")
    depth_as_video_feature(root, {"video.codec": "hevc", "video.pix_fmt": "gray12le",
                                  "is_depth_map": True, "video.depth_min": 0.01,
                                  "video.depth_max": 10.0, "video.shift": 3.5,
                                  "video.use_log": True}, x265)
    reader = DatasetReader(root)
    assert reader.cameras == COLOUR and reader.depth_cameras == DEPTH
    got = reader.episode(1, depth=True).depth["scene_depth"]
    want = np.stack([synthetic_depth(t, 96, 128, seed=1) for t in range(FRAMES)])
    assert got.dtype == np.uint16 and got.shape == want.shape
    valid = want > 0
    # log codes near 0.6-1 m are 1.3 mm apart: within a millimetre of the truth
    assert np.abs(got[valid].astype(int) - want[valid]).max() <= 1
    assert np.all(got[~valid] == 10), "LeRobot reads a code of 0 as depth_min (10 mm)"


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
    with pytest.raises(ValueError, match="depth_streams"):
        DatasetWriter.create(tmp_path / "f", 15, STATE_NAMES, ACTION_NAMES, COLOUR, "x",
                             metadata={"depth_streams": {}})
    w.close()


def far(depth: np.ndarray) -> np.ndarray:
    """A frame with a patch past the copy's range (5 m) and one at its edge (4095 mm)."""
    depth = depth.copy()
    depth[:4, :4], depth[-4:, -4:] = 5000, 4095
    return depth


def make_with_copy(root: Path, episodes: int = 2) -> Path:
    w = DatasetWriter.create(root, 15, STATE_NAMES, ACTION_NAMES, COLOUR, "sim_arm",
                             depth_cameras=DEPTH, lerobot_depth=True)
    for e in range(episodes):
        w.start_episode("go")
        for t in range(FRAMES):
            s, a = synthetic_step(t, e, len(STATE_NAMES), len(ACTION_NAMES))
            w.add_frame(s, a, {"scene": np.full((96, 128, 3), t, np.uint8),
                               "scene_depth": far(synthetic_depth(t, 96, 128, seed=e))},
                        timestamp=1.0 + t / 15 + 100 * e)
        w.save_episode()
    w.close()
    return root


def test_the_opt_in_lerobot_copy_is_lerobots_depth_feature_and_ours_stays_the_reference(
        tmp_path: Path) -> None:
    root = make_with_copy(tmp_path / "d")
    info = json.loads((root / "meta" / "info.json").read_text())
    ft = info["features"]["observation.images.scene_depth"]
    # as LeRobot 0.6 describes its own depth (is_depth_map, hevc gray12le), quantizer linear
    assert ft["shape"] == [96, 128, 1] and ft["info"]["is_depth_map"] is True
    assert (ft["info"]["video.codec"], ft["info"]["video.pix_fmt"]) == ("hevc", "gray12le")
    assert (ft["info"]["video.depth_min"], ft["info"]["video.depth_max"],
            ft["info"]["video.use_log"]) == (0.0, 4.095, False)
    copy = root / "videos/observation.images.scene_depth/chunk-000/file-001.mp4"
    with av.open(str(copy)) as c:
        codes = np.stack([f.to_ndarray(format="gray12le") for f in c.decode(video=0)])
    truth = np.stack([far(synthetic_depth(t, 96, 128, seed=1)) for t in range(FRAMES)])
    np.testing.assert_array_equal(codes, np.minimum(truth, 4095))   # 1 mm codes, lossless
    # LeRobot's stats of the copy: millimetres, (1, 1, 1); ours stay metres, and ours are read
    stats = json.loads((root / "meta" / "stats.json").read_text())
    mm = np.asarray(stats["observation.images.scene_depth"]["mean"])
    ours = np.asarray(info["roboalign"]["depth_streams"]["scene_depth"]["stats"]["mean"])
    assert mm.shape == (1, 1, 1) and mm.ravel()[0] == pytest.approx(ours.ravel()[0] * 1000)
    row = pq.read_table(root / "meta/episodes/chunk-000/file-001.parquet").to_pylist()[0]
    assert np.asarray(row["stats/observation.images.scene_depth/max"]).ravel()[0] == 5000.0
    assert np.asarray(row["depth_stats/observation.images.scene_depth/max"]).ravel()[0] == 5.0
    reader = DatasetReader(root)
    assert reader.cameras == COLOUR and reader.depth_cameras == DEPTH
    np.testing.assert_array_equal(reader.episode(1, depth=True).depth["scene_depth"], truth)
    np.testing.assert_allclose(reader.stats["observation.images.scene_depth"]["mean"], ours)
    # appending keeps the copy
    w = DatasetWriter.open(root)
    record_synthetic_episode(w, 2, FRAMES)
    w.close()
    assert (root / "videos/observation.images.scene_depth/chunk-000/file-002.mp4").is_file()


def test_where_lerobots_tools_left_only_the_copy_it_reads_back_exactly_up_to_4095_mm(
        tmp_path: Path) -> None:
    root = make_with_copy(tmp_path / "d")
    # what LeRobot's merge / split / delete write: its features, none of our depth
    shutil.rmtree(root / "depth")
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["roboalign"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    reader = DatasetReader(root)
    assert reader.depth_cameras == DEPTH
    got = reader.episode(1, depth=True).depth["scene_depth"]
    truth = np.stack([far(synthetic_depth(t, 96, 128, seed=1)) for t in range(FRAMES)])
    np.testing.assert_array_equal(got[truth <= 4095], truth[truth <= 4095])   # bit-exact
    assert np.all(got[truth > 4095] == 4095), "past 4.095 m the copy holds its range's end"
    assert float(np.asarray(reader.stats["observation.images.scene_depth"]["max"]).max()) \
        == 5.0, "the reader gives depth stats in metres (LeRobot keeps them in mm)"


def test_the_copy_needs_depth_streams(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lerobot_depth.*depth_cameras"):
        DatasetWriter.create(tmp_path / "d", 15, STATE_NAMES, ACTION_NAMES, COLOUR, "x",
                             lerobot_depth=True)
