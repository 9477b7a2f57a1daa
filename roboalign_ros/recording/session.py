"""The recorder's episode state machine around `DatasetWriter` (ROS-free).

:class:`RecordingSession` takes stamped inputs from any thread (``push_*``), samples them onto
the fps grid with :class:`~roboalign_ros.recording.sampler.FrameSampler` on :meth:`tick`, and
hands complete frames to one worker thread that owns the `DatasetWriter` (encoding, saving):
callers never block on I/O except in :meth:`start_episode` / :meth:`stop_episode`, which wait
for the worker's answer. States: IDLE -> RECORDING -> IDLE; any recording error (full disk,
I/O) -> ERROR, with the episode in progress dropped and every saved episode intact. A
:meth:`start_episode` in ERROR first tries to reopen the dataset (after the operator freed
space, say).

    session = RecordingSession(config, clock=time.time)
    session.push_image("scene", stamp, rgb); session.push_state(stamp, state)
    session.push_command(stamp, target); session.push_gripper(stamp, 1.0)
    session.start_episode("pick up the red cube", operator="ana", source="teleop")
    ... session.tick() at >= fps ...
    session.stop_episode(save=True, success=True)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import math
import queue
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from roboalign_ros.data import DatasetWriter, RecordingError
from roboalign_ros.data import lerobot_format as fmt
from roboalign_ros.recording import actions as act
from roboalign_ros.recording.sampler import HOLD, NEAREST, FrameSampler

# Default wait between a frame time and its sampling: DDS delivers large images up to ~0.1 s
# late on a busy machine, and a frame sampled before its image arrived would be dropped.
MIN_DELAY = 0.25
STOP_MARGIN = 0.05  # s of transport latency allowed for the inputs of the last frame
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
    action_source: str = "joint_trajectory"
    max_skew: float = 0.05
    delay: float | None = None  # default: max(MIN_DELAY, max_skew + 1/fps)
    gripper_fallback: str = "state"  # or "drop"
    servo_timeout: float = 0.2
    action_max_age: float = 0.5
    queue_seconds: float = 2.0
    codec: str = "libx264"
    crf: int | None = None
    gop: int = 10
    encoder_threads: int = 1

    def __post_init__(self) -> None:
        act.check_action_source(self.action_source)
        if not isinstance(self.fps, int) or self.fps <= 0:
            raise ValueError(f"fps: must be a positive integer, got {self.fps!r}")
        if not self.cameras:
            raise ValueError("cameras: at least one camera is needed")
        names = [*self.cameras, *self.depth_cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"cameras / depth_cameras: duplicate names in {names}")
        if self.gripper_fallback not in ("state", "drop"):
            raise ValueError(f"gripper_fallback: must be 'state' or 'drop', got "
                             f"{self.gripper_fallback!r}")
        if not self.queue_seconds > 0:
            raise ValueError(f"queue_seconds: must be > 0, got {self.queue_seconds}")

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


class RecordingSession:
    """Streams in, episodes out; see the module docstring."""

    def __init__(self, config: SessionConfig, clock: Callable[[], float] = time.time,
                 on_error: Callable[[str], None] | None = None):
        self.config = c = config
        self.clock = clock
        self.on_error = on_error
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
        self._lock = threading.Lock()  # state fields
        self._control = threading.Lock()  # one start/stop at a time
        self._state = RecorderState.IDLE
        self._message = "ready"
        self._task = ""
        self._instruction = ""
        self._episode_frames = 0
        self._episode_skew = 0.0
        self._dropped_total = 0
        self._drops: Counter[str] = Counter()
        self._shapes: dict[str, tuple[int, int]] | None = None
        self._episodes_saved = 0
        self.grid_start = self.episode_end = None  # of the latest episode (frame times, s)
        self._writer: DatasetWriter | None = None
        qsize = max(4, int(math.ceil(c.queue_seconds * c.fps)))
        self._queue: queue.Queue[tuple] = queue.Queue(maxsize=qsize)
        self._calls: queue.Queue[tuple] = queue.Queue()
        self._wake = threading.Event()
        self._closed = False
        if (Path(c.root) / fmt.INFO_PATH).exists():
            self._writer = self._open_writer()
            self._shapes = dict(self._writer.streams)
            self._episodes_saved = self._writer.num_episodes
        self._thread = threading.Thread(target=self._work, name="recorder-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ inputs (any thread)

    def push_image(self, camera: str, stamp: float, image: np.ndarray,
                   encoding: str = "rgb8") -> None:
        """Add a camera frame (a view is fine: it is read in the worker)."""
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
            self._queue.put_nowait(("frame", state, action, images, f.time))
        except queue.Full:
            return "queue_full"
        self._wake.set()
        return None

    # ------------------------------------------------------------------ control

    def start_episode(self, task: str = "", operator: str = "", source: str = "teleop",
                      timeout: float = 30.0, grid_start: float | None = None) -> Result:
        """Begin an episode (``task`` empty: the latest instruction).

        ``grid_start``: the first frame time (default: the first grid time from now, in phase
        with the first camera); a replayed recording passes the one the live recorder used
        (``episode_window``).
        """
        with self._control:
            index = self._episodes_saved
            if self._state == RecorderState.RECORDING:
                return Result(False, f"episode {index} is already being recorded: stop it first",
                              index)
            if self._state == RecorderState.ERROR:
                reopened = self._try_reopen(timeout)
                if reopened is not None:
                    return reopened
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
                index = self._call(lambda: self._begin(task, operator, source, shapes), timeout)
            except (RecordingError, ValueError, OSError) as exc:
                return Result(False, self._message if self._state == RecorderState.ERROR
                              else str(exc), index)
            with self._lock:
                self._shapes = shapes
                self._state = RecorderState.RECORDING
                self._message = f"recording episode {index}"
                self._task = task
                self._episode_frames, self._episode_skew = 0, 0.0
                self._drops = Counter()
            self.grid_start = self._grid_start() if grid_start is None else float(grid_start)
            self.sampler.start(self.grid_start)
            return Result(True, f"recording episode {index}: {task!r}", index)

    def stop_episode(self, save: bool = True, success: bool | None = None,
                     timeout: float = 60.0, end: float | None = None) -> Result:
        """Stop the episode; save it (with its outcome) or discard it.

        ``end``: the last frame time allowed (default: a little before now, see below); a
        replay passes the live recorder's (``episode_window``).
        """
        with self._control:
            index = self._episodes_saved
            if self._state != RecorderState.RECORDING:
                why = f" (recorder error: {self._message})" if self._state == RecorderState.ERROR \
                    else ""
                return Result(False, f"no episode is being recorded{why}", index)
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
            try:
                if save:
                    n = self._call(lambda: self._save(success), timeout)
                else:
                    self._call(self._discard, timeout)
                    n = 0
            except ValueError as exc:  # no frames
                self._set_idle()
                return Result(False, f"{exc}; dropped frames: {drops}", index)
            except (RecordingError, OSError) as exc:
                return Result(False, self._message if self._state == RecorderState.ERROR
                              else str(exc), index)
            self._set_idle()
            if not save:
                return Result(True, f"discarded episode {index}", index)
            with self._lock:
                self._episodes_saved = index + 1
            return Result(True, f"saved episode {index}: {n} frames, dropped {drops or 0}",
                          index, n, str(self.config.root))

    def status(self) -> Status:
        """Return a consistent snapshot for RecorderStatus / diagnostics."""
        with self._lock:
            return Status(self._state, self._message, str(self.config.root), self._task,
                          self._episodes_saved, self._episodes_saved, self._episode_frames,
                          self._dropped_total, self._episode_skew, dict(self._drops),
                          self._queue.qsize(), dict(self.sampler.received))

    @property
    def state(self) -> RecorderState:
        """IDLE, RECORDING or ERROR."""
        return self._state

    def close(self, timeout: float = 30.0) -> None:
        """Discard an unsaved episode and stop the worker."""
        if self._closed:
            return
        self._closed = True
        self.sampler.halt()
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((self._discard, done))
        self._calls.put((None, None))
        self._wake.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ internals

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

    def _fail(self, exc: BaseException) -> None:
        self.sampler.halt()
        message = f"recording stopped: {exc}"
        with self._lock:
            self._state, self._message = RecorderState.ERROR, message
        if self.on_error is not None:
            self.on_error(message)

    def _try_reopen(self, timeout: float) -> Result | None:
        try:
            self._call(self._reopen, timeout)
        except (RecordingError, ValueError, OSError) as exc:
            return Result(False, f"recorder in error state ({self._message}); reopening the "
                          f"dataset failed: {exc}", self._episodes_saved)
        with self._lock:
            self._state, self._message = RecorderState.IDLE, "ready (dataset reopened)"
        return None

    def _call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` on the worker thread (after the frames queued before) and wait."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, future))
        self._wake.set()
        return future.result(timeout)

    # --- worker thread only below

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

    def _write_frame(self, state, action, images, stamp) -> None:
        w = self._writer
        if w is None or not w.recording or self._state != RecorderState.RECORDING:
            return
        try:
            depth = self.config.depth_cameras
            rgb = {cam: to_depth_mm(img, enc) if cam in depth else to_rgb(img, enc)
                   for cam, (img, enc) in images.items()}
            w.add_frame(state, action, rgb, timestamp=stamp)
        except RecordingError as exc:
            self._fail(exc)
        except ValueError as exc:  # a frame that does not fit: counted, never fatal
            with self._lock:
                self._drops[f"bad_frame:{exc}"[:80]] += 1
                self._dropped_total += 1
                self._episode_frames -= 1

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
        if problems:
            raise ValueError(f"dataset_root: {c.root} holds a dataset with " + "; ".join(problems)
                             + ": use another dataset_root or matching parameters")
        return w

    def _reopen(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._open_writer() if (Path(self.config.root) / fmt.INFO_PATH).exists() \
            else None

    def _begin(self, task: str, operator: str, source: str,
               shapes: dict[str, tuple[int, int]]) -> int:
        c = self.config
        if self._writer is None:
            self._writer = DatasetWriter.create(
                c.root, c.fps, c.state_names, c.action_names,
                {cam: shapes[cam] for cam in c.cameras}, c.robot_type, codec=c.codec,
                gop=c.gop, crf=c.crf, encoder_threads=c.encoder_threads,
                depth_cameras={cam: shapes[cam] for cam in c.depth_cameras})
        self._writer.start_episode(task, operator=operator, source=source)
        return self._writer.num_episodes

    def _save(self, success: bool | None) -> int:
        w = self._writer
        if w is None or not w.recording:
            raise RecordingError("no episode in progress")
        if w.frames_in_episode == 0:
            w.discard_episode()
            raise ValueError("the episode has no frames: discarded")
        return w.save_episode(success=success).length

    def _discard(self) -> None:
        if self._writer is not None:
            self._writer.discard_episode()
