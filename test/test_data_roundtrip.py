"""Round trip of the LeRobot v3.0 writer/reader: values, frames, meta consistency, append."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from roboalign_ros.data import (
    CODEBASE_VERSION,
    DatasetReader,
    DatasetWriter,
    RecordingError,
)
from roboalign_ros.data.synthetic import (
    ACTION_NAMES,
    CAMERAS,
    STATE_NAMES,
    record_synthetic_episode,
    synthetic_image,
    synthetic_step,
    write_synthetic_dataset,
)

# Codec tolerance for the default settings (libx264, yuv420p, CRF 23) on smooth content, in
# 8-bit levels; measured: mean 2.0, p99 8 at 96x128 (yuv420p alone, CRF 0: mean 1.4, p99 4).
MEAN_ABS_TOL = 3.0
P99_ABS_TOL = 12

FRAMES = 30
TASKS = ("pick up the red cube", "open the drawer")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "demo"
    write_synthetic_dataset(root, episodes=3, frames=FRAMES, tasks=TASKS)
    return root


def expected_frames(episode: int, cam_rank: int, n: int = FRAMES) -> np.ndarray:
    h, w = CAMERAS["scene"]
    return np.stack([synthetic_image(t, h, w, seed=episode + 3 * cam_rank) for t in range(n)])


def test_round_trip_values_and_frames(dataset: Path) -> None:
    reader = DatasetReader(dataset)
    assert len(reader) == 3 and reader.num_frames == 3 * FRAMES
    assert reader.state_names == STATE_NAMES and reader.action_names == ACTION_NAMES
    assert list(reader.cameras) == list(CAMERAS)
    for e in range(3):
        ep = reader.episode(e)
        steps = [synthetic_step(t, e, len(STATE_NAMES), len(ACTION_NAMES)) for t in range(FRAMES)]
        np.testing.assert_array_equal(ep.states, np.stack([s for s, _ in steps]))
        np.testing.assert_array_equal(ep.actions, np.stack([a for _, a in steps]))
        assert ep.task == TASKS[e % 2]
        assert ep.info.success is True and ep.info.source == "expert"
        assert ep.info.operator == "synthetic"
        assert np.all(np.diff(ep.timestamps) > 0) and np.all(np.diff(ep.capture_times) > 0)
        np.testing.assert_allclose(ep.timestamps, np.arange(FRAMES) / 30, atol=1e-6)
        for rank, cam in enumerate(CAMERAS):
            frames = ep.frames[cam]
            assert frames.shape == (FRAMES, *CAMERAS[cam], 3) and frames.dtype == np.uint8
            err = np.abs(frames.astype(np.int16) - expected_frames(e, rank))
            assert err.mean() < MEAN_ABS_TOL, (cam, err.mean())
            assert np.percentile(err, 99) < P99_ABS_TOL, (cam, np.percentile(err, 99))


def test_info_json_consistent_with_files(dataset: Path) -> None:
    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == CODEBASE_VERSION == "v3.0"
    assert info["fps"] == 30 and info["robot_type"] == "synthetic_arm"
    assert info["total_episodes"] == 3 and info["total_frames"] == 3 * FRAMES
    assert info["total_tasks"] == 2 and info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert feats["observation.state"] == {
        "dtype": "float32", "shape": [7], "names": STATE_NAMES,
    }
    for cam, (h, w) in CAMERAS.items():
        ft = feats[f"observation.images.{cam}"]
        assert ft["dtype"] == "video" and ft["shape"] == [h, w, 3]
        assert ft["info"]["video.codec"] == "h264" and ft["info"]["video.pix_fmt"] == "yuv420p"
        assert ft["info"]["video.fps"] == 30
    rows = 0
    for e in range(3):
        fmt_kw = {"chunk_index": 0, "file_index": e}
        table = pq.read_table(dataset / info["data_path"].format(**fmt_kw))
        # every non-video feature is a parquet column with the declared dtype and width
        for key, ft in feats.items():
            if ft["dtype"] == "video":
                path = dataset / info["video_path"].format(video_key=key, **fmt_kw)
                assert path.is_file()
                continue
            col = table.column(key)
            width = getattr(col.type, "list_size", 1)
            assert [width] == ft["shape"], key
        assert table.column("index").to_pylist() == list(range(rows, rows + FRAMES))
        rows += table.num_rows
        ep_path = dataset / f"meta/episodes/chunk-000/file-{e:03d}.parquet"
        ep_row = pq.read_table(ep_path).to_pylist()[0]
        assert ep_row["episode_index"] == e and ep_row["length"] == FRAMES
        assert ep_row["tasks"] == [TASKS[e % 2]]
        assert ep_row["dataset_from_index"] == e * FRAMES
        assert ep_row["videos/observation.images.scene/to_timestamp"] == pytest.approx(1.0)
        assert ep_row["success"] is True and ep_row["source"] == "expert"
    assert rows == info["total_frames"]
    tasks = pq.read_table(dataset / "meta/tasks.parquet").to_pylist()
    assert tasks == [{"task_index": i, "task": t} for i, t in enumerate(TASKS)]


def test_tasks_parquet_is_pandas_indexed_by_task(dataset: Path) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(dataset / "meta/tasks.parquet")
    assert list(df.index) == list(TASKS) and list(df["task_index"]) == [0, 1]


def test_loads_with_hf_datasets_like_lerobot(dataset: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    info = json.loads((dataset / "meta/info.json").read_text())
    feats = {}
    for key, ft in info["features"].items():
        if ft["dtype"] == "video":
            continue
        value = datasets.Value(ft["dtype"])
        seq = datasets.Sequence(value, length=ft["shape"][0])
        feats[key] = value if ft["shape"] == [1] else seq
    paths = sorted(str(p) for p in (dataset / "data").glob("*/*.parquet"))
    ds = datasets.Dataset.from_parquet(
        paths, features=datasets.Features(feats), cache_dir=str(tmp_path)
    )
    assert len(ds) == info["total_frames"] and ds[FRAMES]["episode_index"] == 1
    eps = datasets.Dataset.from_parquet(
        sorted(str(p) for p in (dataset / "meta/episodes").glob("*/*.parquet")),
        cache_dir=str(tmp_path),
    )
    assert eps["length"] == [FRAMES] * 3


def test_stats(dataset: Path) -> None:
    reader = DatasetReader(dataset)
    stats = json.loads((dataset / "meta/stats.json").read_text())
    states = np.concatenate([reader.episode(e, decode_video=False).states for e in range(3)])
    s = reader.stats["observation.state"]
    np.testing.assert_allclose(s["mean"], states.mean(0), atol=1e-6)
    np.testing.assert_allclose(s["std"], states.std(0), atol=1e-6)
    np.testing.assert_array_equal(s["min"], states.min(0))
    np.testing.assert_array_equal(s["max"], states.max(0))
    assert s["count"].tolist() == [3 * FRAMES]
    assert np.all(s["q01"] <= s["q99"]) and np.all(s["q01"] >= s["min"])
    for key in ("action", "timestamp", "index", "observation.images.scene"):
        assert set(stats[key]) >= {"mean", "std", "min", "max", "q01", "q99", "count"}
    img = reader.stats["observation.images.wrist"]
    assert img["mean"].shape == (3, 1, 1) and np.all((img["min"] >= 0) & (img["max"] <= 1))
    pix = np.concatenate([expected_frames(e, 1).reshape(-1, 3) for e in range(3)]) / 255
    np.testing.assert_allclose(img["mean"].ravel(), pix.mean(0), atol=0.03)


def test_training_iterator(dataset: Path) -> None:
    reader = DatasetReader(dataset)
    samples = list(reader.iter_frames(horizon=8, episodes=[1]))
    assert len(samples) == FRAMES
    ep = reader.episode(1)
    first, last = samples[0], samples[-1]
    np.testing.assert_array_equal(first.actions, ep.actions[:8])
    assert first.instruction == TASKS[1] and not first.action_is_pad.any()
    np.testing.assert_array_equal(last.actions, np.repeat(ep.actions[-1:], 8, axis=0))
    assert last.action_is_pad.tolist() == [False] + [True] * 7
    assert set(first.images) == set(CAMERAS) and first.images["scene"].shape == (96, 128, 3)
    shuffled = list(reader.iter_frames(horizon=2, shuffle=True, seed=0))
    assert len(shuffled) == 3 * FRAMES
    assert sorted((s.episode_index, s.frame_index) for s in shuffled) == [
        (e, t) for e in range(3) for t in range(FRAMES)
    ]


def test_discard_leaves_nothing_and_append(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = write_synthetic_dataset(root, episodes=1, frames=10)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    info_before = (root / "meta/info.json").read_bytes()
    record_synthetic_episode(writer, 1, 12, save=False)
    assert writer.recording and writer.frames_in_episode == 12
    writer.discard_episode()
    assert not writer.recording
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert (root / "meta/info.json").read_bytes() == info_before

    appender = DatasetWriter.open(root)
    assert appender.num_episodes == 1 and appender.tasks == ["pick up the red cube"]
    info = record_synthetic_episode(appender, 1, 12, task="stack the blocks", success=False)
    assert info.index == 1 and info.task_index == 1 and info.dataset_from_index == 10
    with DatasetWriter.open(root) as again:
        record_synthetic_episode(again, 2, 5, task="pick up the red cube", success=None)
    reader = DatasetReader(root)
    assert [e.length for e in reader.episodes] == [10, 12, 5]
    assert [e.success for e in reader.episodes] == [True, False, None]
    assert [e.task_index for e in reader.episodes] == [0, 1, 0]
    assert reader.tasks == ["pick up the red cube", "stack the blocks"]
    assert reader.episode(2).frames["wrist"].shape[0] == 5
    assert reader.stats["action"]["count"].tolist() == [27]


def test_input_validation(tmp_path: Path) -> None:
    writer = DatasetWriter.create(tmp_path / "v", 15, ["a", "b"], ["a"], {"c": (32, 48)}, "arm")
    img = np.zeros((32, 48, 3), np.uint8)
    with pytest.raises(RecordingError, match="start_episode"):
        writer.add_frame([0, 0], [0], {"c": img})
    with pytest.raises(ValueError, match="source"):
        writer.start_episode("t", source="dream")
    writer.start_episode("t", operator="op", source="policy")
    with pytest.raises(ValueError, match="state"):
        writer.add_frame([0, 0, 0], [0], {"c": img})
    with pytest.raises(ValueError, match="action"):
        writer.add_frame([0, 0], [np.nan], {"c": img})
    with pytest.raises(ValueError, match="images"):
        writer.add_frame([0, 0], [0], {"c": img[:, :, 0]})
    with pytest.raises(ValueError, match="images"):
        writer.add_frame([0, 0], [0], {"d": img})
    writer.add_frame([0, 0], [0], {"c": img}, timestamp=5.0)
    with pytest.raises(ValueError, match="timestamp"):
        writer.add_frame([0, 0], [0], {"c": img}, timestamp=5.0)
    assert writer.save_episode(True).length == 1
    with pytest.raises(ValueError, match="no frames"):
        writer.start_episode("t")
        writer.save_episode()
    with pytest.raises(FileExistsError):
        DatasetWriter.create(tmp_path / "v", 15, ["a"], ["a"], {}, "arm")
    with pytest.raises(ValueError, match="even"):
        DatasetWriter.create(tmp_path / "w", 15, ["a"], ["a"], {"c": (31, 48)}, "arm")


def test_unix_capture_stamps_survive_a_float32_reader(tmp_path: Path) -> None:
    """LeRobot's reader turns float columns into float32 tensors: a UNIX time in float64 came
    back ~64 s off. Stored as int64 nanoseconds it survives any such cast."""
    from roboalign_ros.data import lerobot_format as fmt

    root = tmp_path / "unix"
    h, w = CAMERAS["scene"]
    writer = DatasetWriter.create(root, 10, STATE_NAMES, ACTION_NAMES, {"scene": (h, w)}, "x")
    stamps = 1_764_590_400.123456789 + np.arange(5) * 0.1   # a 2025 ROS time
    writer.start_episode("pick up the red cube")
    for i, t in enumerate(stamps):
        s, a = synthetic_step(i, 0, len(STATE_NAMES), len(ACTION_NAMES))
        writer.add_frame(s, a, {"scene": synthetic_image(i, h, w)}, timestamp=float(t))
    writer.save_episode()
    writer.close()
    ep = DatasetReader(root).episode(0, decode_video=False)
    np.testing.assert_allclose(ep.capture_times, stamps, rtol=0, atol=1e-6)
    table = pq.read_table(next((root / "data").rglob("*.parquet")))
    column = table.column(fmt.CAPTURE_TIME_KEY).to_numpy()
    assert column.dtype == np.int64 and "capture_time" not in table.column_names
    # LeRobot keeps int64 columns int64; a float column became float32, as here:
    assert abs(np.float32(stamps[0]) - stamps[0]) > 1.0


def test_a_dataset_with_the_legacy_float_capture_time_is_read_and_appended(tmp_path: Path) -> None:
    from roboalign_ros.data import lerobot_format as fmt

    root = tmp_path / "legacy"
    write_synthetic_dataset(root, episodes=1, frames=5, tasks=TASKS)
    # rewrite it as an older version did: float64 seconds in `capture_time`
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["capture_time"] = {"dtype": "float64", "shape": [1], "names": None}
    del info["features"][fmt.CAPTURE_TIME_KEY]
    info_path.write_text(json.dumps(info))
    path = next((root / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    seconds = fmt.capture_seconds(table.column(fmt.CAPTURE_TIME_KEY).to_numpy())
    import pyarrow as pa

    i = table.column_names.index(fmt.CAPTURE_TIME_KEY)
    pq.write_table(table.remove_column(i).append_column("capture_time", pa.array(seconds)), path)
    reader = DatasetReader(root)
    np.testing.assert_allclose(reader.episode(0, decode_video=False).capture_times, seconds)
    writer = DatasetWriter.open(root)
    record_synthetic_episode(writer, 1, 5, TASKS[0])
    writer.close()
    again = DatasetReader(root)
    assert len(again) == 2 and np.all(np.diff(again.episode(1, False).capture_times) > 0)
