"""The LeRobot v3.0 dataset layout: paths, feature schema, meta/info.json.

Layout (one data file and one video file per episode: file index = episode index within
its chunk; v3.0 allows files holding any number of episodes, so these load unchanged)::

    meta/info.json  meta/stats.json  meta/tasks.parquet
    meta/episodes/chunk-000/file-000.parquet     one row per episode (+ our metadata)
    data/chunk-000/file-000.parquet              one row per frame
    videos/observation.images.<cam>/chunk-000/file-000.mp4
    depth/<stream>/chunk-000/file-000.mkv        ours: lossless 16-bit depth (mm)

Depth is ours, not a LeRobot feature: LeRobot decodes every video feature as images (0.4) or
accepts only h264/hevc/AV1 with 12-bit codes (0.6), so a feature holding our lossless 16-bit
FFV1 depth made its loader and editing tools refuse or mangle the whole dataset. The depth
streams are described in our metadata block of info.json (``roboalign.depth_streams``), in
Matroska (which every FFmpeg can remux with FFV1; mp4 cannot), one file per episode. LeRobot's
tools ignore them; what they write has no depth. Datasets written before (depth as a video
feature with ``video.is_depth_map``) still read.

Opt-in (``lerobot_depth``): a copy of each depth stream as LeRobot 0.6's own depth feature,
``observation.images.<stream>`` (`make_lerobot_depth_features`): linear 12-bit codes of 1 mm,
0 to 4.095 m, x265 lossless. LeRobot decodes it to the same millimetres, and its editing
tools carry it; our reader prefers our lossless stream and falls back to the copy where
LeRobot's tools left only that (bit-exact up to 4.095 m; further depth is clipped there).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DatasetFormatError

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNKS_SIZE = 1000

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
DEPTH_PATH = "depth/{stream}/" + CHUNK_FILE + ".mkv"
DEPTH_STREAMS_KEY = "depth_streams"   # in our metadata block ("roboalign") of info.json

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
# our extra column: the caller's capture stamp, int64 nanoseconds. LeRobot's reader turns a
# float64 column into float32 tensors (a UNIX time then lands ~64 s off); int64 survives.
CAPTURE_TIME_KEY = "capture_time_ns"
LEGACY_CAPTURE_TIME_KEY = "capture_time"  # float64 seconds, datasets written before
SOURCES = ("teleop", "policy", "expert")

INDEX_FEATURES = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
    CAPTURE_TIME_KEY: "int64",
}


def capture_time_key(features: Mapping[str, Any]) -> str | None:
    """The capture-time column of a dataset (``capture_time_ns``, or the legacy float64 one).

    None in one that LeRobot recorded: the column is ours.
    """
    if CAPTURE_TIME_KEY in features:
        return CAPTURE_TIME_KEY
    return LEGACY_CAPTURE_TIME_KEY if LEGACY_CAPTURE_TIME_KEY in features else None


def capture_time_column(stamps, key: str = CAPTURE_TIME_KEY) -> np.ndarray:
    """Capture stamps (s) as the column ``key`` stores them (int64 ns, or legacy float64 s)."""
    seconds = np.asarray(stamps, np.float64)
    if key == LEGACY_CAPTURE_TIME_KEY:
        return seconds
    whole = np.floor(seconds)  # split so the nanoseconds keep float64's precision of the rest
    return whole.astype(np.int64) * 1_000_000_000 + np.round((seconds - whole) * 1e9).astype(
        np.int64)


def capture_seconds(column: np.ndarray, key: str = CAPTURE_TIME_KEY) -> np.ndarray:
    """The capture-time column ``key`` back as float64 seconds."""
    if key == LEGACY_CAPTURE_TIME_KEY:
        return np.asarray(column, np.float64)
    ns = np.asarray(column, np.int64)
    return (ns // 1_000_000_000).astype(np.float64) + (ns % 1_000_000_000) * 1e-9

_CAMERA_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
DEPTH_CODEC, DEPTH_PIX_FMT = "ffv1", "gray16le"  # lossless 16-bit (video.DEPTH_ENCODER)


def camera_key(camera: str) -> str:
    """Return the feature key of a camera name (`scene` -> `observation.images.scene`)."""
    return IMAGE_PREFIX + camera


def chunk_and_file(episode_index: int, chunks_size: int) -> tuple[int, int]:
    """Return (chunk_index, file_index) of the files holding episode `episode_index`."""
    return divmod(episode_index, chunks_size)


@dataclass(frozen=True)
class Layout:
    """Paths of one dataset root (one file per episode and per camera)."""

    root: Path
    chunks_size: int = DEFAULT_CHUNKS_SIZE

    def _fmt(self, template: str, episode_index: int, **kw: str) -> Path:
        c, f = chunk_and_file(episode_index, self.chunks_size)
        return self.root / template.format(chunk_index=c, file_index=f, **kw)

    @property
    def info(self) -> Path:
        """Path of meta/info.json."""
        return self.root / INFO_PATH

    @property
    def stats(self) -> Path:
        """Path of meta/stats.json."""
        return self.root / STATS_PATH

    @property
    def tasks(self) -> Path:
        """Path of meta/tasks.parquet."""
        return self.root / TASKS_PATH

    def data(self, episode_index: int) -> Path:
        """Path of the frame table of an episode."""
        return self._fmt(DATA_PATH, episode_index)

    def data_file(self, chunk_index: int, file_index: int) -> Path:
        """Path of a frame table by chunk and file (LeRobot's hold several episodes)."""
        return self.root / DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)

    def video_file(self, video_key: str, chunk_index: int, file_index: int) -> Path:
        """Path of a video by its feature key, chunk and file."""
        return self.root / VIDEO_PATH.format(video_key=video_key, chunk_index=chunk_index,
                                             file_index=file_index)

    def episode_meta(self, episode_index: int) -> Path:
        """Path of the episode-metadata table of an episode."""
        return self._fmt(EPISODES_PATH, episode_index)

    def video(self, camera: str, episode_index: int) -> Path:
        """Path of the mp4 of one camera of an episode."""
        return self._fmt(VIDEO_PATH, episode_index, video_key=camera_key(camera))

    def depth(self, stream: str, episode_index: int) -> Path:
        """Path of the depth video (ours, outside LeRobot's features) of an episode."""
        return self._fmt(DEPTH_PATH, episode_index, stream=stream)


# ---------------------------------------------------------------- features / info.json


def make_features(
    state_names: Sequence[str],
    action_names: Sequence[str],
    cameras: Mapping[str, tuple[int, int]],
    fps: int,
    video_codec: str,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Build the `features` block of info.json (LeRobot v3.0 conventions).

    Depth streams are not features: see `make_depth_streams`.

    `extra` adds per-frame columns beside state and action, e.g.
    ``{"observation.environment_state": {"dtype": "float32", "shape": [n], "names": [...]}}``
    (see `check_extra_feature`).
    """
    if not state_names:
        raise ValueError("state_names: need at least one state dimension")
    if not action_names:
        raise ValueError("action_names: need at least one action dimension")
    features: dict[str, dict[str, Any]] = {
        STATE_KEY: {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)},
        ACTION_KEY: {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)},
    }
    for cam, hw in cameras.items():
        h, w = _stream_size("cameras", cam, hw, features)
        info = {"video.height": h, "video.width": w, "video.codec": video_codec,
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                "video.channels": 3, "has_audio": False}
        features[camera_key(cam)] = {"dtype": "video", "shape": [h, w, 3],
                                     "names": ["height", "width", "channels"], "info": info}
    for key, ft in (extra or {}).items():
        features[key] = check_extra_feature(key, ft, reserved=features)
    for key, dtype in INDEX_FEATURES.items():
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _stream_size(what: str, name: str, hw, taken: Mapping[str, Any]) -> tuple[int, int]:
    if not _CAMERA_NAME.match(str(name)) or camera_key(name) in taken:
        raise ValueError(f"{what}: bad or repeated camera name {name!r} (letters, digits, "
                         "_ and - only)")
    h, w = (int(v) for v in hw)
    if h <= 0 or w <= 0 or h % 2 or w % 2:
        raise ValueError(f"{what}[{name!r}]: height/width must be positive and even, got {hw}")
    return h, w


def make_depth_streams(depth_cameras: Mapping[str, tuple[int, int]], fps: int,
                       features: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Describe depth streams for our metadata block (``roboalign.depth_streams``).

    `depth_cameras` maps a stream's name (e.g. `scene_depth`) to its (height, width): HxW
    uint16 millimetres as the camera gives them, stored losslessly (FFV1, 16-bit grey, in
    Matroska at `DEPTH_PATH`; see `video.DEPTH_ENCODER`). Names may not repeat a camera's.
    """
    streams: dict[str, dict[str, Any]] = {}
    for name, hw in depth_cameras.items():
        h, w = _stream_size("depth_cameras", name, hw, {**features, **{
            camera_key(n): None for n in streams}})
        streams[str(name)] = {"shape": [h, w, 1], "fps": fps, "codec": DEPTH_CODEC,
                              "pix_fmt": DEPTH_PIX_FMT, "unit": "mm", "path": DEPTH_PATH}
    return streams


# LeRobot 0.6's quantizer (lerobot/datasets/depth_utils.py quantize_depth) with these settings
# maps millimetres to codes 1:1 (code = rint(mm / 4095 * 4095)) and its dequantize_depth maps
# them back exactly: no depth is mangled where LeRobot decodes the copy
LEROBOT_DEPTH_COPY = {"depth_min": 0.0, "depth_max": 4.095, "shift": 3.5, "use_log": False}
LEROBOT_DEPTH_MAX_MM = 4095


def make_lerobot_depth_features(depth_cameras: Mapping[str, tuple[int, int]],
                                fps: int) -> dict[str, dict[str, Any]]:
    """LeRobot 0.6 depth features (``is_depth_map``) copying our depth streams (opt-in).

    Written as LeRobot's own writer describes a depth feature
    (lerobot/datasets/video_utils.py, the depth branch of the video info), with the linear
    1 mm quantizer `LEROBOT_DEPTH_COPY`; the frames are `lerobot_depth_codes`.
    """
    out = {}
    for name, (h, w) in depth_cameras.items():
        info = {"is_depth_map": True, "depth_unit": "mm", "video.height": int(h),
                "video.width": int(w), "video.codec": "hevc", "video.pix_fmt": "gray12le",
                "video.fps": fps, "video.channels": 1, "has_audio": False,
                "video.extra_options": {"x265-params": "lossless=1"},
                **{f"video.{k}": v for k, v in LEROBOT_DEPTH_COPY.items()}}
        out[camera_key(name)] = {"dtype": "video", "shape": [int(h), int(w), 1],
                                 "names": ["height", "width", "channels"], "info": info}
    return out


def lerobot_depth_codes(mm: np.ndarray) -> np.ndarray:
    """Depth (uint16 mm) -> the copy's 12-bit codes: the same values, clipped at 4095 mm."""
    return np.minimum(mm, LEROBOT_DEPTH_MAX_MM).astype(np.uint16)


def lerobot_depth_copies(info: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Our depth streams that also have a LeRobot depth feature copying them (opt-in)."""
    ours = depth_streams_of(info)
    return {c: hw for c, hw in legacy_depth_of(info["features"]).items() if c in ours}


def depth_stats_in_mm(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Our depth stats (metres) as LeRobot keeps a depth feature's: millimetres, (1, 1, 1)."""
    return {k: v if k == "count" else (np.asarray(v, np.float64) * 1000.0).reshape(1, 1, 1)
            .tolist() for k, v in stats.items()}


def check_extra_feature(
    key: str, ft: Mapping[str, Any], reserved: Mapping[str, Any] = ()
) -> dict[str, Any]:
    """Validate an extra per-frame column and return its info.json entry.

    A vector (shape ``[n]``) of float32 / float64 / int64 with ``n`` names (or None): a
    standard LeRobot feature (HF ``Value`` for n = 1, ``Sequence`` otherwise).
    """
    if not isinstance(key, str) or not key or key in reserved or key in INDEX_FEATURES \
            or key == LEGACY_CAPTURE_TIME_KEY:
        raise ValueError(f"extra features: bad or reserved key {key!r}")
    if key.startswith(IMAGE_PREFIX):
        raise ValueError(f"extra features[{key!r}]: images are cameras, not extra columns")
    dtype, shape, names = ft.get("dtype"), list(ft.get("shape") or []), ft.get("names")
    if dtype not in _ARROW:
        raise ValueError(f"extra features[{key!r}]: dtype {dtype!r} not one of {sorted(_ARROW)}")
    if len(shape) != 1 or int(shape[0]) < 1:
        raise ValueError(f"extra features[{key!r}]: shape must be [n >= 1], got {shape}")
    if names is not None and len(names) != int(shape[0]):
        raise ValueError(f"extra features[{key!r}]: {len(names)} names for shape {shape}")
    return {"dtype": dtype, "shape": [int(shape[0])],
            "names": None if names is None else [str(n) for n in names]}


def extra_features_of(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the per-frame columns other than state, action, cameras and the index columns."""
    return {
        key: dict(ft) for key, ft in features.items()
        if key not in (STATE_KEY, ACTION_KEY, *INDEX_FEATURES, LEGACY_CAPTURE_TIME_KEY)
        and ft.get("dtype") not in ("video", "image")
    }


def make_info(
    features: dict[str, dict[str, Any]],
    fps: int,
    robot_type: str,
    chunks_size: int,
    total_episodes: int = 0,
    total_frames: int = 0,
    total_tasks: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build meta/info.json."""
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": total_episodes,
        "total_frames": total_frames,
        "total_tasks": total_tasks,
        "chunks_size": chunks_size,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{total_episodes}"} if total_episodes else {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if any_video(features) else None,
        "features": features,
    }
    if extra:
        info["roboalign"] = dict(extra)
    return info


def any_video(features: Mapping[str, Mapping[str, Any]]) -> bool:
    """Return True if some feature is stored as video."""
    return any(ft.get("dtype") == "video" for ft in features.values())


def video_streams_of(features: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Return stream name -> (height, width) of every video feature (colour and depth)."""
    return {
        key[len(IMAGE_PREFIX):]: (int(ft["shape"][0]), int(ft["shape"][1]))
        for key, ft in features.items()
        if ft.get("dtype") == "video" and key.startswith(IMAGE_PREFIX)
    }


def is_depth(ft: Mapping[str, Any]) -> bool:
    """Whether a video feature is a depth map.

    Ours written before depth left the features (``video.is_depth_map``), or LeRobot 0.6's
    own (``is_depth_map``).
    """
    info = ft.get("info") or {}
    return bool(info.get("video.is_depth_map") or info.get("is_depth_map"))


# LeRobot 0.6's depth convention (lerobot/configs/video.py DEFAULT_DEPTH_*, DEPTH_QMAX; the math
# of lerobot/datasets/depth_utils.py dequantize_depth): 12-bit codes between depth_min and
# depth_max (m), log-spaced with a shift unless use_log is false
LEROBOT_DEPTH_DEFAULTS = {"depth_min": 0.01, "depth_max": 10.0, "shift": 3.5, "use_log": True}
LEROBOT_DEPTH_QMAX = 4095


def lerobot_depth_params(ft: Mapping[str, Any]) -> dict[str, Any] | None:
    """The quantizer of a LeRobot 0.6 depth feature (12-bit codes), None for our 16-bit mm."""
    info = ft.get("info") or {}
    if not is_depth(ft) or info.get("video.codec") == DEPTH_CODEC:
        return None
    return {k: info.get(f"video.{k}", v) if info.get(f"video.{k}") is not None else v
            for k, v in LEROBOT_DEPTH_DEFAULTS.items()}


def dequantize_lerobot_depth(codes: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """LeRobot 0.6's depth codes -> uint16 millimetres, as its reader returns them.

    A code of 0 reads as ``depth_min``, not as "no return": LeRobot's convention.
    """
    lo, hi, shift = float(params["depth_min"]), float(params["depth_max"]), float(params["shift"])
    if params["use_log"]:
        offset = np.log(lo + shift)
        scale = (np.log(hi + shift) - offset) / LEROBOT_DEPTH_QMAX
        metres = np.exp(codes.astype(np.float32) * np.float32(scale) + np.float32(offset)) \
            - np.float32(shift)
    else:
        scale = (hi - lo) / LEROBOT_DEPTH_QMAX
        metres = codes.astype(np.float32) * np.float32(scale) + np.float32(lo)
    mm = np.rint(np.clip(metres, lo, hi) * np.float32(1000.0))
    return np.clip(mm, 0, 65535).astype(np.uint16)


def cameras_of(features: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Return camera name -> (height, width) of the colour video features."""
    return {c: hw for c, hw in video_streams_of(features).items()
            if not is_depth(features[camera_key(c)])}


def legacy_depth_of(features: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Stream name -> (height, width) of depth stored as video features (older datasets)."""
    return {c: hw for c, hw in video_streams_of(features).items()
            if is_depth(features[camera_key(c)])}


def depth_streams_of(info: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Stream name -> (height, width) of our depth streams (``roboalign.depth_streams``)."""
    streams = ((info.get("roboalign") or {}).get(DEPTH_STREAMS_KEY) or {})
    out = {}
    for name, desc in streams.items():
        try:
            h, w, c = (int(v) for v in desc["shape"])
            ok = (c == 1 and desc.get("codec") == DEPTH_CODEC and desc.get("unit") == "mm"
                  and desc.get("path") == DEPTH_PATH and _CAMERA_NAME.match(name))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DatasetFormatError(f"info.json: roboalign.{DEPTH_STREAMS_KEY}[{name!r}] is not "
                                     f"one this reader knows ({desc!r})")
        out[name] = (h, w)
    return out


def dumps_json(obj: Any) -> bytes:
    """Serialize meta JSON the way LeRobot does (indent 4, UTF-8)."""
    return (json.dumps(obj, indent=4, ensure_ascii=False) + "\n").encode()


_REQUIRED_INFO = {
    "codebase_version": str,
    "fps": (int, float),
    "features": dict,
    "total_episodes": int,
    "total_frames": int,
    "chunks_size": int,
    "data_path": str,
}


def load_info(root: Path) -> dict[str, Any]:
    """Read and validate meta/info.json of a dataset root; raise `DatasetFormatError`."""
    path = Path(root) / INFO_PATH
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing meta/info.json (not a LeRobot dataset)")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetFormatError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object")
    for key, typ in _REQUIRED_INFO.items():
        if not isinstance(info.get(key), typ):
            names = "/".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise DatasetFormatError(f"{path}: field {key!r} missing or not {names}")
    if info["codebase_version"] != CODEBASE_VERSION:
        raise DatasetFormatError(
            f"{path}: codebase_version is {info['codebase_version']!r}, "
            f"this reader supports {CODEBASE_VERSION!r}"
        )
    if info["data_path"] != DATA_PATH or (
        any_video(info["features"]) and info.get("video_path") != VIDEO_PATH
    ):
        raise DatasetFormatError(f"{path}: data_path/video_path templates are not the v3.0 ones")
    feats = info["features"]
    for key in (STATE_KEY, ACTION_KEY, *INDEX_FEATURES):
        if key == CAPTURE_TIME_KEY:
            key = capture_time_key(feats)
            if key is None:
                continue   # ours only: a dataset LeRobot recorded has none
        ft = feats.get(key)
        if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
            raise DatasetFormatError(f"{path}: features[{key!r}] missing or lacks dtype/shape")
    for key, ft in feats.items():
        if ft.get("dtype") == "video" and (
            len(ft.get("shape", [])) != 3 or not key.startswith(IMAGE_PREFIX)
        ):
            raise DatasetFormatError(f"{path}: features[{key!r}] is a bad video feature")
    return info


# ---------------------------------------------------------------- arrow schemas

_ARROW = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64()}


def data_schema(features: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    """Arrow schema of a data/ parquet file (vectors are fixed-size lists, like HF `Sequence`)."""
    fields = []
    for key, ft in features.items():
        if ft["dtype"] in ("video", "image"):
            continue
        typ = _ARROW.get(ft["dtype"])
        if typ is None:
            raise DatasetFormatError(f"features[{key!r}]: unsupported dtype {ft['dtype']!r}")
        shape = list(ft["shape"])
        fields.append(pa.field(key, typ if shape == [1] else pa.list_(typ, int(shape[0]))))
    return pa.schema(fields)


def read_parquet(path: Path, skip_prefix: str | None = None) -> pa.Table:
    """Read one parquet file (faster than `pq.read_table` for many small files).

    Columns whose name starts with `skip_prefix` (e.g. per-episode `stats/`) are not read.
    """
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    cols = [n for n in names if not n.startswith(skip_prefix)] if skip_prefix else None
    return pf.read(columns=cols)


def tasks_table(tasks: Sequence[str]) -> pa.Table:
    """meta/tasks.parquet: task_index column indexed by the task string (pandas layout).

    LeRobot reads this file with pandas and looks tasks up by the index, so the pandas
    metadata marks `task` as the index; pyarrow readers see two plain columns.
    """
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "task": pa.array(tasks, pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


# ---------------------------------------------------------------- episode metadata rows


@dataclass(frozen=True)
class EpisodeInfo:
    """One saved episode, as listed in meta/episodes (plus our recording metadata)."""

    index: int
    length: int
    task: str
    task_index: int
    success: bool | None
    operator: str
    source: str
    start_time: float  # capture time of the first frame (s, caller's clock)
    dataset_from_index: int
    # where its frames are: (chunk, file) of its frame table, and per video key (chunk, file,
    # first frame in that file); ours hold one episode each, LeRobot's several
    data_file: tuple[int, int] | None = None
    videos: tuple[tuple[str, int, int, int], ...] = ()

    @property
    def dataset_to_index(self) -> int:
        """One past the global `index` of the episode's last frame."""
        return self.dataset_from_index + self.length


def episode_row(
    ep: EpisodeInfo,
    cameras: Sequence[str],
    fps: int,
    chunks_size: int,
    stats: Mapping[str, Mapping[str, Any]],
    depth_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Build the meta/episodes row of an episode (v3.0 columns, ours, per-episode stats).

    ``depth_keys``: the stats keys of our depth streams (``depth_stats/`` columns, in
    metres); one that is also a LeRobot feature (`make_lerobot_depth_features`) gets its
    ``stats/`` columns too, in millimetres as LeRobot keeps them.
    """
    c, f = chunk_and_file(ep.index, chunks_size)
    row: dict[str, Any] = {
        "episode_index": ep.index,
        "tasks": [ep.task],
        "length": ep.length,
        "data/chunk_index": c,
        "data/file_index": f,
        "dataset_from_index": ep.dataset_from_index,
        "dataset_to_index": ep.dataset_to_index,
    }
    for cam in cameras:
        key = camera_key(cam)
        row[f"videos/{key}/chunk_index"] = c
        row[f"videos/{key}/file_index"] = f
        row[f"videos/{key}/from_timestamp"] = 0.0
        row[f"videos/{key}/to_timestamp"] = ep.length / fps
    row["meta/episodes/chunk_index"] = c
    row["meta/episodes/file_index"] = f
    row["success"] = ep.success
    row["operator"] = ep.operator
    row["source"] = ep.source
    row["start_time"] = ep.start_time
    for feat, st in stats.items():
        # our depth is not a LeRobot feature: its stats beside LeRobot's, which its tools
        # check as image stats and refuse (shape (1,) is not (3,1,1) or (1,1,1))
        prefix = "depth_stats" if feat in depth_keys else "stats"
        for name, value in st.items():
            row[f"{prefix}/{feat}/{name}"] = value
        if feat in depth_keys and feat in {camera_key(c) for c in cameras}:
            for name, value in depth_stats_in_mm(st).items():
                row[f"stats/{feat}/{name}"] = value
    return row


def episode_row_table(row: Mapping[str, Any]) -> pa.Table:
    """One-row arrow table of an episode row (fixed column types for the known columns)."""
    types = {"success": pa.bool_(), "operator": pa.string(), "source": pa.string(),
             "tasks": pa.list_(pa.string()), "start_time": pa.float64()}
    cols = {}
    for key, value in row.items():
        if key in types:
            cols[key] = pa.array([value], types[key])
        elif key.endswith(("_index", "length")) and not key.startswith("stats/"):
            cols[key] = pa.array([value], pa.int64())
        else:
            cols[key] = pa.array([value])
    return pa.table(cols)


def parse_episode_row(
    row: Mapping[str, Any], chunks_size: int, cameras: Sequence[str], where: str,
    fps: int | None = None,
) -> tuple[EpisodeInfo, dict[str, dict[str, Any]]]:
    """Parse and check a meta/episodes row; return (EpisodeInfo, per-episode stats).

    Without ``fps`` the row must describe our layout (one episode per file, as the writer
    appends to). With it, any v3.0 row is read (episodes sharing files, as LeRobot writes
    and edits them), and the episode's files and first video frame are recorded.
    """
    try:
        idx = int(row["episode_index"])
        tasks = list(row["tasks"])
        ep = EpisodeInfo(
            index=idx,
            length=int(row["length"]),
            task=str(tasks[0]) if tasks else "",
            task_index=-1,
            success=None if row.get("success") is None else bool(row["success"]),
            operator=str(row.get("operator") or ""),
            source=str(row.get("source") or ""),
            start_time=float(row.get("start_time") or 0.0),
            dataset_from_index=int(row["dataset_from_index"]),
        )
        if int(row["dataset_to_index"]) != ep.dataset_to_index or ep.length <= 0:
            raise DatasetFormatError(f"{where}: inconsistent length/dataset_to_index")
        c, f = chunk_and_file(idx, chunks_size)
        data_file = (int(row["data/chunk_index"]), int(row["data/file_index"]))
        if fps is None and data_file != (c, f):
            raise DatasetFormatError(
                f"{where}: episode {idx} data file is not chunk-{c:03d}/file-{f:03d}: it "
                "shares files with other episodes (LeRobot wrote or edited this dataset); "
                "DatasetReader reads it, but recording can only append to our own layout"
            )
        videos = []
        for cam in cameras:
            key = camera_key(cam)
            start = float(row[f"videos/{key}/from_timestamp"])
            if fps is None and start != 0.0:
                raise DatasetFormatError(f"{where}: {key} video does not start at 0")
            videos.append((key, int(row[f"videos/{key}/chunk_index"]),
                           int(row[f"videos/{key}/file_index"]), round(start * (fps or 1))))
        ep = dataclasses.replace(ep, data_file=data_file, videos=tuple(videos))
    except KeyError as exc:
        raise DatasetFormatError(f"{where}: column {exc.args[0]!r} missing") from exc
    except (TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{where}: bad episode row ({exc})") from exc
    stats: dict[str, dict[str, Any]] = {}
    ours: dict[str, dict[str, Any]] = {}   # our depth's (metres) over a LeRobot copy's (mm)
    for key, value in row.items():
        if key.startswith(("stats/", "depth_stats/")):
            prefix, feat, name = key.split("/", 2)
            (ours if prefix == "depth_stats" else stats).setdefault(feat, {})[name] = value
    return ep, {**stats, **ours}
