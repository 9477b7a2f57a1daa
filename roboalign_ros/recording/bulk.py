r"""``roboalign record bulk``: scripted-expert demos straight from the sim, headless, no ROS graph.

The same episodes ``roboalign record sim`` records through sim_node + recorder_node, many
times faster than real time:

* physics and the scripted expert step in sim time, one expert command per control period;
* the recorder's sampling: every control period the joint state, a snapshot of the sim state
  (the camera stream) and the expert's commands are pushed with their sim-time stamps into
  the recorder's :class:`~.sampler.FrameSampler`, which picks frame i at ``t0 + i / fps``
  (nearest joint state and image, latest command at or before it, as recorder_node does);
* frames are rendered only for episodes the expert solved (the task's success check after
  the settle time), from the snapshots, the way sim_node's ``SceneCamera`` renders (copy
  qpos / qvel / time, ``mj_forward``, the env's renderer): same image for the same state,
  same intrinsics; the image size defaults to sim_node's (config/sim.yaml);
* the recorder's dataset writer (fps, codec, GOP from config/recorder.yaml), plus what a sim
  teacher needs per frame (``observation.environment_state``, ``expert.phase``; see
  :mod:`roboalign_ros.data.scene_state`) and ``meta/split.json`` (training seeds per task,
  failed seeds, the held-out evaluation seed range; see :mod:`roboalign_ros.data.split`).

Capture times are sim seconds since the episode's reset (frame i at exactly ``i / fps``).

    roboalign record bulk --tasks pick_red_cube,push_green_block_left --episodes 200 \
        --out runs/datasets/sim_bulk --image-size 224
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from roboalign_ros.data import scene_state as ss
from roboalign_ros.data import split as sp
from roboalign_ros.recording import actions as act
from roboalign_ros.recording.sampler import HOLD, NEAREST, FrameSampler, SampledFrame

CAMERA = "scene"  # config/recorder.yaml cameras
DEPTH_CAMERA = "scene_depth"  # its aligned depth (with --depth)
WRIST_CAMERA = "wrist"  # the camera on the hand (with --wrist), sim_node's wrist_camera
WRIST_DEPTH_CAMERA = "wrist_depth"  # its aligned depth (with --wrist --depth)
STATE, COMMAND, GRIPPER, PHASE = "state", "command", "gripper", "phase"
ACTION_SOURCE = "joint_trajectory"
OPERATOR = "scripted_expert"


def node_defaults() -> dict[str, Any]:
    """Camera size as sim_node's, fps / skew / video as recorder_node's (specs + config files)."""
    from roboalign_ros.parameters import node_parameters

    sim = node_parameters("sim_node", "sim.yaml")
    rec = node_parameters("recorder_node", "recorder.yaml")
    crf = rec["video.crf"]
    return {"width": sim["camera.width"], "height": sim["camera.height"], "fps": rec["fps"],
            "max_skew": rec["max_skew"], "codec": rec["video.codec"], "gop": rec["video.gop"],
            "crf": None if crf < 0 else crf, "encoder_threads": rec["video.threads"]}


@dataclasses.dataclass(frozen=True)
class BulkConfig:
    """What to record; ``None`` fields take sim_node's / recorder_node's defaults."""

    root: Path
    tasks: Sequence[str]
    episodes: int  # saved (successful) episodes per task
    split_seed: int = 0
    robot: str = "sim_arm"
    width: int | None = None
    height: int | None = None
    fps: int | None = None
    max_skew: float | None = None
    settle: float = 0.5  # s recorded after the expert's last waypoint (as `record sim`)
    max_attempts: int | None = None  # per task (default 2 * episodes + 10)
    workers: int = 1
    depth: bool = False  # also record the scene camera's aligned depth (lossless, mm)
    wrist: bool = False  # also record the wrist camera (same size, same instants)
    lerobot_depth: bool = False  # with depth: also as LeRobot's own depth features (to 4.095 m)
    codec: str | None = None
    gop: int | None = None
    crf: int | None = None
    encoder_threads: int | None = None
    progress: bool = True

    def resolved(self) -> BulkConfig:
        """A copy with every ``None`` filled from the node configs (and checked)."""
        defaults = node_defaults()
        values = {k: defaults[k] if getattr(self, k, None) is None else getattr(self, k)
                  for k in defaults}
        cfg = dataclasses.replace(self, root=Path(self.root), tasks=tuple(self.tasks), **values)
        if cfg.max_attempts is None:
            cfg = dataclasses.replace(cfg, max_attempts=2 * cfg.episodes + 10)
        if cfg.episodes < 1:
            raise ValueError(f"episodes: must be >= 1, got {cfg.episodes}")
        if not cfg.tasks:
            raise ValueError("tasks: at least one task is needed")
        if cfg.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {cfg.workers}")
        if cfg.lerobot_depth and not cfg.depth:
            raise ValueError("lerobot_depth: copies the depth streams; record them (--depth)")
        if not 1 <= cfg.fps <= 60:
            raise ValueError(f"fps: must be in [1, 60], got {cfg.fps}")
        if cfg.width % 2 or cfg.height % 2 or cfg.width <= 0 or cfg.height <= 0:
            raise ValueError(f"width/height: must be positive and even, got "
                             f"{cfg.width}x{cfg.height}")
        return cfg


# ------------------------------------------------------------------------- one episode


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The sim state at one control tick: what sim_node's SceneCamera copies before rendering."""

    time: float
    qpos: np.ndarray
    qvel: np.ndarray

    @classmethod
    def of(cls, data) -> Snapshot:
        """Copy the state of an ``MjData``."""
        return cls(float(data.time), data.qpos.copy(), data.qvel.copy())

    def load(self, model, out):
        """Put the state into ``out`` (an ``MjData``) and recompute its kinematics/contacts."""
        import mujoco

        out.qpos[:] = self.qpos
        out.qvel[:] = self.qvel
        out.time = self.time
        mujoco.mj_forward(model, out)
        return out


@dataclasses.dataclass
class EpisodeRun:
    """One simulated episode: its sampled frames (states, commands, snapshots) and outcome."""

    task: str
    seed: int
    success: bool
    frames: list[SampledFrame]
    sim_seconds: float


def make_sampler(fps: int, max_skew: float) -> FrameSampler:
    """The recorder's streams (recorder_node, joint_trajectory source) plus the expert phase.

    Inputs arrive with zero latency in sim time, so sampling may happen as soon as every
    sample within ``max_skew`` after a frame time exists.
    """
    sampler = FrameSampler(fps, max_skew, delay=max_skew)
    sampler.add_stream(CAMERA, NEAREST)
    sampler.add_stream(STATE, NEAREST)
    sampler.add_stream(COMMAND, HOLD)
    sampler.add_stream(GRIPPER, HOLD)
    sampler.add_stream(PHASE, HOLD)
    return sampler


def simulate(env, expert, task: str, seed: int, fps: int, max_skew: float,
             settle: float = 0.5) -> EpisodeRun:
    """Run the expert on ``task``/``seed`` in sim time and sample the recorder's frames.

    Per control tick at sim time t: the joint state and a snapshot are pushed stamped t,
    the expert's command computed from that state is pushed stamped t (it is what the arm
    executes from t on), then physics advances. Frames run from the reset (t0 = 0) to
    ``settle`` s after the expert's last waypoint (or the task's time limit).
    """
    from roboalign_ros.conversions import JointStateMapper
    from roboalign_ros.sim.expert import PHASES

    mapper = JointStateMapper(env.robot)
    sampler = make_sampler(fps, max_skew)
    env.reset(task, seed)
    expert.reset()
    limit = env.task.episode_seconds
    sampler.start(env.time)
    frames: list[SampledFrame] = []
    end = None
    while True:
        t = env.time
        names, q, _, _ = env.joint_state()
        sampler.push(CAMERA, t, Snapshot.of(env.data))
        sampler.push(STATE, t, mapper(SimpleNamespace(name=names, position=q)))
        q_cmd, g = expert.act()
        sampler.push(COMMAND, t, q_cmd)
        sampler.push(GRIPPER, t, g)
        sampler.push(PHASE, t, PHASES.index(expert.last_phase))
        if end is None and (expert.done or t >= limit):
            end = t + (settle if expert.done else 0.0)
            sampler.stop(end)
        if end is not None and t >= end - 1e-9:
            break
        frames += sampler.poll(t)
        env.step(q_cmd, g)
    frames += sampler.poll(t, flush=True)
    dropped = Counter(f.dropped for f in frames if f.dropped)
    if dropped:  # every stream has a sample each tick: a drop is a bug, not noise
        raise RuntimeError(f"{task} seed {seed}: frames dropped {dict(dropped)}")
    return EpisodeRun(task, seed, bool(env.task_status()[1]), frames, env.time)


def scene_state(env, data) -> ss.SceneState:
    """The teacher's view of an ``MjData`` (tool, gripper, every object)."""
    opening = env.gripper_opening(data)
    held = opening > ss.HELD_MIN_OPENING
    objects = {name: (env.object_position(name, data), env.object_yaw(name, data),
                      held and env.is_grasped(name, data=data)) for name in env.objects}
    return ss.SceneState.from_poses(env.tool_pose(data), opening, objects)


@dataclasses.dataclass
class RecordedEpisode:
    """A solved episode ready for the writer (or a failed one, without frames)."""

    task: str
    instruction: str
    seed: int
    success: bool
    states: list[np.ndarray]
    actions: list[np.ndarray]
    stamps: list[float]
    images: list[dict[str, np.ndarray]]  # stream name -> frame (colour; depth with --depth)
    extras: list[dict[str, Any]]
    sim_seconds: float
    timings: dict[str, float]


class FrameRenderer:
    """Renders snapshots exactly as sim_node's SceneCamera renders the live state."""

    def __init__(self, env, width: int, height: int, camera: str = CAMERA, depth: bool = False,
                 wrist: bool = False):
        import mujoco

        self.env, self.width, self.height, self.camera = env, int(width), int(height), camera
        self.depth, self.wrist = depth, wrist
        self._data = mujoco.MjData(env.model)
        self.intrinsics = env.camera_intrinsics(self.width, self.height, camera)

    def render(self, snapshot: Snapshot) -> tuple[dict[str, np.ndarray], ss.SceneState]:
        """The snapshot's frames and the scene state they show.

        ``{scene: RGB uint8 [H, W, 3]}``, plus ``scene_depth: uint16 mm [H, W]`` (as sim_node
        publishes it) when the renderer records depth, and the wrist camera's (``wrist``,
        ``wrist_depth``) with ``wrist``.
        """
        from roboalign_ros.sim.server import depth_millimetres

        data = snapshot.load(self.env.model, self._data)
        rgb, meters = self.env.render(self.width, self.height, self.camera, depth=self.depth,
                                      data=data)
        images = {CAMERA: rgb}
        if self.depth:
            images[DEPTH_CAMERA] = depth_millimetres(meters)
        if self.wrist:  # the same state: both cameras show the same instant
            images[WRIST_CAMERA], meters = self.env.render(self.width, self.height, WRIST_CAMERA,
                                                           depth=self.depth, data=data)
            if self.depth:
                images[WRIST_DEPTH_CAMERA] = depth_millimetres(meters)
        return images, scene_state(self.env, data)


def record_episode(env, expert, renderer: FrameRenderer, task: str, seed: int, fps: int,
                   max_skew: float, settle: float) -> RecordedEpisode:
    """Simulate one episode and, if the expert solved it, render and assemble its frames."""
    t0 = time.perf_counter()
    run = simulate(env, expert, task, seed, fps, max_skew, settle)
    t1 = time.perf_counter()
    out = RecordedEpisode(task, env.task.instruction, seed, run.success, [], [], [], [], [],
                          run.sim_seconds, {"simulate": t1 - t0, "render": 0.0})
    if not run.success:
        return out
    for f in run.frames:
        v = f.values
        images, state = renderer.render(v[CAMERA])
        out.states.append(v[STATE])
        out.actions.append(act.compose_action(ACTION_SOURCE, v[COMMAND], v[GRIPPER], v[STATE]))
        out.stamps.append(f.time)
        out.images.append(images)
        out.extras.append({ss.ENV_STATE_KEY: state.to_vector(), ss.PHASE_KEY: v[PHASE]})
    out.timings["render"] = time.perf_counter() - t1
    return out


# ------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _worker_init(robot: str, width: int, height: int, fps: int, max_skew: float,
                 settle: float, depth: bool = False, wrist: bool = False) -> None:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    from roboalign_ros.sim import TabletopEnv
    from roboalign_ros.sim.expert import ScriptedExpert

    env = TabletopEnv(robot)
    _WORKER.update(env=env, expert=ScriptedExpert(env),
                   renderer=FrameRenderer(env, width, height, depth=depth, wrist=wrist),
                   args=(fps, max_skew, settle))


def _worker_episode(job: tuple[str, int]) -> RecordedEpisode:
    w = _WORKER
    return record_episode(w["env"], w["expert"], w["renderer"], *job, *w["args"])


class _Runner:
    """Runs episodes in this process or in a pool of worker processes (same results)."""

    def __init__(self, cfg: BulkConfig):
        args = (cfg.robot, cfg.width, cfg.height, cfg.fps, cfg.max_skew, cfg.settle, cfg.depth,
                cfg.wrist)
        self.pool = None
        if cfg.workers > 1:
            import multiprocessing

            # spawn: a forked child would share the parent's GL / OSMesa state
            self.pool = multiprocessing.get_context("spawn").Pool(
                cfg.workers, initializer=_worker_init, initargs=args)
        else:
            _worker_init(*args)

    def run(self, jobs: list[tuple[str, int]]) -> Iterator[RecordedEpisode]:
        """Results in job order."""
        if self.pool is None:
            return map(_worker_episode, jobs)
        return self.pool.imap(_worker_episode, jobs)

    def close(self) -> None:
        """Stop the workers / free the renderer."""
        if self.pool is not None:  # every result is consumed (or we are failing): no waiting
            self.pool.terminate()
            self.pool.join()
        elif "env" in _WORKER:
            _WORKER.pop("env").close()


# ------------------------------------------------------------------------- dataset


def sim_metadata(env, expert, tasks) -> ss.SimMetadata:
    """The ``roboalign.sim`` block for ``tasks`` (Task objects) in ``env``."""
    from roboalign_ros.sim.expert import PHASES

    objects = {o.name: {"label": o.name.replace("_", " "), "shape": o.shape,
                        "colour": o.colour, "rest_height": o.rest_height}
               for o in env.scene.objects}
    infos = {t.instruction: ss.TaskInfo(t.name, t.instruction, t.kind, t.obj, t.target,
                                        tuple(float(x) for x in t.direction), float(t.distance),
                                        tuple(w.name for w in expert.plan(t)))
             for t in tasks}
    return ss.SimMetadata(objects, tuple(PHASES), infos)


def _open_dataset(cfg: BulkConfig, env, meta: ss.SimMetadata):
    """Create the dataset or open it to append (same layout required); return (writer, split)."""
    from roboalign_ros.data import DatasetWriter
    from roboalign_ros.data import lerobot_format as fmt

    robot = env.robot
    state_names = act.state_names(robot.arm_joints)
    action_names = act.action_names(ACTION_SOURCE, robot.arm_joints)
    features = ss.scene_features(list(env.objects))
    video = dict(gop=cfg.gop, crf=cfg.crf, encoder_threads=cfg.encoder_threads)
    depth = {c: (cfg.height, cfg.width) for c in
             (DEPTH_CAMERA, *([WRIST_DEPTH_CAMERA] * cfg.wrist))} if cfg.depth else {}
    cameras = {c: (cfg.height, cfg.width) for c in (CAMERA, *([WRIST_CAMERA] * cfg.wrist))}
    if not (cfg.root / fmt.INFO_PATH).exists():
        writer = DatasetWriter.create(
            cfg.root, cfg.fps, state_names, action_names, cameras,
            robot.name, codec=cfg.codec, extra_features=features, depth_cameras=depth,
            lerobot_depth=cfg.lerobot_depth,
            metadata={"sim": meta.to_json(), "recorder": "roboalign record bulk"}, **video)
        split = sp.SeedSplit(split_seed=cfg.split_seed)
        sp.save_split(cfg.root, split)
        return writer, split
    writer = DatasetWriter.open(cfg.root, **video)
    problems = []
    if writer.fps != cfg.fps:
        problems.append(f"fps {writer.fps} (asked: {cfg.fps})")
    if writer.state_names != state_names or writer.action_names != action_names:
        problems.append("state/action names")
    if writer.cameras != cameras:
        problems.append(f"cameras {writer.cameras} (asked: {cameras})")
    if writer.depth_cameras != depth:
        problems.append(f"depth cameras {writer.depth_cameras} (asked: {depth or 'none'})")
    if bool(writer.lerobot_depth) != cfg.lerobot_depth:
        problems.append(f"LeRobot depth copies {writer.lerobot_depth or 'none'} (asked: "
                        f"{'yes' if cfg.lerobot_depth else 'none'})")
    if writer.extra_features != {k: dict(v) for k, v in features.items()}:
        problems.append("environment state layout")
    split = sp.load_split(cfg.root)
    if split is not None and len(split.episodes) == writer.num_episodes + 1:
        split.truncate(writer.num_episodes)  # interrupted between the split and the episode
    if split is None or len(split.episodes) != writer.num_episodes:
        problems.append("meta/split.json missing or not matching the episodes")
    elif split.split_seed != cfg.split_seed:
        problems.append(f"split seed {split.split_seed} (asked: {cfg.split_seed})")
    old = writer.metadata.get("sim", {})
    if old and list(old.get("phases", [])) != list(meta.phases):
        problems.append("expert phase list")
    if problems:
        writer.close()
        raise ValueError(f"out: {cfg.root} holds a dataset with other " + "; ".join(problems)
                         + ": record into a new directory")
    tasks = {**old.get("tasks", {}), **meta.to_json()["tasks"]}
    writer.update_metadata({"sim": {**meta.to_json(), "tasks": tasks}})
    return writer, split


def _write(writer, ep: RecordedEpisode) -> int:
    writer.start_episode(ep.instruction, operator=OPERATOR, source="expert")
    try:
        for s, a, img, stamp, extra in zip(ep.states, ep.actions, ep.images, ep.stamps,
                                           ep.extras, strict=True):
            writer.add_frame(s, a, img, timestamp=stamp, extra=extra)
        return writer.save_episode(success=True).length
    except BaseException:
        writer.discard_episode()
        raise


@dataclasses.dataclass
class BulkResult:
    """What a bulk run did."""

    saved: dict[str, int]
    failed: dict[str, list[int]]
    frames: int
    wall_seconds: float
    sim_seconds: float
    timings: dict[str, float]

    @property
    def episodes_per_minute(self) -> float:
        """Saved episodes per wall minute."""
        return 60.0 * sum(self.saved.values()) / max(self.wall_seconds, 1e-9)

    @property
    def frames_per_second(self) -> float:
        """Dataset frames written per wall second."""
        return self.frames / max(self.wall_seconds, 1e-9)

    def summary(self) -> str:
        """Human-readable lines: per task, then speed."""
        lines = [f"{t:32s} saved {n:5d}  failed {len(self.failed.get(t, []))}"
                 + (f"  (seeds {self.failed[t][:10]})" if self.failed.get(t) else "")
                 for t, n in self.saved.items()]
        tried = sum(self.saved.values()) + sum(len(v) for v in self.failed.values())
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        lines.append(f"{sum(self.saved.values())} episodes ({tried} tried), {self.frames} frames "
                     f"in {self.wall_seconds:.1f} s: {self.episodes_per_minute:.1f} episodes/min, "
                     f"{self.frames_per_second:.1f} frames/s, "
                     f"{self.sim_seconds / max(self.wall_seconds, 1e-9):.1f}x real time "
                     f"({parts})")
        return "\n".join(lines)


def record_bulk(cfg: BulkConfig) -> BulkResult:
    """Record ``cfg.episodes`` solved episodes per task into ``cfg.root`` (created or appended).

    Seeds come from each task's training seed stream (:func:`~roboalign_ros.data.split.
    train_seed_stream`), skipping seeds the dataset already tried; failed episodes are not
    saved, only listed in meta/split.json. Batches of exactly the missing number of episodes
    go to the workers, so the seeds used do not depend on ``cfg.workers``.
    """
    from tqdm import tqdm

    from roboalign_ros.sim import TASKS, TabletopEnv
    from roboalign_ros.sim.expert import ScriptedExpert

    cfg = cfg.resolved()
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks: unknown {unknown}; known: {sorted(TASKS)}")
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    env = TabletopEnv(cfg.robot)  # layout and metadata only: it never renders
    meta = sim_metadata(env, ScriptedExpert(env), [TASKS[t] for t in cfg.tasks])
    writer, split = _open_dataset(cfg, env, meta)
    env.close()
    start = time.perf_counter()
    result = BulkResult({t: 0 for t in cfg.tasks}, {t: [] for t in cfg.tasks}, 0, 0.0, 0.0,
                        {"simulate": 0.0, "render": 0.0, "write": 0.0})
    runner = _Runner(cfg)
    bar = tqdm(total=cfg.episodes * len(cfg.tasks), desc="bulk expert demos", unit="ep",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        for task in cfg.tasks:
            tried = split.tried(task)
            seeds = (s for s in sp.train_seed_stream(task, cfg.split_seed) if s not in tried)
            attempts = 0
            while result.saved[task] < cfg.episodes and attempts < cfg.max_attempts:
                n = min(cfg.episodes - result.saved[task], cfg.max_attempts - attempts)
                jobs = [(task, next(seeds)) for _ in range(n)]
                attempts += n
                for ep in runner.run(jobs):
                    result.sim_seconds += ep.sim_seconds
                    for k, v in ep.timings.items():
                        result.timings[k] += v
                    # the split first: an episode on disk always has its seed written down
                    split.add(task, ep.seed, ep.success)
                    sp.save_split(cfg.root, split)
                    if ep.success:
                        t0 = time.perf_counter()
                        try:
                            result.frames += _write(writer, ep)
                        except BaseException:
                            split.truncate(writer.num_episodes)
                            sp.save_split(cfg.root, split)
                            raise
                        result.timings["write"] += time.perf_counter() - t0
                        result.saved[task] += 1
                        bar.update(1)
                    else:
                        result.failed[task].append(ep.seed)
                    bar.set_postfix(task=task, failed=sum(map(len, result.failed.values())))
    finally:
        bar.close()
        runner.close()
        writer.close()
        result.wall_seconds = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------- CLI


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign record bulk``; ``func`` records."""
    ap.add_argument("--tasks", default="all",
                    help="comma-separated task names, or 'all' (every registered task)")
    ap.add_argument("--episodes", "-n", type=int, default=10,
                    help="saved (successful) episodes per task")
    ap.add_argument("--out", required=True, help="dataset directory (appended if it exists)")
    ap.add_argument("--split-seed", type=int, default=0,
                    help="orders each task's training seeds (evaluation seeds are held out)")
    ap.add_argument("--robot", default="sim_arm")
    ap.add_argument("--image-size", type=int, default=None,
                    help="square images of this size (e.g. the policy's 224)")
    ap.add_argument("--width", type=int, default=None, help="default: sim_node's (sim.yaml)")
    ap.add_argument("--height", type=int, default=None, help="default: sim_node's (sim.yaml)")
    ap.add_argument("--fps", type=int, default=None, help="default: recorder_node's")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="s recorded after the expert's last waypoint")
    ap.add_argument("--max-attempts", type=int, default=None,
                    help="episodes tried per task at most (default 2 x episodes + 10)")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes simulating and rendering (the writer stays in this one)")
    ap.add_argument("--wrist", action="store_true",
                    help="also record the wrist camera (sim_node's wrist_camera)")
    ap.add_argument("--depth", action="store_true",
                    help="also record the aligned depth (scene_depth, and wrist_depth with "
                         "--wrist; lossless, mm)")
    ap.add_argument("--lerobot-depth", action="store_true",
                    help="with --depth: also copy it as LeRobot 0.6's own depth features "
                         "(observation.images.<stream>, 1 mm codes to 4.095 m), which "
                         "LeRobot decodes and its editing tools keep")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.set_defaults(func=run_cli)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(prog="roboalign record bulk",
                                 description=__doc__.splitlines()[0])
    add_arguments(ap)
    return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BulkConfig:
    """Turn parsed options into a :class:`BulkConfig`."""
    from roboalign_ros.sim import TASKS

    tasks = sorted(TASKS) if args.tasks.strip() == "all" else \
        [t.strip() for t in args.tasks.split(",") if t.strip()]
    width = args.width or args.image_size
    height = args.height or args.image_size
    return BulkConfig(root=Path(args.out), tasks=tasks, episodes=args.episodes,
                      split_seed=args.split_seed, robot=args.robot, width=width, height=height,
                      fps=args.fps, settle=args.settle, max_attempts=args.max_attempts,
                      workers=args.workers, depth=args.depth, wrist=args.wrist,
                      lerobot_depth=args.lerobot_depth, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    """Record; exit 0 when every task got its episodes, 1 otherwise, 2 on bad options."""
    return run_cli(parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """``roboalign record bulk`` with parsed options (exit status as :func:`main`)."""
    try:
        cfg = config_from_args(args).resolved()
        result = record_bulk(cfg)
    except ValueError as exc:
        print(f"roboalign record bulk: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"dataset: {cfg.root.resolve()} ({cfg.width}x{cfg.height} @ {cfg.fps} fps; "
          f"seeds in {cfg.root / sp.SPLIT_PATH})")
    return 0 if all(n >= cfg.episodes for n in result.saved.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
