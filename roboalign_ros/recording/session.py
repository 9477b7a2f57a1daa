"""The recorder's episode state machine (ROS-free).

:class:`RecordingSession` takes stamped inputs from any thread (``push_*``), samples them onto
the fps grid with :class:`~roboalign_ros.recording.sampler.FrameSampler` on :meth:`tick`, and
hands complete frames to a spool thread, which appends them raw to the episode's spool on disk
(``recording/spool.py``: a few ``write`` calls a frame). An encoder process
(``recording/encoder.py``, at a lower CPU priority: ``encoder_nice``) follows the spool,
encodes the videos with `DatasetWriter` (its streams in parallel), saves the episode once it is
stopped and deletes the spool. So the inputs never wait for encoding, and a frame is lost only
when the spool cannot take it (disk full, ``spool_max_gb``), never because the encoder is
behind.

States: IDLE -> RECORDING -> IDLE; an episode still being encoded after its stop is saved when
the encoder is done ("encoding" in the status message) and the next episode may start
meanwhile. Any recording error (full disk, I/O, the encoder process dying) -> ERROR, with every
saved episode intact and the unsaved ones in the spool. A :meth:`start_episode` in ERROR first
tries to reopen the dataset (after the operator freed space, say). Spools left by an earlier
run (a crash, or an exit before encoding finished) are encoded and saved at start, an episode
cut by a crash with its outcome unknown (``recover_partial=False``: deleted instead); the
status message names each.

    session = RecordingSession(config, clock=time.time)
    session.push_image("scene", stamp, rgb); session.push_state(stamp, state)
    session.push_command(stamp, target); session.push_gripper(stamp, 1.0)
    session.start_episode("pick up the red cube", operator="ana", source="teleop")
    ... session.tick() at >= fps ...
    session.stop_episode(save=True, success=True)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import enum
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from roboalign_ros.data import DatasetWriter, RecordingError, storage
from roboalign_ros.data import lerobot_format as fmt
from roboalign_ros.parameters import default
from roboalign_ros.recording import actions as act
from roboalign_ros.recording import spool as sp
from roboalign_ros.recording.sampler import HOLD, NEAREST, FrameSampler

# How long a discard waits for the encoder to delete the videos it had begun (it answers at
# once when it had none open; a stalled encoder must not hold the stop answer longer).
DISCARD_ACK_S = 5.0

# Default wait between a frame time and its sampling: DDS delivers large images up to ~0.1 s
# late on a busy machine, and a frame sampled before its image arrived would be dropped.
MIN_DELAY = 0.25
STOP_MARGIN = 0.05  # s of transport latency allowed for the inputs of the last frame
ENCODER_START_S = 60.0  # the encoder process imports PyAV and pyarrow, opens the dataset
STATE = "state"
COMMAND = "command"
GRIPPER = "gripper"


# StopEpisode.Request.OUTCOME_* -> the stored success flag
OUTCOMES: dict[int, tuple[str, bool | None]] = {0: ("unknown", None), 1: ("success", True),
                                                2: ("failure", False)}


def outcome_success(outcome: int) -> bool | None:
    """The success flag stored for a StopEpisode outcome; ValueError lists the valid ones."""
    if outcome not in OUTCOMES:
        valid = ", ".join(f"{k} ({name})" for k, (name, _) in OUTCOMES.items())
        raise ValueError(f"outcome: {outcome} is not one of {valid}; the episode is still "
                         "being recorded: stop it again with a valid outcome")
    return OUTCOMES[outcome][1]


def control_characters_problem(field: str, text: str) -> str | None:
    """A message naming ``field`` when ``text`` holds control characters, else None."""
    bad = sorted({c for c in text if unicodedata.category(c) == "Cc"})
    if bad:
        return f"{field}: {text!r} contains control characters {bad}"
    return None


class RecorderState(enum.IntEnum):
    """Matches RecorderStatus.STATE_*."""

    IDLE = 0
    RECORDING = 1
    ERROR = 2


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """Everything a session needs; the node builds it from its parameters."""

    root: Path
    fps: int
    arm_joints: Sequence[str]
    cameras: Sequence[str]
    robot_type: str = ""
    depth_cameras: Sequence[str] = ()  # depth streams (16UC1 mm / 32FC1 m), stored lossless
    lerobot_depth: bool = default("recorder_node", "lerobot_depth")
    action_source: str = default("recorder_node", "action_source")
    max_skew: float = default("recorder_node", "max_skew")
    delay: float | None = None  # default: max(MIN_DELAY, max_skew + 1/fps)
    gripper_fallback: str = default("recorder_node", "gripper_fallback")  # or "drop"
    servo_timeout: float = default("recorder_node", "servo_timeout")
    action_max_age: float = default("recorder_node", "action_max_age")
    queue_seconds: float = default("recorder_node", "queue_seconds")
    codec: str = default("recorder_node", "video.codec")
    crf: int | None = None
    gop: int = default("recorder_node", "video.gop")
    encoder_threads: int = default("recorder_node", "video.threads")
    stream_workers: int = default("recorder_node", "video.stream_workers")
    encoder_nice: int = default("recorder_node", "video.nice")
    spool_dir: Path | None = None  # default: <root>/spool
    spool_max_gb: float = default("recorder_node", "spool.max_gb")
    recover_partial: bool = default("recorder_node", "spool.recover_partial")

    def __post_init__(self) -> None:
        act.check_action_source(self.action_source)
        if not isinstance(self.fps, int) or self.fps <= 0:
            raise ValueError(f"fps: must be a positive integer, got {self.fps!r}")
        if not self.cameras:
            raise ValueError("cameras: at least one camera is needed")
        names = [*self.cameras, *self.depth_cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"cameras / depth_cameras: duplicate names in {names}")
        if self.lerobot_depth and not self.depth_cameras:
            raise ValueError("lerobot_depth: copies the depth cameras; depth_cameras is empty")
        if self.gripper_fallback not in ("state", "drop"):
            raise ValueError(f"gripper_fallback: must be 'state' or 'drop', got "
                             f"{self.gripper_fallback!r}")
        if not self.queue_seconds > 0:
            raise ValueError(f"queue_seconds: must be > 0, got {self.queue_seconds}")
        if not self.spool_max_gb > 0:
            raise ValueError(f"spool_max_gb: must be > 0, got {self.spool_max_gb}")
        if not (isinstance(self.stream_workers, int) and self.stream_workers >= 0):
            raise ValueError(f"stream_workers: must be an int >= 0, got {self.stream_workers!r}")
        if not (isinstance(self.encoder_nice, int) and 0 <= self.encoder_nice <= 19):
            raise ValueError(f"encoder_nice: must be an int in [0, 19], got "
                             f"{self.encoder_nice!r}")

    @property
    def spool_root(self) -> Path:
        """Where the raw frames of unsaved episodes go."""
        return Path(self.spool_dir) if self.spool_dir else Path(self.root) / "spool"

    @property
    def state_names(self) -> list[str]:
        """Stored state dimensions."""
        return act.state_names(self.arm_joints)

    @property
    def action_names(self) -> list[str]:
        """Stored action dimensions."""
        return act.action_names(self.action_source, self.arm_joints)


@dataclasses.dataclass(frozen=True)
class Result:
    """Answer of a start/stop request."""

    success: bool
    message: str
    episode_index: int = 0
    frames: int = 0
    path: str = ""


@dataclasses.dataclass(frozen=True)
class Status:
    """Snapshot of the session (the fields of RecorderStatus, plus drop reasons)."""

    state: RecorderState
    message: str
    dataset_root: str
    task: str
    episode_index: int
    episodes_saved: int
    frames: int
    frames_dropped: int
    max_skew: float
    drops: dict[str, int]
    queued: int
    received: dict[str, int]  # samples received per input stream since start
    encoding: str = ""  # the episodes being encoded ("" when none): "episode 3: 10 of 90"
    backlog: int = 0  # frames in the spool not encoded yet
    spool_bytes: int = 0  # raw bytes of unsaved episodes on disk


DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def to_depth_mm(image: np.ndarray, encoding: str) -> np.ndarray:
    """Return a contiguous HxW uint16 depth in mm from a 16UC1 / mono16 (mm) or 32FC1 (m) view.

    32FC1's NaN / inf / out-of-range values become 0, the no-return value of 16UC1.
    """
    if encoding in ("16UC1", "mono16"):
        return np.ascontiguousarray(image.reshape(image.shape[:2]), dtype=np.uint16)
    if encoding == "32FC1":
        mm = np.asarray(image, np.float32).reshape(image.shape[:2]) * 1000.0
        mm[~np.isfinite(mm) | (mm < 0) | (mm > 65535)] = 0
        return np.round(mm).astype(np.uint16)
    raise ValueError(f"encoding: {encoding!r} is not a depth encoding ({DEPTH_ENCODINGS})")


def to_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """Return a contiguous HxWx3 uint8 RGB array from an rgb8 / bgr8 / rgba8 / bgra8 image view."""
    if encoding == "rgb8":
        return np.ascontiguousarray(image)
    if encoding == "bgr8":
        return np.ascontiguousarray(image[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(image[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(image[:, :, 2::-1])
    raise ValueError(f"encoding: {encoding!r} is not a colour encoding the recorder stores")


# phases of an episode between its start and its save
_RECORDING, _STOPPED, _DISCARDED, _FAILED = "recording", "stopped", "discarded", "failed"


class _Job:
    """One episode from its start to its save: spooled by the spool thread, encoded behind."""

    def __init__(self, index: int, path: Path, task: str, operator: str, source: str,
                 record_bytes: int, recovered: str = ""):
        self.index, self.path = index, Path(path)
        self.task, self.operator, self.source = task, operator, source
        self.record_bytes = record_bytes
        self.phase = _RECORDING
        self.success: bool | None = None
        self.spooled = 0  # frames in the spool
        self.encoded = 0  # frames the encoder has taken
        self.recovered = recovered  # why a spool left by an earlier run is saved ("": live)
        self.answered = recovered != ""  # nobody waits for the save: it is logged
        self.done: concurrent.futures.Future = concurrent.futures.Future()  # -> frames saved


class RecordingSession:
    """Streams in, episodes out; see the module docstring."""

    def __init__(self, config: SessionConfig, clock: Callable[[], float] = time.time,
                 on_error: Callable[[str], None] | None = None,
                 on_info: Callable[[str], None] | None = None):
        self.config = c = config
        self.clock = clock
        self.on_error, self.on_info = on_error, on_info
        delay = max(MIN_DELAY, c.max_skew + 1.0 / c.fps) if c.delay is None else c.delay
        self.sampler = FrameSampler(c.fps, c.max_skew, delay)
        for cam in [*c.cameras, *c.depth_cameras]:
            self.sampler.add_stream(cam, NEAREST)
        self.sampler.add_stream(STATE, NEAREST)
        if c.action_source == "servo":
            self.sampler.add_stream(COMMAND, HOLD, max_age=c.servo_timeout,
                                    stale_value=np.zeros(6, np.float32))
        else:
            self.sampler.add_stream(COMMAND, HOLD)
        if c.action_source != "action_chunk":
            self.sampler.add_stream(GRIPPER, HOLD, optional=c.gripper_fallback == "state")
        self._lock = threading.Lock()  # state fields, jobs and their progress
        self._jobs_cv = threading.Condition(self._lock)
        self._control = threading.Lock()  # one start/stop at a time
        self._state = RecorderState.IDLE
        self._message = "ready"
        self._note = ""  # the latest recovery, shown in the idle message
        self._task = ""
        self._instruction = ""
        self._episode_frames = 0
        self._episode_skew = 0.0
        self._dropped_total = 0
        self._drops: Counter[str] = Counter()
        self._shapes: dict[str, tuple[int, int]] | None = None
        self._episodes_saved = 0
        self.grid_start = self.episode_end = None  # of the latest episode (frame times, s)
        self._jobs: deque[_Job] = deque()  # episodes not saved yet, in encoding order
        self._job: _Job | None = None  # the one being recorded
        self._spool: sp.EpisodeSpool | None = None  # its spool (spool thread)
        self._spool_bytes = 0
        self._proc: subprocess.Popen | None = None  # the encoder process
        self._discard_acks: dict[int, threading.Event] = {}  # episode -> its files are gone
        self._send_lock = threading.Lock()
        qsize = max(4, int(math.ceil(c.queue_seconds * c.fps)))
        self._queue: queue.Queue[tuple] = queue.Queue(maxsize=qsize)
        self._calls: queue.Queue[tuple] = queue.Queue()
        self._wake = threading.Event()
        self._closed = False
        self._check_dataset()
        self._recover_leftovers()
        self._thread = threading.Thread(target=self._work, name="recorder-spool", daemon=True)
        self._thread.start()
        # started from the spool thread, which lives as long as the session: Linux ties the
        # process's death signal to the thread that started it
        self._call(self._start_encoder, 60.0)

    # ------------------------------------------------------------------ inputs (any thread)

    def push_image(self, camera: str, stamp: float, image: np.ndarray,
                   encoding: str = "rgb8") -> None:
        """Add a camera frame (a view is fine: it is read in the spool thread)."""
        self.sampler.push(camera, stamp, (image, encoding))

    def push_state(self, stamp: float, state: np.ndarray) -> None:
        """Arm joint positions + gripper opening."""
        self.sampler.push(STATE, stamp, state)

    def push_command(self, stamp: float, command: Any) -> None:
        """Add a command (receive time): TrajectoryTarget, twist vector or ChunkTarget."""
        self.sampler.push(COMMAND, stamp, command)

    def push_gripper(self, stamp: float, opening: float) -> None:
        """Add a gripper opening command (receive time)."""
        self.sampler.push(GRIPPER, stamp, float(opening))

    def set_instruction(self, text: str) -> None:
        """Latest instruction: the task of an episode started without one."""
        self._instruction = text.strip()

    # ------------------------------------------------------------------ sampling

    def tick(self, flush: bool = False) -> int:
        """Sample the grid points that are due and queue their frames; return how many."""
        if self._state != RecorderState.RECORDING:
            return 0
        frames = self.sampler.poll(self.clock(), flush=flush)
        queued = 0
        for f in frames:
            reason = f.dropped or self._enqueue(f)
            with self._lock:
                if reason:
                    self._drops[reason] += 1
                    self._dropped_total += 1
                else:
                    queued += 1
                    self._episode_frames += 1
                    self._episode_skew = max(self._episode_skew, f.skew)
        return queued

    def _enqueue(self, f) -> str | None:
        c = self.config
        state = f.values[STATE]
        if c.action_source == "action_chunk":
            action = f.values[COMMAND]
            if len(action) != len(c.action_names):
                return "bad:action_dim"
            action = np.asarray(action, np.float32)
        else:
            action = act.compose_action(c.action_source, f.values[COMMAND],
                                        f.values.get(GRIPPER), state)
        images = {}
        for cam in [*c.cameras, *c.depth_cameras]:
            img, enc = f.values[cam]
            if self._shapes and tuple(img.shape[:2]) != self._shapes[cam]:
                return f"image_size:{cam}"
            images[cam] = (img, enc)
        try:
            self._queue.put_nowait(("frame", self._job, state, action, images, f.time))
        except queue.Full:
            return "queue_full"
        self._wake.set()
        return None

    # ------------------------------------------------------------------ control

    def start_episode(self, task: str = "", operator: str = "", source: str = "teleop",
                      timeout: float = 30.0, grid_start: float | None = None) -> Result:
        """Begin an episode (``task`` empty: the latest instruction).

        Earlier episodes may still be encoding: they are saved in order meanwhile.
        ``grid_start``: the first frame time (default: the first grid time from now, in phase
        with the first camera); a replayed recording passes the one the live recorder used
        (``episode_window``).
        """
        with self._control:
            index = self._next_index()
            if self._state == RecorderState.RECORDING:
                return Result(False, f"episode {index - 1} is already being recorded: stop it "
                              "first", index - 1)
            if self._state == RecorderState.ERROR:
                reopened = self._try_reopen(timeout)
                if reopened is not None:
                    return reopened
                index = self._next_index()
            if source not in fmt.SOURCES:
                return Result(False, f"source: {source!r} is not one of {list(fmt.SOURCES)}",
                              index)
            for field, text in (("task", task or ""), ("operator", operator or "")):
                problem = control_characters_problem(field, text)
                if problem:
                    return Result(False, problem, index)
            task = (task or "").strip() or self._instruction
            if not task:
                return Result(False, "task: empty and no instruction received yet", index)
            shapes = {}
            for name in [*self.config.cameras, *self.config.depth_cameras, STATE]:
                if self.sampler.latest(name) is None:
                    what = f"camera {name!r}" if name != STATE else "joint states"
                    return Result(False, f"no {what} received yet: check the topic", index)
            for cam in self.config.cameras:
                img, enc = self.sampler.latest(cam)[1]
                if enc not in ("rgb8", "bgr8", "rgba8", "bgra8") or img.ndim != 3:
                    return Result(False, f"camera {cam!r}: encoding {enc!r} is not a colour "
                                  "image (rgb8/bgr8/rgba8/bgra8)", index)
                shapes[cam] = (int(img.shape[0]), int(img.shape[1]))
            for cam in self.config.depth_cameras:
                img, enc = self.sampler.latest(cam)[1]
                if enc not in DEPTH_ENCODINGS:
                    return Result(False, f"depth camera {cam!r}: encoding {enc!r} is not a depth "
                                  f"image ({'/'.join(DEPTH_ENCODINGS)})", index)
                shapes[cam] = (int(img.shape[0]), int(img.shape[1]))
            if self._shapes is not None and shapes != self._shapes:
                return Result(False, f"cameras: image sizes {shapes} differ from the dataset's "
                              f"{self._shapes} (same camera settings, or a new dataset_root)",
                              index)
            try:
                job = self._call(lambda: self._begin(index, task, operator, source, shapes),
                                 timeout)
            except (RecordingError, ValueError, OSError) as exc:
                return Result(False, self._message if self._state == RecorderState.ERROR
                              else str(exc), index)
            with self._jobs_cv:
                self._shapes = shapes
                self._state = RecorderState.RECORDING
                self._message = f"recording episode {index}"
                self._note = ""
                self._task = task
                self._episode_frames, self._episode_skew = 0, 0.0
                self._drops = Counter()
                self._job = job
                self._jobs.append(job)
                self._jobs_cv.notify_all()
            self._send_job(job)
            self.grid_start = self._grid_start() if grid_start is None else float(grid_start)
            self.sampler.start(self.grid_start)
            return Result(True, f"recording episode {index}: {task!r}", index)

    def stop_episode(self, save: bool = True, success: bool | None = None,
                     timeout: float = 60.0, end: float | None = None,
                     wait: float | None = None) -> Result:
        """Stop the episode; save it (with its outcome) or discard it.

        ``wait``: seconds to wait for its encoding to finish (None: until it is saved). An
        episode still encoding after that is answered with success and saved when the encoder
        is done (the status message says "encoding"; ``episodes_saved`` counts it then).
        ``end``: the last frame time allowed (default: a little before now, see below); a
        replay passes the live recorder's (``episode_window``).
        """
        with self._control:
            job = self._job
            if self._state != RecorderState.RECORDING or job is None:
                why = f" (recorder error: {self._message})" if self._state == RecorderState.ERROR \
                    else ""
                return Result(False, f"no episode is being recorded{why}", self._next_index())
            index = job.index
            # The episode ends a little before the request: inputs stamped up to the last
            # frame time + max_skew have arrived by now (no waiting: callbacks may share
            # this thread).
            now = self.clock()
            if end is None:
                end = now - min(self.sampler.delay, self.config.max_skew + STOP_MARGIN)
            self.episode_end = float(end)
            self.sampler.stop(end)
            self.tick(flush=True)
            self.sampler.halt()
            drops = dict(self._drops)
            try:  # after every frame queued before it
                n = self._call(lambda: self._close_spool(job, save, success), timeout)
            except (RecordingError, OSError) as exc:
                return Result(False, self._message if self._state == RecorderState.ERROR
                              else str(exc), index)
            with self._jobs_cv:
                if save and n:
                    job.phase, job.success = _STOPPED, success
                self._job = None
                self._jobs_cv.notify_all()
            if job.phase == _STOPPED:
                self._send({"cmd": "stop", "index": index, "frames": n, "success": success})
            self._set_idle()
            if not save:
                return Result(True, f"discarded episode {index}", index)
            if n == 0:
                return Result(False, f"the episode has no frames: discarded; dropped frames: "
                              f"{drops}", index)
            try:
                saved = job.done.result(wait)
            except concurrent.futures.TimeoutError:
                with self._lock:
                    pending = not job.done.done()
                    job.answered = pending
                    encoded = job.encoded
                if pending:
                    return Result(True, f"episode {index}: {n} frames, dropped {drops or 0}; "
                                  f"encoding ({encoded} of {n} frames done): saved when it "
                                  "finishes", index, n, str(self.config.root))
                saved = job.done.result()
            except ValueError as exc:  # every frame refused by the writer
                return Result(False, f"{exc}; dropped frames: {drops}", index)
            except (RecordingError, OSError) as exc:
                return Result(False, self._message if self._state == RecorderState.ERROR
                              else str(exc), index)
            return Result(True, f"saved episode {index}: {saved} frames, dropped {drops or 0}",
                          index, saved, str(self.config.root))

    def wait_spooled(self, timeout: float = 30.0) -> None:
        """Wait until every frame queued so far is in the spool (a replay's flow control)."""
        self._call(lambda: None, timeout)

    def wait_backlog(self, frames: int, timeout: float | None = None) -> bool:
        """Wait until at most ``frames`` frames wait for the encoder; False on timeout.

        Queued and spooled frames count: a replay, faster than real time, keeps its spool small.
        """
        with self._jobs_cv:
            return self._jobs_cv.wait_for(
                lambda: self._state == RecorderState.ERROR or self._queue.qsize() + sum(
                    j.spooled - j.encoded for j in self._jobs
                    if j.phase in (_RECORDING, _STOPPED)) <= frames, timeout)

    def wait_encoded(self, timeout: float | None = None) -> bool:
        """Wait until every stopped episode is saved (or failed); False on timeout."""
        with self._jobs_cv:
            return self._jobs_cv.wait_for(
                lambda: not any(j.phase == _STOPPED for j in self._jobs), timeout)

    def status(self) -> Status:
        """Return a consistent snapshot for RecorderStatus / diagnostics."""
        with self._lock:
            encoding = ", ".join(f"episode {j.index} ({j.encoded} of {j.spooled} frames)"
                                 for j in self._jobs if j.phase == _STOPPED)
            message = self._message
            if self._note and self._state == RecorderState.IDLE:
                message += f"; {self._note}"
            if encoding:
                message += f"; encoding {encoding}, saved when done"
            backlog = sum(j.spooled - j.encoded for j in self._jobs
                          if j.phase in (_RECORDING, _STOPPED))
            return Status(self._state, message, str(self.config.root), self._task,
                          self._next_index_locked() - (self._job is not None),
                          self._episodes_saved, self._episode_frames, self._dropped_total,
                          self._episode_skew, dict(self._drops), self._queue.qsize(),
                          dict(self.sampler.received), encoding, backlog, self._spool_bytes)

    @property
    def state(self) -> RecorderState:
        """IDLE, RECORDING or ERROR."""
        return self._state

    def close(self, timeout: float = 30.0) -> None:
        """Discard the episode being recorded, finish saving the stopped ones, stop.

        An episode whose encoding does not finish within ``timeout`` stays in the spool and is
        saved at the next start.
        """
        if self._closed:
            return
        self._closed = True
        self.sampler.halt()
        job = self._job
        if job is not None:  # a clean exit drops the episode (a crash keeps it: recovered)
            with contextlib.suppress(Exception):
                self._call(lambda: self._close_spool(job, False, None), timeout)
            with self._jobs_cv:
                self._job = None
        if not self.wait_encoded(timeout):
            left = [j.index for j in self._jobs if j.phase == _STOPPED]
            self._info(f"episodes {left} were still being encoded: they stay in the spool and "
                       "are saved at the next start")
        self._stop_encoder()
        self._calls.put((None, None))
        self._wake.set()
        self._thread.join(timeout)

    @property
    def encoder_pid(self) -> int | None:
        """Process id of the encoder (None when it is not running)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # ------------------------------------------------------------------ internals

    def _next_index(self) -> int:
        with self._lock:
            return self._next_index_locked()

    def _next_index_locked(self) -> int:
        return self._episodes_saved + sum(j.phase in (_RECORDING, _STOPPED) for j in self._jobs)

    def _grid_start(self) -> float:
        """First grid time >= now, in phase with the first camera (fewer repeated frames)."""
        now = self.clock()
        latest = self.sampler.latest(self.config.cameras[0])
        if latest is None or latest[0] > now or now - latest[0] > 1.0:
            return now
        period = 1.0 / self.config.fps
        return latest[0] + math.ceil((now - latest[0]) / period) * period

    def _set_idle(self) -> None:
        with self._lock:
            if self._state == RecorderState.RECORDING:
                self._state, self._message = RecorderState.IDLE, "ready"

    def _info(self, message: str) -> None:
        if self.on_info is not None:
            self.on_info(message)

    def _fail(self, exc: BaseException) -> None:
        """Any recording error: ERROR; unsaved episodes stay in the spool for the reopen."""
        self.sampler.halt()
        message = f"recording stopped: {exc}"
        with self._jobs_cv:
            self._state, self._message = RecorderState.ERROR, message
            for job in self._jobs:
                if job.phase in (_RECORDING, _STOPPED):
                    job.phase = _FAILED
            self._job = None
            self._jobs_cv.notify_all()
        if self.on_error is not None:
            self.on_error(message)

    def _try_reopen(self, timeout: float) -> Result | None:
        try:
            self._call(self._drop_spool, timeout)
            self._stop_encoder()
            self._reopen()
            self._call(self._start_encoder, timeout)
        except (RecordingError, ValueError, OSError) as exc:
            return Result(False, f"recorder in error state ({self._message}); reopening the "
                          f"dataset failed: {exc}", self._next_index())
        with self._lock:
            self._state, self._message = RecorderState.IDLE, "ready (dataset reopened)"
        return None

    def _call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` on the spool thread (after the frames queued before) and wait."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, future))
        self._wake.set()
        return future.result(timeout)

    def _count_drop(self, reason: str, job: _Job) -> None:
        """A frame counted as recorded at its tick that did not make it after all."""
        with self._lock:
            self._drops[reason[:80]] += 1
            self._dropped_total += 1
            if job is self._job:
                self._episode_frames -= 1

    def _recover_leftovers(self) -> None:
        """Queue the spools an earlier run left for saving (or delete them; see the module)."""
        c = self.config
        for path in sp.leftover_spools(c.spool_root):
            if any(j.path == path for j in self._jobs):
                continue
            try:
                reader = sp.SpoolReader(path)
            except (ValueError, OSError, KeyError) as exc:
                shutil.rmtree(path, ignore_errors=True)
                self._event(f"removed the spool {path}: unreadable ({exc})", error=True)
                continue
            try:
                frames, meta, stop = reader.complete_frames(), reader.meta, reader.stop
                problem = self._spool_problem(reader)
            finally:
                reader.close()
            if problem:
                self._event(f"the spool {path} does not fit this recorder ({problem}): left in "
                            "place, not recovered", error=True)
                continue
            what = f"the episode spooled in {path}"
            if frames == 0 or (stop is None and not c.recover_partial):
                shutil.rmtree(path, ignore_errors=True)
                why = "no complete frame" if frames == 0 else \
                    f"{frames} frames, cut short by a crash of the recorder; recover_partial off"
                self._event(f"removed {what} ({why})")
                continue
            with self._lock:
                index = self._next_index_locked()
                why = "stopped, but the recorder exited before encoding it" if stop else \
                    "cut short by a crash of the recorder, outcome unknown"
                job = _Job(index, path, meta["task"], meta["operator"], meta["source"],
                           reader.layout.record_bytes, recovered=why)
                job.phase, job.spooled = _STOPPED, frames
                job.success = stop.get("success") if stop else None
                self._jobs.append(job)
                self._spool_bytes += frames * job.record_bytes
                if self._shapes is None:
                    self._shapes = {n: (h, w) for n, h, w, _ in reader.layout.streams}
                self._jobs_cv.notify_all()
            self._event(f"recovering episode {index} ({frames} frames, {why}) from {path}")

    def _spool_problem(self, reader: sp.SpoolReader) -> str:
        c = self.config
        names = {n: d for n, _, _, d in reader.layout.streams}
        want = {**{cam: False for cam in c.cameras}, **{cam: True for cam in c.depth_cameras}}
        if names != want:
            return f"streams {names}, recorder {want}"
        if (reader.layout.state_dim, reader.layout.action_dim) != \
                (len(c.state_names), len(c.action_names)):
            return f"state/action sizes {reader.layout.state_dim}/{reader.layout.action_dim}"
        shapes = {n: (h, w) for n, h, w, _ in reader.layout.streams}
        if self._shapes is not None and shapes != self._shapes:
            return f"image sizes {shapes}, dataset {self._shapes}"
        if int(reader.meta.get("fps", -1)) != c.fps:
            return f"fps {reader.meta.get('fps')}, recorder {c.fps}"
        return ""

    def _event(self, message: str, error: bool = False) -> None:
        """A recovery or removal: logged, and named in the status message until the next start."""
        with self._lock:
            self._note = message
        if error and self.on_error is not None:
            self.on_error(message)
        elif not error:
            self._info(message)

    # --- spool thread only below

    def _work(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            while True:  # frames first, then calls: a call sees every frame queued before it
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._write_frame(*item[1:])
            while True:
                try:
                    fn, future = self._calls.get_nowait()
                except queue.Empty:
                    break
                if fn is None:
                    self._drop_spool()
                    return
                while not self._queue.empty():
                    self._write_frame(*self._queue.get_nowait()[1:])
                try:
                    future.set_result(fn())
                except RecordingError as exc:
                    self._fail(exc)
                    future.set_exception(exc)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)

    def _write_frame(self, job: _Job, state, action, images, stamp) -> None:
        spool = self._spool
        if spool is None or job is not self._job or job.phase != _RECORDING:
            return
        if self._spool_bytes + job.record_bytes > self.config.spool_max_gb * 1e9:
            self._count_drop("spool_full", job)
            return
        try:
            depth = self.config.depth_cameras
            pixels = {cam: to_depth_mm(img, enc) if cam in depth else to_rgb(img, enc)
                      for cam, (img, enc) in images.items()}
            for name, v in (("state", state), ("action", action)):
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"{name}: contains NaN or inf")
            with storage.recording_errors(f"spooling frame {spool.frames} of episode "
                                          f"{job.index}"):
                n = spool.append(stamp, state, action, pixels)
        except RecordingError as exc:
            self._fail(exc)
            return
        except ValueError as exc:  # a frame that does not fit: counted, never fatal
            self._count_drop(f"bad_frame:{exc}", job)
            return
        with self._jobs_cv:
            job.spooled = n
            self._spool_bytes += job.record_bytes
            self._jobs_cv.notify_all()

    def _begin(self, index: int, task: str, operator: str, source: str,
               shapes: dict[str, tuple[int, int]]) -> _Job:
        c = self.config
        self._drop_spool()
        streams = [(cam, *shapes[cam], cam in c.depth_cameras)
                   for cam in [*c.cameras, *c.depth_cameras]]
        with storage.recording_errors(f"starting the spool of episode {index}"):
            self._spool = sp.EpisodeSpool.create(
                c.spool_root, index, task=task, operator=operator, source=source, fps=c.fps,
                state_dim=len(c.state_names), action_dim=len(c.action_names), streams=streams)
        return _Job(index, self._spool.path, task, operator, source,
                    self._spool.layout.record_bytes)

    def _close_spool(self, job: _Job, save: bool, success: bool | None) -> int:
        """Stop spooling ``job``: kept for saving (``save`` and frames) or deleted."""
        spool, self._spool = self._spool, None
        if spool is None:
            return 0
        n = spool.frames
        if save and n:
            with storage.recording_errors(f"stopping the spool of episode {job.index}"):
                spool.finish(success)
        else:
            with self._jobs_cv:
                job.phase = _DISCARDED
                self._spool_bytes -= n * job.record_bytes
                if job in self._jobs:
                    self._jobs.remove(job)
                if not job.done.done():
                    job.done.set_result(0)
                self._jobs_cv.notify_all()
            # told before its files go: the encoder must not take it for lost
            acked = self._discard_acks.setdefault(job.index, threading.Event())
            self._send({"cmd": "discard", "index": job.index})
            spool.remove()
            # "discarded" means no file of it is left: the encoder deletes the videos it began
            if self._proc is not None and self._proc.poll() is None:
                acked.wait(DISCARD_ACK_S)
            self._discard_acks.pop(job.index, None)
        return n

    def _drop_spool(self) -> None:
        """Close the spool file of an episode an error ended (its frames stay on disk)."""
        spool, self._spool = self._spool, None
        if spool is not None:
            with contextlib.suppress(OSError):
                spool.close()

    def _start_encoder(self) -> None:
        """Start the encoder process and hand it the episodes waiting (spool thread)."""
        c = self.config
        config = {"root": str(c.root), "fps": c.fps, "state_names": c.state_names,
                  "action_names": c.action_names, "cameras": list(c.cameras),
                  "depth_cameras": list(c.depth_cameras), "robot_type": c.robot_type,
                  "lerobot_depth": c.lerobot_depth,
                  "codec": c.codec, "gop": c.gop, "crf": c.crf,
                  "encoder_threads": c.encoder_threads,
                  "stream_workers": c.stream_workers or len(c.cameras) + len(c.depth_cameras),
                  "nice": c.encoder_nice, "parent": os.getpid()}
        env = dict(os.environ)  # this package's directory first: it imports the same code
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent,
                                                       env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "roboalign_ros.recording.encoder", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self._proc = proc
        self._encoder_ready = threading.Event()
        threading.Thread(target=self._read_events, args=(proc,), name="recorder-encoder-events",
                         daemon=True).start()
        if not self._encoder_ready.wait(ENCODER_START_S) or proc.poll() is not None:
            self._stop_encoder()
            raise RecordingError(f"the encoder process did not start (exit code {proc.poll()}; "
                                 "its error is in the log above)")
        with self._lock:
            jobs = [j for j in self._jobs if j.phase in (_RECORDING, _STOPPED)]
        for job in jobs:
            self._send_job(job)

    def _stop_encoder(self) -> None:
        """End the encoder process: it drops what it has not saved (the spool keeps it)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with self._send_lock, contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _send(self, cmd: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None:
            return
        with self._send_lock, contextlib.suppress(OSError, ValueError):  # it died: see events
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()

    def _send_job(self, job: _Job) -> None:
        self._send({"cmd": "job", "index": job.index, "path": str(job.path), "task": job.task,
                    "operator": job.operator, "source": job.source,
                    **({"stopped": True, "frames": job.spooled, "success": job.success}
                       if job.phase == _STOPPED else {})})

    def _read_events(self, proc: subprocess.Popen) -> None:
        """The encoder's events -> the jobs' progress and outcomes (a thread per process)."""
        for line in proc.stdout:
            try:
                event = json.loads(line)
                kind, index = event["event"], event.get("index")
            except (ValueError, KeyError, TypeError):
                continue  # not ours
            job = self._job_for(index)
            if kind == "ready":
                self._encoder_ready.set()
            elif kind == "progress" and job is not None:
                with self._jobs_cv:
                    job.encoded = int(event["encoded"])
                    self._jobs_cv.notify_all()
            elif kind == "discarded":
                acked = self._discard_acks.get(index)
                if acked is not None:
                    acked.set()
            elif kind == "dropped" and job is not None:
                self._count_drop(str(event["reason"]), job)
            elif kind == "saved" and job is not None:
                self._finish_job(job, int(event["frames"]), None, saved=int(event["episode"]),
                                 removed=True)
            elif kind == "failed":
                if event.get("fatal"):
                    error = RecordingError(str(event["error"]))
                    if proc is self._proc:
                        self._fail(error)
                    if job is not None:
                        self._finish_job(job, None, error)
                elif job is not None:
                    self._finish_job(job, None, ValueError(str(event["error"])), removed=True)
        code = proc.wait()
        self._encoder_ready.set()  # whoever waits for its start learns it ended
        error = RecordingError(f"the encoder process exited (code {code}); episodes not saved "
                               "stay in the spool and are saved at the next start")
        if proc is not self._proc:  # stopped on purpose: its episodes are handled already
            return
        if not self._closed:
            self._fail(error)
        with self._jobs_cv:  # nobody will answer for these any more
            pending = [j for j in self._jobs if not j.done.done()
                       and j.phase in (_STOPPED, _FAILED)]
        for job in pending:
            self._finish_job(job, None, error)

    def _job_for(self, index) -> _Job | None:
        with self._lock:
            return next((j for j in self._jobs if j.index == index), None)

    def _finish_job(self, job: _Job, frames: int | None, error: BaseException | None,
                    saved: int | None = None, removed: bool = False) -> None:
        """Hand the outcome to whoever waits; ``removed``: its spool was deleted."""
        with self._jobs_cv:
            if job.done.done():
                return
            if saved is not None:
                self._episodes_saved = saved + 1
            if removed:
                self._spool_bytes -= job.spooled * job.record_bytes
            if job in self._jobs:
                self._jobs.remove(job)
            answered = job.answered
            if error is not None:
                job.done.set_exception(error)
            else:
                job.done.set_result(frames or 0)
            self._jobs_cv.notify_all()
        if saved is None:
            return
        if job.recovered:
            self._event(f"recovered episode {saved}: {frames} frames ({job.recovered})")
        elif answered:
            self._info(f"saved episode {saved}: {frames} frames (encoded after its stop)")

    def _check_dataset(self) -> None:
        """An existing dataset must fit the config; its image sizes and episodes counted."""
        if (Path(self.config.root) / fmt.INFO_PATH).exists():
            w = self._open_writer()
            self._shapes = dict(w.streams)
            self._episodes_saved = w.num_episodes
            w.close()

    def _open_writer(self) -> DatasetWriter:
        c = self.config
        w = DatasetWriter.open(c.root, gop=c.gop, crf=c.crf, encoder_threads=c.encoder_threads)
        problems = []
        if w.fps != c.fps:
            problems.append(f"fps {w.fps} (recorder: {c.fps})")
        if w.state_names != c.state_names:
            problems.append(f"state names {w.state_names} (recorder: {c.state_names})")
        if w.action_names != c.action_names:
            problems.append(f"action names {w.action_names} (recorder: {c.action_names})")
        if set(w.cameras) != set(c.cameras):
            problems.append(f"cameras {sorted(w.cameras)} (recorder: {sorted(c.cameras)})")
        if set(w.depth_cameras) != set(c.depth_cameras):
            problems.append(f"depth cameras {sorted(w.depth_cameras)} (recorder: "
                            f"{sorted(c.depth_cameras)})")
        if bool(w.lerobot_depth) != c.lerobot_depth:
            problems.append(f"lerobot_depth {bool(w.lerobot_depth)} (recorder: "
                            f"{c.lerobot_depth})")
        if problems:
            w.close()
            raise ValueError(f"dataset_root: {c.root} holds a dataset with " + "; ".join(problems)
                             + ": use another dataset_root or matching parameters")
        return w

    def _reopen(self) -> None:
        """After an error: the dataset checked again, every unsaved episode from the spool."""
        with self._jobs_cv:
            for j in self._jobs:  # an error ended them; their spools are recovered below
                if not j.done.done():
                    j.done.set_exception(RecordingError(f"episode {j.index} was not saved: "
                                                        "the recorder stopped on an error"))
            self._jobs.clear()
            self._episodes_saved, self._spool_bytes = 0, 0
        self._check_dataset()
        self._recover_leftovers()
