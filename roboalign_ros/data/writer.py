"""Record episodes into a LeRobot v3.0 dataset, incrementally and crash-safely.

Design (one data file + one mp4 per camera per episode; file index = episode index):

- `add_frame` encodes each camera frame into `<mp4>.tmp` as it arrives; only the low-dim
  rows (state, action, stamps) and a small pixel sample for image stats stay in RAM.
- `save_episode` closes and fsyncs the mp4s, writes the data and episode-metadata parquet
  files to temp files, then renames videos, data and finally the episode-metadata file into
  place (that rename is the commit point), then atomically rewrites meta/tasks.parquet,
  meta/stats.json and meta/info.json (info last).
- A crash (even kill -9) at any point leaves every committed episode readable: temp files
  are ignored by readers and removed by `DatasetWriter.open`, which also adopts an episode
  committed just before a crash that kept info.json from being updated.
- A full disk raises `DiskFullError`; the partial episode is dropped and the writer stops.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import lerobot_format as fmt
from . import stats as st
from . import storage
from .errors import DatasetFormatError, RecordingError
from .lerobot_format import EpisodeInfo
from .video import DEFAULT_CODEC, VideoEncoder, codec_name, encoder_for

__all__ = ["DatasetWriter", "EpisodeInfo"]


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


@dataclasses.dataclass
class _Recording:
    """An episode in progress."""

    task: str
    operator: str
    source: str
    encoders: dict[str, VideoEncoder]
    image_stats: dict[str, st.ImageStatsAccumulator]
    # depth stream -> its LeRobot copy's encoder (opt-in, `fmt.make_lerobot_depth_features`)
    copies: dict[str, VideoEncoder] = dataclasses.field(default_factory=dict)
    states: list[np.ndarray] = dataclasses.field(default_factory=list)
    actions: list[np.ndarray] = dataclasses.field(default_factory=list)
    stamps: list[float] = dataclasses.field(default_factory=list)
    extras: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)


class DatasetWriter:
    """Writer of a LeRobot v3.0 dataset; use `create` or `open`, not the constructor."""

    def __init__(
        self,
        root: Path,
        info: dict[str, Any],
        *,
        gop: int,
        crf: int | None,
        encoder_threads: int,
        stream_workers: int = 1,
    ) -> None:
        if not (isinstance(stream_workers, int) and stream_workers >= 1):
            raise ValueError(f"stream_workers: must be an int >= 1, got {stream_workers!r}")
        self.root = Path(root)
        self.info = info
        self.fps = int(info["fps"])
        self.layout = fmt.Layout(self.root, int(info["chunks_size"]))
        feats = info["features"]
        self.state_names = list(feats[fmt.STATE_KEY]["names"] or [])
        self.action_names = list(feats[fmt.ACTION_KEY]["names"] or [])
        self._state_dim = int(feats[fmt.STATE_KEY]["shape"][0])
        self._action_dim = int(feats[fmt.ACTION_KEY]["shape"][0])
        self.cameras = fmt.cameras_of(feats)
        self._depth = fmt.depth_streams_of(info)   # ours, outside the features
        self.depth_cameras = {**fmt.legacy_depth_of(feats), **self._depth}
        self._video_keys = list(fmt.video_streams_of(feats))   # LeRobot's video features
        self.streams = {**fmt.video_streams_of(feats), **self._depth}  # one file each
        self._depth_stats_keys = [fmt.camera_key(c) for c in self._depth]
        self._copies = fmt.lerobot_depth_copies(info)   # depth LeRobot decodes too (opt-in)
        # the depth streams copied as LeRobot depth features (``create(lerobot_depth=True)``)
        self.lerobot_depth = sorted(self._copies)
        self.extra_features = fmt.extra_features_of(feats)
        codecs = {feats[fmt.camera_key(c)]["info"]["video.codec"] for c in self.cameras}
        self._encoder = encoder_for(codecs.pop()) if codecs else DEFAULT_CODEC
        self._schema = fmt.data_schema(feats)
        self._capture_key = fmt.capture_time_key(feats)  # legacy datasets keep their column
        self._gop, self._crf, self._threads = gop, crf, encoder_threads
        # streams encoded at once (PyAV releases the GIL while encoding); 1: in the caller
        self._stream_workers = stream_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._episodes: list[EpisodeInfo] = []
        self._episode_stats: list[dict[str, st.Stats]] = []
        self._tasks: list[str] = []
        self._rec: _Recording | None = None
        self._failed: BaseException | None = None

    # ------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        root: str | Path,
        fps: int,
        state_names: Sequence[str],
        action_names: Sequence[str],
        cameras: Mapping[str, tuple[int, int]],
        robot_type: str,
        *,
        codec: str = DEFAULT_CODEC,
        gop: int = 10,
        crf: int | None = None,
        encoder_threads: int = 1,
        chunks_size: int = fmt.DEFAULT_CHUNKS_SIZE,
        extra_features: Mapping[str, Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        depth_cameras: Mapping[str, tuple[int, int]] | None = None,
        lerobot_depth: bool = False,
        stream_workers: int = 1,
    ) -> DatasetWriter:
        """Create an empty dataset at `root` (which must not hold a dataset yet).

        `cameras` maps a camera name (`scene`, `wrist`) to its (height, width); its frames
        become the video feature `observation.images.<name>`. `extra_features` declares more
        per-frame vector columns (`fmt.check_extra_feature`), given to every `add_frame`;
        `metadata` is kept in info.json under ``"roboalign"`` (see `update_metadata`).
        `depth_cameras` maps depth stream names (`scene_depth`) to (height, width): HxW uint16
        frames (mm), stored losslessly outside LeRobot's features (`fmt.make_depth_streams`),
        given in `add_frame`'s `images` like the colour ones. `lerobot_depth`: also a copy of
        each as LeRobot 0.6's own depth feature (`fmt.make_lerobot_depth_features`), which
        LeRobot decodes (1 mm codes up to 4.095 m) and its editing tools carry.
        `stream_workers` > 1 encodes up to that many streams of a frame at once (threads).
        """
        root = Path(root)
        if (root / fmt.INFO_PATH).exists():
            raise FileExistsError(f"root: {root} already holds a dataset; use DatasetWriter.open")
        if not (isinstance(fps, int) and fps > 0):
            raise ValueError(f"fps: must be a positive int, got {fps!r}")
        if chunks_size <= 0:
            raise ValueError(f"chunks_size: must be positive, got {chunks_size}")
        feats = fmt.make_features(state_names, action_names, cameras, fps, codec_name(codec),
                                  extra_features)
        metadata = dict(metadata or {})
        if fmt.DEPTH_STREAMS_KEY in metadata:
            raise ValueError(f"metadata: {fmt.DEPTH_STREAMS_KEY!r} is the dataset's own key")
        if depth_cameras:
            metadata[fmt.DEPTH_STREAMS_KEY] = fmt.make_depth_streams(depth_cameras, fps, feats)
        if lerobot_depth:
            if not depth_cameras:
                raise ValueError("lerobot_depth: copies depth streams; give depth_cameras")
            feats.update(fmt.make_lerobot_depth_features(depth_cameras, fps))
        info = fmt.make_info(feats, fps, robot_type, chunks_size, extra=metadata)
        writer = cls(root, info, gop=gop, crf=crf, encoder_threads=encoder_threads,
                     stream_workers=stream_workers)
        writer._encoder = codec
        with storage.recording_errors("creating the dataset"):
            writer._write_meta()
        return writer

    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        gop: int = 10,
        crf: int | None = None,
        encoder_threads: int = 1,
        stream_workers: int = 1,
    ) -> DatasetWriter:
        """Open an existing dataset to append episodes (`stream_workers`: see `create`).

        Recovers from an interrupted session first: deletes temp files and orphan files,
        adopts an episode whose metadata file was committed but not yet counted in info.json.
        """
        root = Path(root)
        info = fmt.load_info(root)
        if fmt.capture_time_key(info["features"]) is None:
            raise DatasetFormatError(f"{root}: LeRobot recorded this dataset (no capture time "
                                     "column). DatasetReader reads it, but recording can only "
                                     "append to a dataset in our own layout")
        writer = cls(root, info, gop=gop, crf=crf, encoder_threads=encoder_threads,
                     stream_workers=stream_workers)
        with storage.recording_errors("recovering the dataset"):
            writer._recover()
        return writer

    def _recover(self) -> None:
        for sub in ("data", "videos", "depth", "meta"):
            for tmp in (self.root / sub).rglob("*" + storage.TMP_SUFFIX):
                storage.remove_quietly(tmp)
        total = int(self.info["total_episodes"])
        i = 0
        while True:
            path = self.layout.episode_meta(i)
            if not path.is_file():
                if i < total:
                    raise DatasetFormatError(f"{path}: missing metadata of episode {i}")
                break
            if i >= total and not self._episode_files_complete(i):
                break
            try:
                rows = fmt.read_parquet(path).to_pylist()
            except Exception as exc:
                raise DatasetFormatError(f"{path}: unreadable episode metadata ({exc})") from exc
            if len(rows) != 1 or rows[0].get("episode_index") != i:
                # never go on to the clean-up below: it would delete LeRobot's shared files
                raise DatasetFormatError(
                    f"{path}: {len(rows)} episode rows: this dataset shares files with other "
                    "episodes (LeRobot wrote or edited it). DatasetReader reads it, but "
                    "recording can only append to a dataset in our own layout")
            ep, ep_stats = fmt.parse_episode_row(
                rows[0], self.layout.chunks_size, self._video_keys, str(path)
            )
            self._append_episode(ep, st.from_json(ep_stats))
            i += 1
        keep = {p for j in range(i) for p in self._episode_files(j)}
        for pattern in ("data/chunk-*/file-*.parquet", "meta/episodes/chunk-*/file-*.parquet",
                        "videos/*/chunk-*/file-*.mp4", "depth/*/chunk-*/file-*.mkv"):
            for path in self.root.glob(pattern):
                if path not in keep:
                    storage.remove_quietly(path)
        if i != total or self.info["total_frames"] != self.num_frames:
            self._write_meta()

    def _episode_files(self, i: int) -> list[Path]:
        return [self.layout.data(i), self.layout.episode_meta(i)] + [
            self._stream_path(cam, i) for cam in self.streams
        ] + [self.layout.video(cam, i) for cam in self._copies]

    def _stream_path(self, cam: str, i: int) -> Path:
        return self.layout.depth(cam, i) if cam in self._depth else self.layout.video(cam, i)

    def _episode_files_complete(self, i: int) -> bool:
        return all(p.is_file() for p in self._episode_files(i))

    def _append_episode(self, ep: EpisodeInfo, ep_stats: dict[str, st.Stats]) -> None:
        if ep.task not in self._tasks:
            self._tasks.append(ep.task)
        ep = dataclasses.replace(ep, task_index=self._tasks.index(ep.task))
        self._episodes.append(ep)
        self._episode_stats.append(ep_stats)

    # ------------------------------------------------------------ state

    @property
    def episodes(self) -> list[EpisodeInfo]:
        """Saved episodes, in order."""
        return list(self._episodes)

    @property
    def num_episodes(self) -> int:
        """Number of saved episodes."""
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        """Number of frames in saved episodes."""
        return sum(ep.length for ep in self._episodes)

    @property
    def tasks(self) -> list[str]:
        """Task strings; position = task_index."""
        return list(self._tasks)

    @property
    def metadata(self) -> dict[str, Any]:
        """Our metadata block of info.json (``"roboalign"``; a copy)."""
        return dict(self.info.get("roboalign") or {})

    def update_metadata(self, values: Mapping[str, Any]) -> None:
        """Merge `values` (JSON-able) into the metadata block and rewrite info.json now."""
        self._check_usable()
        if fmt.DEPTH_STREAMS_KEY in values:
            raise ValueError(f"metadata: {fmt.DEPTH_STREAMS_KEY!r} is the dataset's own key")
        self.info["roboalign"] = {**self.metadata, **values}
        with storage.recording_errors("updating the dataset metadata"):
            self._write_meta()

    @property
    def recording(self) -> bool:
        """True between `start_episode` and `save_episode` / `discard_episode`."""
        return self._rec is not None

    @property
    def frames_in_episode(self) -> int:
        """Frames added to the episode in progress (0 when not recording)."""
        return len(self._rec.states) if self._rec else 0

    # ------------------------------------------------------------ recording API

    def start_episode(self, task: str, operator: str = "", source: str = "teleop") -> None:
        """Begin a new episode with its instruction, operator and source."""
        self._check_usable()
        if self._rec is not None:
            raise RecordingError("start_episode: an episode is already being recorded")
        if not isinstance(task, str) or not task.strip():
            raise ValueError("task: must be a non-empty string")
        if source not in fmt.SOURCES:
            raise ValueError(f"source: must be one of {fmt.SOURCES}, got {source!r}")
        index = self.num_episodes
        encoders: dict[str, VideoEncoder] = {}
        copies: dict[str, VideoEncoder] = {}
        try:
            with storage.recording_errors(f"starting episode {index}"):
                for cam, (h, w) in self.streams.items():
                    encoders[cam] = VideoEncoder(
                        storage.tmp_path(self._stream_path(cam, index)), self.fps, h, w,
                        encoder=self._encoder, gop=self._gop, crf=self._crf,
                        threads=self._threads, depth=cam in self.depth_cameras,
                        container="matroska" if cam in self._depth else "mp4",
                    )
                for cam, (h, w) in self._copies.items():
                    copies[cam] = VideoEncoder(
                        storage.tmp_path(self.layout.video(cam, index)), self.fps, h, w,
                        gop=self._gop, threads=self._threads, depth=True,
                        depth_encoder="libx265")
        except RecordingError as exc:
            for enc in [*encoders.values(), *copies.values()]:
                enc.abort()
            self._failed = exc
            raise
        self._rec = _Recording(
            task=task, operator=str(operator), source=source, encoders=encoders,
            image_stats={c: st.ImageStatsAccumulator(h, w, depth=c in self.depth_cameras)
                         for c, (h, w) in self.streams.items()},
            copies=copies,
        )

    def add_frame(
        self,
        state: Sequence[float] | np.ndarray,
        action: Sequence[float] | np.ndarray,
        images: Mapping[str, np.ndarray],
        timestamp: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one frame: state, action, one HxWx3 uint8 RGB image per camera.

        `timestamp` is the capture time in seconds (e.g. the ROS stamp; default: now) and
        must increase. It is kept in the `capture_time` column; the LeRobot `timestamp`
        column is frame_index / fps, matching the video frame times. `extra` holds a value
        for every extra feature the dataset declares (a scalar for shape ``[1]``).
        """
        self._check_usable()
        rec = self._rec
        if rec is None:
            raise RecordingError("add_frame: no episode in progress; call start_episode first")
        s = self._vector(state, self._state_dim, "state")
        a = self._vector(action, self._action_dim, "action")
        stamp = time.time() if timestamp is None else float(timestamp)
        if not math.isfinite(stamp) or (rec.stamps and stamp <= rec.stamps[-1]):
            raise ValueError(f"timestamp: {stamp} must be finite and increase within an episode")
        extras = self._extras(extra)
        if set(images) != set(self.streams):
            raise ValueError(
                f"images: expected cameras {sorted(self.streams)}, got {sorted(images)}"
            )
        for cam, (h, w) in self.streams.items():
            img = images[cam]
            dtype, shape = (np.uint16, (h, w)) if cam in self.depth_cameras else \
                (np.uint8, (h, w, 3))
            if not isinstance(img, np.ndarray) or img.dtype != dtype or img.shape != shape:
                raise ValueError(
                    f"images[{cam!r}]: expected {np.dtype(dtype)} array of shape {shape}, got "
                    f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
                )
        try:
            with storage.recording_errors(f"encoding frame {len(rec.states)}"):
                self._encode_streams(rec, images)
        except RecordingError as exc:
            self._abort(exc)
            raise
        rec.states.append(s)
        rec.actions.append(a)
        rec.stamps.append(stamp)
        for key, value in extras.items():
            rec.extras.setdefault(key, []).append(value)

    def save_episode(self, success: bool | None = None) -> EpisodeInfo:
        """Finish the episode, commit it atomically and update meta; return its info."""
        self._check_usable()
        rec = self._rec
        if rec is None:
            raise RecordingError("save_episode: no episode in progress")
        n = len(rec.states)
        if n == 0:
            raise ValueError("save_episode: the episode has no frames (discard it instead)")
        if success is not None and not isinstance(success, (bool, np.bool_)):
            raise ValueError(f"success: must be True, False or None, got {success!r}")
        index = self.num_episodes
        task_index = self._tasks.index(rec.task) if rec.task in self._tasks else len(self._tasks)
        ep = EpisodeInfo(
            index=index, length=n, task=rec.task, task_index=task_index,
            success=None if success is None else bool(success), operator=rec.operator,
            source=rec.source, start_time=rec.stamps[0], dataset_from_index=self.num_frames,
        )
        table, ep_stats = self._episode_table(ep, rec)
        row = fmt.episode_row(ep, self._video_keys, self.fps, self.layout.chunks_size,
                              st.to_json(ep_stats), self._depth_stats_keys)
        data_path, meta_path = self.layout.data(index), self.layout.episode_meta(index)
        tmps: list[Path] = []
        try:
            with storage.recording_errors(f"saving episode {index}"):
                for enc in [*rec.encoders.values(), *rec.copies.values()]:
                    enc.close()
                    tmps.append(enc.path)
                    if enc.frames != n:
                        raise RecordingError(f"{enc.path}: {enc.frames} frames encoded, {n} rows")
                tmps.append(storage.write_tmp(data_path, _parquet_bytes(table)))
                meta_bytes = _parquet_bytes(fmt.episode_row_table(row))
                tmps.append(storage.write_tmp(meta_path, meta_bytes))
                for cam, enc in rec.encoders.items():
                    storage.commit(enc.path, self._stream_path(cam, index))
                for cam, enc in rec.copies.items():
                    storage.commit(enc.path, self.layout.video(cam, index))
                storage.commit(tmps[-2], data_path)
                storage.commit(tmps[-1], meta_path)  # commit point
        except RecordingError as exc:
            for p in tmps:
                storage.remove_quietly(p)
            self._abort(exc)
            raise
        self._rec = None
        self._append_episode(ep, ep_stats)
        try:
            with storage.recording_errors(f"updating meta after episode {index}"):
                self._write_meta()
        except RecordingError as exc:
            self._failed = exc
            raise type(exc)(
                f"{exc}; episode {index} is on disk and DatasetWriter.open() will adopt it"
            ) from exc
        return self._episodes[-1]

    def discard_episode(self) -> None:
        """Drop the episode in progress; nothing of it stays on disk."""
        rec, self._rec = self._rec, None
        if rec is not None:
            for enc in [*rec.encoders.values(), *rec.copies.values()]:
                enc.abort()

    def close(self) -> None:
        """Discard an unsaved episode (call `save_episode` first to keep it)."""
        self.discard_episode()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _encode_streams(self, rec: _Recording, images: Mapping[str, np.ndarray]) -> None:
        def one(cam: str) -> None:
            rec.encoders[cam].encode(images[cam])
            rec.image_stats[cam].add(images[cam])
            if cam in rec.copies:
                rec.copies[cam].encode(fmt.lerobot_depth_codes(images[cam]))

        if self._stream_workers == 1 or len(rec.encoders) == 1:
            for cam in rec.encoders:
                one(cam)
            return
        if self._pool is None:  # threads inherit the creating thread's priority (nice)
            self._pool = concurrent.futures.ThreadPoolExecutor(
                min(self._stream_workers, len(rec.encoders)), thread_name_prefix="encode")
        futures = [self._pool.submit(one, cam) for cam in rec.encoders]
        for f in futures:  # all finish before the first error is raised
            f.exception()
        for f in futures:
            f.result()

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise RecordingError(
                f"writer stopped after an earlier error ({self._failed}); saved episodes are "
                "intact: fix the cause and reopen with DatasetWriter.open"
            ) from self._failed

    def _abort(self, exc: BaseException) -> None:
        self.discard_episode()
        self._failed = exc

    @staticmethod
    def _vector(value: Any, dim: int, name: str) -> np.ndarray:
        v = np.array(value, dtype=np.float32)  # a copy: kept per frame, never a view of a buffer
        if v.shape != (dim,):
            raise ValueError(f"{name}: expected shape ({dim},), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name}: contains NaN or inf")
        return v

    def _extras(self, extra: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        extra = extra or {}
        if set(extra) != set(self.extra_features):
            raise ValueError(f"extra: expected keys {sorted(self.extra_features)}, got "
                             f"{sorted(extra)}")
        out = {}
        for key, ft in self.extra_features.items():
            v = np.asarray(extra[key], dtype=ft["dtype"]).reshape(-1)
            if v.shape != (ft["shape"][0],):
                raise ValueError(f"extra[{key!r}]: expected shape ({ft['shape'][0]},), got "
                                 f"{np.shape(extra[key])}")
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                raise ValueError(f"extra[{key!r}]: contains NaN or inf")
            out[key] = v
        return out

    def _episode_table(
        self, ep: EpisodeInfo, rec: _Recording
    ) -> tuple[pa.Table, dict[str, st.Stats]]:
        n = ep.length
        states, actions = np.stack(rec.states), np.stack(rec.actions)
        frame_index = np.arange(n, dtype=np.int64)
        cols: dict[str, np.ndarray] = {
            fmt.STATE_KEY: states,
            fmt.ACTION_KEY: actions,
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(n, ep.index, np.int64),
            "index": frame_index + ep.dataset_from_index,
            "task_index": np.full(n, ep.task_index, np.int64),
            self._capture_key: fmt.capture_time_column(rec.stamps, self._capture_key),
        }
        for key, ft in self.extra_features.items():
            cols[key] = np.stack(rec.extras[key]).astype(ft["dtype"])
        arrays = [
            _fixed_list(cols[f.name])
            if pa.types.is_fixed_size_list(f.type)
            else pa.array(cols[f.name].reshape(n))  # LeRobot stores shape [1] as a scalar
            for f in self._schema
        ]
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        ep_stats = {k: st.feature_stats(v) for k, v in cols.items()}
        for cam, acc in rec.image_stats.items():
            ep_stats[fmt.camera_key(cam)] = acc.result()
        return table, ep_stats

    def _write_meta(self) -> None:
        """Atomically rewrite tasks, stats, then info (info.json last)."""
        stats = st.to_json(st.aggregate(self._episode_stats))
        extra = dict(self.info.get("roboalign") or {})
        if self._depth:   # our depth's stats live with its description, not in LeRobot's
            extra[fmt.DEPTH_STREAMS_KEY] = {
                name: {**desc, **({"stats": stats.pop(fmt.camera_key(name))}
                                  if fmt.camera_key(name) in stats else {})}
                for name, desc in extra[fmt.DEPTH_STREAMS_KEY].items()}
            for name in self._copies:   # LeRobot's copy: its stats where LeRobot keeps them
                desc = extra[fmt.DEPTH_STREAMS_KEY][name]
                if "stats" in desc:
                    stats[fmt.camera_key(name)] = fmt.depth_stats_in_mm(desc["stats"])
        info = fmt.make_info(
            self.info["features"], self.fps, self.info.get("robot_type") or "",
            self.layout.chunks_size, self.num_episodes, self.num_frames, len(self._tasks),
            extra=extra,
        )
        files = {
            self.layout.tasks: _parquet_bytes(fmt.tasks_table(self._tasks)),
            self.layout.stats: fmt.dumps_json(stats),
            self.layout.info: fmt.dumps_json(info),  # last: the others are derived from episodes
        }
        tmps = []
        try:
            for path, data in files.items():
                tmps.append(storage.write_tmp(path, data))
        except BaseException:
            for tmp in tmps:
                storage.remove_quietly(tmp)
            raise
        for tmp, path in zip(tmps, files):
            storage.commit(tmp, path)
        self.info = info

