"""DatasetReader reads datasets laid out as LeRobot writes and edits them (no LeRobot needed).

LeRobot v3.0 (``lerobot/datasets/utils.py`` and ``lerobot_dataset.py``; the format page
"LeRobotDataset v3.0") puts several episodes in one data file and one video per camera, each
episode's row in meta/episodes naming its files and its ``from_timestamp`` in the video, and
writes meta/tasks.parquet with pandas (``tasks.to_parquet``: the task strings are the frame's
index). ``relayout`` rewrites one of our datasets that way, files rolling over as LeRobot's do
when they reach their size limit. LeRobot keeps neither our depth (not a feature of its) nor
our metadata block (``DatasetInfo.from_dict`` drops unknown keys), so neither does relayout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from roboalign_ros.data import DatasetFormatError, DatasetReader, DatasetWriter
from roboalign_ros.data import lerobot_format as fmt
from roboalign_ros.data.synthetic import ACTION_NAMES, STATE_NAMES, record_synthetic_episode
from roboalign_ros.data.video import VideoEncoder, decode_video

COLOUR = {"scene": (48, 64)}
DEPTH = {"scene_depth": (48, 64)}
FPS = 15


def ours(root: Path, episodes: int = 3) -> Path:
    w = DatasetWriter.create(root, FPS, STATE_NAMES, ACTION_NAMES, COLOUR, "sim_arm",
                             depth_cameras=DEPTH)
    for e in range(episodes):
        record_synthetic_episode(w, e, 10 + 3 * e,
                                 task=("pick up the red cube", "open the drawer")[e % 2])
    w.close()
    return root


def relayout(src: Path, dst: Path, files: list[list[int]]) -> None:
    """Rewrite ``src`` as LeRobot lays a dataset out: episodes ``files[k]`` share data file
    k, video file k of each camera and episodes-metadata file k."""
    reader = DatasetReader(src)
    shutil.copytree(src / "meta", dst / "meta", ignore=shutil.ignore_patterns("episodes"))
    info = json.loads((dst / fmt.INFO_PATH).read_text())
    info.pop("roboalign", None)
    (dst / fmt.INFO_PATH).write_text(json.dumps(info, indent=4))
    import pandas as pd

    pd.DataFrame({"task_index": range(len(reader.tasks))}, index=reader.tasks).to_parquet(
        dst / fmt.TASKS_PATH)   # as LeRobot's write_tasks: the strings are the pandas index
    for k, group in enumerate(files):
        rows, tables, start = [], [], 0
        encoders = {}
        for i in group:
            ep = reader.episode(i)
            table = fmt.read_parquet(reader.layout.data(i))
            tables.append(table)
            meta = fmt.read_parquet(reader.layout.episode_meta(i)).to_pylist()[0]
            meta["data/chunk_index"], meta["data/file_index"] = 0, k
            meta["meta/episodes/chunk_index"], meta["meta/episodes/file_index"] = 0, k
            for cam, frames in ep.frames.items():
                key = fmt.camera_key(cam)
                if key not in encoders:
                    path = dst / fmt.VIDEO_PATH.format(video_key=key, chunk_index=0,
                                                       file_index=k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    encoders[key] = VideoEncoder(path, FPS, *frames.shape[1:3])
                for frame in frames:
                    encoders[key].encode(frame)
                meta[f"videos/{key}/chunk_index"], meta[f"videos/{key}/file_index"] = 0, k
                meta[f"videos/{key}/from_timestamp"] = start / FPS
                meta[f"videos/{key}/to_timestamp"] = (start + len(ep)) / FPS
            rows.append(meta)
            start += len(ep)
        for enc in encoders.values():
            enc.close()
        data = dst / fmt.DATA_PATH.format(chunk_index=0, file_index=k)
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), data)
        meta = dst / fmt.EPISODES_PATH.format(chunk_index=0, file_index=k)
        meta.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), meta)


def test_episodes_sharing_files_read_as_ours(tmp_path: Path) -> None:
    src = ours(tmp_path / "ours")
    dst = tmp_path / "lerobot"
    relayout(src, dst, [[0, 1], [2]])
    original, merged = DatasetReader(src), DatasetReader(dst)
    assert merged.tasks == original.tasks and len(merged) == 3
    for i in range(3):
        a, b = original.episode(i, depth=True), merged.episode(i, depth=True)
        assert b.task == a.task and len(b) == len(a)
        np.testing.assert_array_equal(b.states, a.states)
        np.testing.assert_array_equal(b.actions, a.actions)
        np.testing.assert_array_equal(b.capture_times, a.capture_times)
        assert a.depth["scene_depth"].shape == (len(a), 48, 64) and b.depth == {}
        # colour was encoded twice (lossy): its own segment, and close to the original
        assert np.abs(b.frames["scene"].astype(int) - a.frames["scene"]).mean() < 6
    # episode 1 starts 10 frames into file 0: its frames are that segment, not the file's start
    video = dst / "videos/observation.images.scene/chunk-000/file-000.mp4"
    np.testing.assert_array_equal(merged.episode(1).frames["scene"],
                                  decode_video(video)[10:10 + 13])
    samples = list(merged.iter_frames(horizon=2))
    assert len(samples) == merged.num_frames
    assert [s.instruction for s in samples[:1]] == [original.tasks[0]]
    np.testing.assert_array_equal(samples[10].images["scene"], merged.episode(1).frames[
        "scene"][0])


def test_tasks_stored_as_lerobot_stores_them_are_read(tmp_path: Path) -> None:
    src = ours(tmp_path / "ours", episodes=2)
    import pandas as pd

    tasks = pd.read_parquet(src / fmt.TASKS_PATH)   # LeRobot reads ours as its own
    assert list(tasks.index) == ["pick up the red cube", "open the drawer"]
    pd.DataFrame({"task_index": [0, 1]}, index=list(tasks.index)).to_parquet(
        src / fmt.TASKS_PATH)   # and writes them back unnamed: "__index_level_0__"
    assert "__index_level_0__" in pq.read_schema(src / fmt.TASKS_PATH).names
    assert DatasetReader(src).tasks == ["pick up the red cube", "open the drawer"]


def test_recording_refuses_to_append_to_a_dataset_laid_out_by_lerobot(tmp_path: Path) -> None:
    src = ours(tmp_path / "ours")
    dst = tmp_path / "lerobot"
    relayout(src, dst, [[0, 1], [2]])
    files = sorted(p for p in dst.rglob("*") if p.is_file())
    with pytest.raises(DatasetFormatError, match="shares files with other episodes"):
        DatasetWriter.open(dst)
    assert sorted(p for p in dst.rglob("*") if p.is_file()) == files, "a file was removed"
    assert len(DatasetReader(dst)) == 3


def test_a_video_shorter_than_its_episodes_is_named(tmp_path: Path) -> None:
    src = ours(tmp_path / "ours")
    dst = tmp_path / "lerobot"
    relayout(src, dst, [[0, 1, 2]])
    path = dst / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0)
    rows = pq.read_table(path).to_pylist()
    rows[2]["videos/observation.images.scene/from_timestamp"] += 1.0   # past the file's end
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetFormatError, match="episode 2 needs frames"):
        DatasetReader(dst)
    assert json.loads((dst / fmt.INFO_PATH).read_text())["total_episodes"] == 3


def test_vectors_stored_as_variable_lists_read_and_a_short_row_is_named(tmp_path: Path) -> None:
    """LeRobot's merge writes observation.state / action as list<float> (not fixed size)."""
    src = ours(tmp_path / "ours", episodes=1)
    path = src / fmt.DATA_PATH.format(chunk_index=0, file_index=0)
    table = pq.read_table(path)
    for name in (fmt.STATE_KEY, fmt.ACTION_KEY):
        i = table.column_names.index(name)
        values = table.column(name).to_pylist()
        table = table.set_column(i, name, pa.array(values, pa.list_(pa.float32())))
    pq.write_table(table, path)
    before = DatasetReader(tmp_path / "ours").episode(0, decode_video=False)
    assert before.states.shape == (10, len(STATE_NAMES))
    values = table.column(fmt.STATE_KEY).to_pylist()
    values[3] = values[3][:-1]
    i = table.column_names.index(fmt.STATE_KEY)
    pq.write_table(table.set_column(i, fmt.STATE_KEY, pa.array(values, pa.list_(pa.float32()))),
                   path)
    with pytest.raises(DatasetFormatError, match="observation.state.*rows of"):
        DatasetReader(src).episode(0, decode_video=False)
