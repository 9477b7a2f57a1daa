"""The reader rejects each kind of dataset damage with a clear `DatasetFormatError`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from roboalign_ros.data import DatasetFormatError, DatasetReader
from roboalign_ros.data.synthetic import synthetic_image, write_synthetic_dataset
from roboalign_ros.data.video import VideoEncoder

DATA1 = "data/chunk-000/file-001.parquet"
VIDEO1 = "videos/observation.images.wrist/chunk-000/file-001.mp4"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("damage") / "ds"
    write_synthetic_dataset(root, episodes=2, frames=12)
    return root


def _edit_info(root: Path, **changes: object) -> None:
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def _rewrite_data(root: Path, fn: Callable[[pa.Table], pa.Table]) -> None:
    path = root / DATA1
    pq.write_table(fn(pq.read_table(path)), path)


def _short_video(root: Path) -> None:
    enc = VideoEncoder(root / VIDEO1, 30, 96, 128)
    for t in range(11):
        enc.encode(synthetic_image(t, 96, 128))
    enc.close()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "no_info": (lambda r: (r / "meta/info.json").unlink(), "missing meta/info.json"),
    "info_not_json": (lambda r: (r / "meta/info.json").write_text("{oops"), "unreadable JSON"),
    "old_version": (lambda r: _edit_info(r, codebase_version="v2.1"), "codebase_version"),
    "info_field_missing": (lambda r: _edit_info(r, fps=None), "'fps'"),
    "total_frames_wrong": (lambda r: _edit_info(r, total_frames=5), "total_frames"),
    "no_tasks": (lambda r: (r / "meta/tasks.parquet").unlink(), "tasks.parquet"),
    "no_stats": (lambda r: (r / "meta/stats.json").unlink(), "stats.json"),
    "no_episode_meta": (
        lambda r: (r / "meta/episodes/chunk-000/file-001.parquet").unlink(),
        "missing metadata of episode 1",
    ),
    "no_data": (lambda r: (r / DATA1).unlink(), "missing data file"),
    "no_video": (lambda r: (r / VIDEO1).unlink(), "missing video"),
    "video_frame_count": (_short_video, "frame count mismatch"),
    "video_truncated": (lambda r: _truncate(r / VIDEO1), "video"),
    "parquet_truncated": (lambda r: _truncate(r / DATA1), "unreadable parquet"),
    "rows_missing": (lambda r: _rewrite_data(r, lambda t: t.slice(0, 7)), "7 rows"),
    "column_missing": (
        lambda r: _rewrite_data(r, lambda t: t.drop_columns(["action"])),
        "bad schema: column 'action' missing",
    ),
    "column_dtype": (
        lambda r: _rewrite_data(
            r, lambda t: t.set_column(t.schema.get_field_index("observation.state"),
                                      "observation.state",
                                      t.column("observation.state").cast(pa.list_(pa.float64(), 7)))
        ),
        "bad schema: column 'observation.state'",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_reader_rejects_damage(pristine: Path, tmp_path: Path, kind: str) -> None:
    root = tmp_path / "ds"
    shutil.copytree(pristine, root)
    DatasetReader(root)  # the copy is fine
    damage, message = DAMAGE[kind]
    damage(root)
    with pytest.raises(DatasetFormatError, match=message) as err:
        DatasetReader(root)
    assert str(root) in str(err.value)  # names the damaged dataset / file


def test_damage_found_lazily_when_not_verified(pristine: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(pristine, root)
    _short_video(root)
    reader = DatasetReader(root, verify=False)
    reader.episode(0)
    with pytest.raises(DatasetFormatError, match="frame count mismatch"):
        reader.episode(1)
