"""Read a LeRobot v3.0 dataset: one `DatasetWriter` wrote, or one LeRobot wrote or edited.

`DatasetReader(root)` validates the dataset when opened (meta files, schema, every episode's
files and frame counts) and raises `DatasetFormatError` naming the damaged file. Ours hold one
episode per file; LeRobot's writer and its merge / split / delete put several episodes in one
data file and one video (the episode rows say which file and from which timestamp), and store
the tasks as the pandas index of meta/tasks.parquet: both are read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import lerobot_format as fmt
from . import stats as st
from . import video
from .errors import DatasetFormatError
from .lerobot_format import EpisodeInfo

__all__ = ["DatasetReader", "Episode", "EpisodeInfo", "TrainingSample"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode loaded in memory."""

    info: EpisodeInfo
    states: np.ndarray  # (T, state_dim) float32
    actions: np.ndarray  # (T, action_dim) float32
    timestamps: np.ndarray  # (T,) float32, frame_index / fps (video time)
    capture_times: np.ndarray  # (T,) float64, the recorder's stamps (NaN: LeRobot recorded it)
    frames: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8 RGB ({} if not decoded)
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Extra feature -> (T, n) array of its dtype, (T,) for shape ``[1]`` (e.g. expert.phase)."""
    depth: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Depth stream -> (T, H, W) uint16 in mm, bit-exact ({} unless asked for)."""

    @property
    def task(self) -> str:
        """The episode's instruction."""
        return self.info.task

    def __len__(self) -> int:
        return self.info.length


@dataclasses.dataclass(frozen=True)
class TrainingSample:
    """One training example: observation at a frame and the action chunk from it on."""

    images: dict[str, np.ndarray]  # camera -> (H, W, 3) uint8
    state: np.ndarray  # (state_dim,) float32
    actions: np.ndarray  # (horizon, action_dim) float32, padded with the last action
    action_is_pad: np.ndarray  # (horizon,) bool, True where padded
    instruction: str
    episode_index: int
    frame_index: int


class DatasetReader:
    """LeRobotDataset-like access to a v3.0 dataset on disk."""

    def __init__(self, root: str | Path, verify: bool = True) -> None:
        """Open `root`; `verify` checks every episode's files, schema and frame counts."""
        self.root = Path(root)
        self.info: dict[str, Any] = fmt.load_info(self.root)
        self.fps = int(self.info["fps"])
        self.layout = fmt.Layout(self.root, int(self.info["chunks_size"]))
        feats = self.info["features"]
        self.features = feats
        self.cameras = fmt.cameras_of(feats)
        self._depth = fmt.depth_streams_of(self.info)   # ours, outside the features
        self.depth_cameras = {**fmt.legacy_depth_of(feats), **self._depth}
        self._video_keys = list(fmt.video_streams_of(feats))   # LeRobot's video features
        self.streams = {**fmt.video_streams_of(feats), **self._depth}
        # our depth streams copied as LeRobot depth features (``lerobot_depth``, opt-in)
        self.lerobot_depth = sorted(fmt.lerobot_depth_copies(self.info))
        # LeRobot's 12-bit depth features; a copy of one of ours is not read (ours is exact)
        self._lerobot_depth = {c: fmt.lerobot_depth_params(feats[fmt.camera_key(c)])
                               for c in fmt.legacy_depth_of(feats) if c not in self._depth}
        self.state_names = list(feats[fmt.STATE_KEY].get("names") or [])
        self.action_names = list(feats[fmt.ACTION_KEY].get("names") or [])
        self.extra_features = fmt.extra_features_of(feats)
        self.metadata: dict[str, Any] = dict(self.info.get("roboalign") or {})
        self.robot_type = self.info.get("robot_type")
        try:
            self._schema = fmt.data_schema(feats)
            self._capture_key = fmt.capture_time_key(feats)
        except DatasetFormatError as exc:
            raise DatasetFormatError(f"{self.layout.info}: {exc}") from exc
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self.stats = self._load_stats()
        self._file_frames: dict[Path, int] = {}   # files checked: rows / video frames
        self._data_frames: dict = {}               # (chunk, file) -> its episodes' frames
        for e in self.episodes:
            self._data_frames[e.data_file] = self._data_frames.get(e.data_file, 0) + e.length
        if verify:
            for ep in self.episodes:
                self._verify_files(ep)

    # ------------------------------------------------------------ meta

    def _load_tasks(self) -> list[str]:
        path = self.layout.tasks
        if not path.is_file():
            raise DatasetFormatError(f"{path}: missing meta/tasks.parquet")
        try:
            table = fmt.read_parquet(path)
            names = _task_column(table)
            tasks = {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(),
                                                   table.column(names).to_pylist())}
        except Exception as exc:
            raise DatasetFormatError(f"{path}: unreadable tasks table ({exc})") from exc
        if sorted(tasks) != list(range(len(tasks))):
            raise DatasetFormatError(f"{path}: task_index values are not 0..{len(tasks) - 1}")
        return [tasks[i] for i in range(len(tasks))]

    def _load_episodes(self) -> list[EpisodeInfo]:
        total = int(self.info["total_episodes"])
        rows = []
        for path in sorted(self.root.glob("meta/episodes/chunk-*/file-*.parquet")):
            try:
                rows += [(r, path) for r in fmt.read_parquet(path, skip_prefix="stats/")
                         .to_pylist()]
            except Exception as exc:
                raise DatasetFormatError(f"{path}: unreadable episode metadata ({exc})") from exc
        by_index: dict[int, tuple[dict, Path]] = {}
        for row, path in rows:
            index = row.get("episode_index")
            if not isinstance(index, int) or index in by_index:
                raise DatasetFormatError(f"{path}: episode_index {index!r} is missing, not an "
                                         "integer, or listed twice")
            by_index[index] = (row, path)
        episodes, frames = [], 0
        for i in range(total):
            if i not in by_index:
                raise DatasetFormatError(f"{self.root / 'meta/episodes'}: missing metadata of "
                                         f"episode {i}")
            row, path = by_index[i]
            ep, _ = fmt.parse_episode_row(row, self.layout.chunks_size, self._video_keys,
                                          str(path), fps=self.fps)
            if ep.dataset_from_index != frames:
                raise DatasetFormatError(f"{path}: episode {i}: dataset_from_index is "
                                         f"{ep.dataset_from_index}, expected {frames}")
            if ep.task not in self.tasks:
                raise DatasetFormatError(f"{path}: task {ep.task!r} not in meta/tasks.parquet")
            episodes.append(dataclasses.replace(ep, task_index=self.tasks.index(ep.task)))
            frames += ep.length
        if frames != int(self.info["total_frames"]):
            raise DatasetFormatError(
                f"{self.layout.info}: total_frames is {self.info['total_frames']} but episodes "
                f"hold {frames}"
            )
        if max(by_index, default=-1) >= total:
            log.warning(
                "%s: episode %d was committed after info.json was last written (interrupted "
                "save); it is ignored until DatasetWriter.open(%s) adopts it",
                self.root, total, self.root,
            )
        return episodes

    def _load_stats(self) -> dict[str, st.Stats]:
        path = self.layout.stats
        if not path.is_file():
            raise DatasetFormatError(f"{path}: missing meta/stats.json")
        try:
            stats = st.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError) as exc:
            raise DatasetFormatError(f"{path}: unreadable stats ({exc})") from exc
        streams = (self.info.get("roboalign") or {}).get(fmt.DEPTH_STREAMS_KEY) or {}
        for name, desc in streams.items():   # our depth's, kept with its description
            if "stats" in desc:
                stats.update(st.from_json({fmt.camera_key(name): desc["stats"]}))
        for name in self._lerobot_depth:   # LeRobot keeps depth stats in mm; ours are metres
            key = fmt.camera_key(name)
            if key in stats and (self.features[key].get("info") or {}).get(
                    "depth_unit", "mm") == "mm":
                stats[key] = {k: v if k == "count" else v / 1000.0
                              for k, v in stats[key].items()}
        return stats

    def _data_path(self, ep: EpisodeInfo) -> Path:
        return self.layout.data_file(*ep.data_file)

    def _video(self, cam: str, ep: EpisodeInfo) -> tuple[Path, int]:
        """The video file of ``cam`` holding ``ep``, and the episode's first frame in it."""
        if cam in self._depth:   # ours: one file per episode
            return self.layout.depth(cam, ep.index), 0
        key = fmt.camera_key(cam)
        _, chunk, file, start = next(v for v in ep.videos if v[0] == key)
        return self.layout.video_file(key, chunk, file), start

    def _verify_files(self, ep: EpisodeInfo) -> None:
        """Check the files holding ``ep``, each file read once (LeRobot's hold several)."""
        path = self._data_path(ep)
        if path not in self._file_frames:
            if not path.is_file():
                raise DatasetFormatError(f"{path}: missing data file of episode {ep.index}")
            try:
                meta = pq.read_metadata(path)
            except Exception as exc:
                raise DatasetFormatError(f"{path}: unreadable parquet ({exc})") from exc
            self._check_schema(meta.schema.to_arrow_schema(), path)
            self._file_frames[path] = meta.num_rows
        held = self._data_frames.get(ep.data_file, 0)
        if self._file_frames[path] < held:
            raise DatasetFormatError(
                f"{path}: {self._file_frames[path]} rows but its episodes have {held} frames")
        for cam in self.streams:
            vpath, start = self._video(cam, ep)
            if vpath not in self._file_frames:
                if not vpath.is_file():
                    raise DatasetFormatError(f"{vpath}: missing video of camera {cam!r}")
                try:
                    self._file_frames[vpath] = video.probe_frame_count(vpath)
                except Exception as exc:
                    raise DatasetFormatError(f"{vpath}: unreadable video ({exc})") from exc
            count = self._file_frames[vpath]
            if count < start + ep.length:
                raise DatasetFormatError(
                    f"{vpath}: frame count mismatch: video has {count} frames, episode "
                    f"{ep.index} needs frames {start}..{start + ep.length - 1}"
                )

    def _check_schema(self, schema: pa.Schema, path: Path) -> None:
        for field in self._schema:
            if field.name not in schema.names:
                raise DatasetFormatError(f"{path}: bad schema: column {field.name!r} missing")
            got = schema.field(field.name).type
            if got != field.type and not _same_list(got, field.type):
                raise DatasetFormatError(
                    f"{path}: bad schema: column {field.name!r} is {got}, expected {field.type}"
                )

    # ------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        """Total number of frames."""
        return int(self.info["total_frames"])

    def episode(self, index: int, decode_video: bool = True, depth: bool = False) -> Episode:
        """Load one episode (states, actions, stamps and, by default, decoded frames).

        ``depth``: also decode the depth streams (``Episode.depth``).
        """
        if not 0 <= index < len(self.episodes):
            raise IndexError(f"episode index {index} out of range 0..{len(self.episodes) - 1}")
        ep = self.episodes[index]
        self._verify_files(ep)
        path = self._data_path(ep)
        try:
            table = fmt.read_parquet(path)
        except Exception as exc:
            raise DatasetFormatError(f"{path}: unreadable parquet ({exc})") from exc
        self._check_schema(table.schema, path)
        if table.num_rows != ep.length:  # a file of several episodes: this one's rows
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table.column("episode_index"), ep.index))
            if table.num_rows != ep.length:
                raise DatasetFormatError(f"{path}: {table.num_rows} rows of episode {ep.index}"
                                         f", its length is {ep.length}")

        def col(name: str, dtype: Any) -> np.ndarray:
            c = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(c.type):
                return c.flatten().to_numpy().astype(dtype).reshape(len(c), c.type.list_size)
            if pa.types.is_list(c.type) or pa.types.is_large_list(c.type):
                width = self._schema.field(name).type.list_size
                lengths = c.value_lengths().to_numpy(zero_copy_only=False)
                if np.any(lengths != width):
                    raise DatasetFormatError(f"{path}: column {name!r}: rows of "
                                             f"{sorted(set(lengths.tolist()))} values, not "
                                             f"{width}")
                return c.flatten().to_numpy().astype(dtype).reshape(len(c), width)
            return c.to_numpy().astype(dtype)

        if not np.array_equal(col("frame_index", np.int64), np.arange(ep.length)) or np.any(
            col("episode_index", np.int64) != ep.index
        ):
            raise DatasetFormatError(f"{path}: frame_index/episode_index columns are inconsistent")
        frames: dict[str, np.ndarray] = {}
        depths: dict[str, np.ndarray] = {}
        wanted = [*(self.cameras if decode_video else ()), *(self.depth_cameras if depth else ())]
        for cam in wanted:
            is_depth = cam in self.depth_cameras
            out = depths if is_depth else frames
            vpath, start = self._video(cam, ep)
            try:
                out[cam] = video.decode_video(vpath, depth=is_depth, start=start,
                                              count=ep.length)
            except Exception as exc:
                raise DatasetFormatError(f"{vpath}: cannot decode video ({exc})") from exc
            quantizer = self._lerobot_depth.get(cam)
            if quantizer is not None:   # LeRobot's 12-bit codes: mm as its reader gives them
                out[cam] = fmt.dequantize_lerobot_depth(out[cam], quantizer)
            if len(out[cam]) != ep.length:
                raise DatasetFormatError(
                    f"{vpath}: frame count mismatch: decoded {len(out[cam])} frames, "
                    f"parquet has {ep.length}"
                )
        return Episode(
            info=ep,
            states=col(fmt.STATE_KEY, np.float32).reshape(ep.length, -1),
            actions=col(fmt.ACTION_KEY, np.float32).reshape(ep.length, -1),
            timestamps=col("timestamp", np.float32),
            capture_times=np.full(ep.length, np.nan) if self._capture_key is None else
            fmt.capture_seconds(col(self._capture_key, np.int64 if
                                    self._capture_key == fmt.CAPTURE_TIME_KEY
                                    else np.float64), self._capture_key),
            frames=frames,
            extra={key: col(key, ft["dtype"]) for key, ft in self.extra_features.items()},
            depth=depths,
        )

    def iter_frames(
        self,
        horizon: int = 1,
        episodes: Sequence[int] | None = None,
        shuffle: bool = False,
        seed: int | None = None,
        shuffle_buffer: int = 256,
    ) -> Iterator[TrainingSample]:
        """Yield training samples, streaming the videos (memory stays bounded).

        Each sample holds the images and state at a frame and the `horizon` actions from that
        frame on; past the episode's end the last action is repeated (`action_is_pad`).
        `shuffle` permutes the episode order and mixes samples through a buffer of
        `shuffle_buffer` samples (across episode boundaries).
        """
        if horizon < 1:
            raise ValueError(f"horizon: must be >= 1, got {horizon}")
        order = list(range(len(self.episodes)) if episodes is None else episodes)
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(order)
        buffer: list[TrainingSample] = []
        for i in order:
            for sample in self._episode_samples(i, horizon):
                if not shuffle:
                    yield sample
                    continue
                buffer.append(sample)
                if len(buffer) >= shuffle_buffer:
                    j = int(rng.integers(len(buffer)))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _episode_samples(self, i: int, horizon: int) -> Iterator[TrainingSample]:
        ep = self.episode(i, decode_video=False)
        n, steps = len(ep), np.arange(horizon)
        located = {cam: self._video(cam, ep.info) for cam in self.cameras}
        paths = {cam: p for cam, (p, _) in located.items()}
        streams = {cam: video.iter_video(p, start=start, count=n)
                   for cam, (p, start) in located.items()}
        for t in range(n):
            images = {}
            for cam, frames in streams.items():
                frame = next(frames, None)
                if frame is None:
                    raise DatasetFormatError(
                        f"{paths[cam]}: frame count mismatch: decoded {t} frames, parquet has {n}"
                    )
                images[cam] = frame
            idx = t + steps
            yield TrainingSample(
                images=images,
                state=ep.states[t],
                actions=ep.actions[np.minimum(idx, n - 1)],
                action_is_pad=idx >= n,
                instruction=ep.task,
                episode_index=i,
                frame_index=t,
            )


def _same_list(got: pa.DataType, expected: pa.DataType) -> bool:
    """Whether ``got`` is a variable-size list of ``expected``'s values (LeRobot's merge).

    Each row's length is checked when the column is read.
    """
    return (pa.types.is_fixed_size_list(expected)
            and (pa.types.is_list(got) or pa.types.is_large_list(got))
            and got.value_type == expected.value_type)


def _task_column(table: pa.Table) -> str:
    """The column of meta/tasks.parquet holding the task strings.

    Ours is ``task``; LeRobot writes the tasks as the pandas index of a frame with a
    ``task_index`` column, stored under the index's name (``__index_level_0__`` if unnamed).
    """
    if "task" in table.column_names:
        return "task"
    pandas = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    for name in pandas.get("index_columns", []):
        if isinstance(name, str) and name in table.column_names:
            return name
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)
               or pa.types.is_large_string(f.type)]
    if len(strings) == 1:
        return strings[0]
    raise ValueError(f"no task strings among columns {table.column_names}")
