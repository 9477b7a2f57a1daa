"""``roboalign eval sim``: the closed loop of the ROS graph in one process, in sim time.

The same pieces as sim_node + policy_node + executor_node + eval_node, called directly instead
of through topics:

* sim: :class:`~roboalign_ros.sim.server.SimServer` (TabletopEnv, the joint trajectory
  follower, the rate limiter) stepped every control period; the camera rendered as sim_node
  renders it (:class:`~roboalign_ros.sim.server.SceneCamera`) at the camera rate of
  config/sim.yaml and the policy's image size;
* policy: a :class:`~roboalign_ros.serving.PolicyWorker` (observation gate, image /
  joint-state pairing by stamp, stale chunks dropped) stepped on the newest frame whenever the
  previous inference has finished, on the Observation policy_node builds;
* executor: the :class:`~roboalign_ros.control.executor.ChunkExecutor` and safety envelope
  executor_node builds (config/executor.yaml, :mod:`roboalign_ros.control.build`) ticking at
  its rate; its commands drive the follower as the joint_trajectory backend does (trajectories
  stamped with the tick's time: the target with its velocity, then rest; a stop brakes to rest);
* success: the task's own check at sim_node's status rate; the first success ends the episode
  (as eval_node does), otherwise it ends after the task's ``episode_seconds``.

Timing: one clock, sim time. An inference started at t on the frame stamped s hands its chunk
(stamped s) to the executor at t + latency, the latency being predict's wall time times
``latency_scale`` (or ``fixed_latency``); physics, executor and camera run on meanwhile. Frames
are rendered and delivered in no sim time (the graph adds ~10-40 ms of rendering and DDS).
Each episode starts from a fresh executor and worker and a reset policy (no reasoning carried
over from the previous episode).

Results go to ``OUT/results.jsonl`` (the evaluation record format, one line per episode, written
atomically after each), ``OUT/summary.json`` and ``OUT/report.png`` (Wilson 95% intervals).
Running again with the same OUT skips the episodes already there.

    roboalign eval sim --model runs/ckpt --task pick_red_cube,stack_red_cube_on_green_block
    roboalign eval sim --model tiny --task all --seeds 100000-100009 --fixed-latency 0.1
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from roboalign_ros.evaluation.results import COUNTED, ResultsStore, make_record
from roboalign_ros.parameters import default

PLAN = "eval_sim"
TINY, EXPERT = "tiny", "expert"  # model names that are not checkpoints
REMOTE = "remote:"  # a model name "remote:HOST:PORT": the policy a `roboalign serve` serves
DEFAULT_EPISODES = 10
EPS = 1e-9  # s; events this close count as simultaneous (k * dt vs sums of latencies)


class PolicyCrashed(RuntimeError):
    """The policy raised inside ``predict``; the message names the model, task, seed and time."""


@dataclasses.dataclass
class SimEvalConfig:
    """How episodes are run (``None``: the value config/ or the policy gives)."""

    robot: str = default("policy_node", "robot")
    device: str = "cpu"
    action_source: str | None = None   # override the policy's: 'head' | 'tokens'
    reasoning_every: int = -1           # -1: the checkpoint's; 'tokens' forces 1
    latency_scale: float = 1.0          # sim seconds of delay per wall second of predict
    fixed_latency: float | None = None  # s; replaces the measured delay
    episode_seconds: float | None = None  # None: each task's own
    camera_rate: float | None = None    # Hz; None: config/sim.yaml
    max_rate: float = default("policy_node", "max_rate")
    image_size: tuple[int, int] | None = None  # (h, w); None: the policy's, else sim.yaml's
    torch_threads: int = 1              # CPU inference threads (0: torch's default)
    workers: int = 1                    # processes running episodes (a checkpoint path only)
    token_file: str = default("policy_node", "token_file")  # a remote model's server token
    executor: dict[str, Any] = dataclasses.field(default_factory=dict)  # executor_node params
    progress: bool = True

    def __post_init__(self):
        if self.action_source not in (None, "head", "tokens"):
            raise ValueError(f"action_source: {self.action_source!r} is not 'head' or 'tokens'")
        if not self.latency_scale >= 0:
            raise ValueError(f"latency_scale: must be >= 0, got {self.latency_scale}")
        if self.fixed_latency is not None and not self.fixed_latency >= 0:
            raise ValueError(f"fixed_latency: must be >= 0, got {self.fixed_latency}")
        if self.episode_seconds is not None and not self.episode_seconds > 0:
            raise ValueError(f"episode_seconds: must be > 0, got {self.episode_seconds}")
        if self.camera_rate is not None and not 0 < self.camera_rate <= 60:
            raise ValueError(f"camera_rate: {self.camera_rate} Hz is not in (0, 60]")
        from roboalign_ros.serving import min_period

        min_period(self.max_rate)  # names a negative max_rate
        if not self.workers >= 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")


@dataclasses.dataclass(frozen=True)
class ChunkEvent:
    """One chunk as the executor saw it."""

    sequence: int
    stamp: float     # observation time
    arrival: float   # when it reached the executor
    accepted: bool
    reason: str


@dataclasses.dataclass
class EpisodeTrace:
    """What happened in one episode beyond its record (for tests and diagnostics)."""

    chunks: list[ChunkEvent] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)
    inference_wall: float = 0.0
    dropped: int = 0
    blocked: Counter = dataclasses.field(default_factory=Counter)
    malformed: int = 0
    commands: int = 0           # arm commands the sim accepted (trajectories, stops, twists)
    sim_rejected: int = 0
    sim_rejected_speed: int = 0
    sim_reasons: list[str] = dataclasses.field(default_factory=list)
    reasoning: str = ""
    problems: int = 0           # outputs whose parse / decode needed repairs


def parse_seeds(text: str) -> list[int]:
    """``'100000-100049'``, ``'1,5,7-9'`` -> seeds in the order given (duplicates refused)."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            lo, hi = int(first), int(last) if sep else int(first)
        except ValueError:
            raise ValueError(f"seeds: {part!r} is not a seed or a range A-B") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"seeds: {part!r} is not a range A-B with 0 <= A <= B")
        seeds += range(lo, hi + 1)
    if not seeds:
        raise ValueError(f"seeds: none in {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: {text!r} names a seed twice")
    return seeds


def parse_executor_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["blend=rtc", "safety.velocity_scale=0.3"]`` -> executor_node parameters (YAML values)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"executor: {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"executor: {item!r}: bad value ({exc})") from exc
    return out


def parse_tasks(text: str | Sequence[str]) -> list[str]:
    """``'T1,T2'`` (or a list, or ``'all'``) -> registered task names."""
    from roboalign_ros.sim.tasks import TASKS

    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [t for t in names if t]
    if names == ["all"]:
        return sorted(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"tasks: unknown {unknown or names}; known: {sorted(TASKS)}")
    return names


def eval_seeds(n: int) -> list[int]:
    """The first ``n`` held-out evaluation seeds (never recorded for training)."""
    from roboalign_ros.data.split import SeedSplit

    return SeedSplit().eval_seeds(n)


# ------------------------------------------------------------------------- one episode


def _is_expert(policy) -> bool:
    return isinstance(policy, str) and policy == EXPERT


class SimEvaluator:
    """Runs episodes of one policy in one sim (not thread-safe; render from this thread only)."""

    def __init__(self, policy, config: SimEvalConfig, model: str = "", name: str = ""):
        os.environ.setdefault("MUJOCO_GL", "osmesa")
        from roboalign_ros import serving
        from roboalign_ros.control.build import SPACE_BACKEND, executor_parameters
        from roboalign_ros.control.kinematics import Kinematics
        from roboalign_ros.conversions import JointStateMapper
        from roboalign_ros.model import Observation  # noqa: F401  torch: seconds, not per episode
        from roboalign_ros.parameters import node_parameters
        from roboalign_ros.sim.server import SceneCamera, SimServer

        self.config, self.model = config, model
        self.name = name or model or type(policy).__name__
        sim = node_parameters("sim_node", "sim.yaml")
        pol = node_parameters("policy_node", "policy.yaml")
        self.server = SimServer(config.robot, control_period=sim["control_period"],
                                servo_timeout=sim["servo.timeout"],
                                max_linear=sim["servo.max_linear"],
                                max_angular=sim["servo.max_angular"])
        self.robot = self.server.robot
        self.policy = ExpertOracle(self) if _is_expert(policy) else policy
        cfg = self.policy.config
        self._check_policy(cfg)
        self.camera_name = cfg.camera_names[0]
        h, w = config.image_size or cfg.image_size or (sim["camera.height"],
                                                          sim["camera.width"])
        self.camera = SceneCamera(self.server, w, h, depth=False)
        self.camera_rate = config.camera_rate or sim["camera.rate"]
        from roboalign_ros.serving import min_period

        self.min_period = min_period(config.max_rate)
        self.status_every = max(1, round(1.0 / (sim["status_rate"] * self.server.control_period)))
        self.executor_params = executor_parameters({
            "robot": config.robot, "action_space": cfg.action_space,
            "backend": SPACE_BACKEND.get(cfg.action_space, ""), **config.executor})
        self.kinematics = Kinematics(self.robot)
        self.joint_space = cfg.action_space == "joint_position"
        # the gate and bounds policy_node builds from the same parameters
        self.gate = serving.observation_gate(pol, needs_state=bool(cfg.state_dim))
        self.limits = serving.input_limits(pol)
        self.state_of = JointStateMapper(self.robot)
        self.arm_of = JointStateMapper(self.robot, with_gripper=False)
        self.observation_stamp = math.nan  # of the observation being predicted
        self.trace = EpisodeTrace()
        self._clock = 0.0
        self._latency: float | None = None
        self._crash: BaseException | None = None
        self._sequence = 0

    def _check_policy(self, cfg) -> None:
        if len(cfg.camera_names) != 1:
            raise ValueError(f"model: needs cameras {list(cfg.camera_names)}; the sim renders "
                             "one (its scene camera)")
        from roboalign_ros.serving import check_policy

        check_policy(self.policy, self.robot)   # as policy_node checks it

    # -- the policy as policy_node runs it ---------------------------------------------------

    def _predict(self, observation):
        t0 = time.perf_counter()
        try:
            return self.policy.predict(observation)
        except Exception as exc:
            self._crash = exc
            raise
        finally:
            wall = time.perf_counter() - t0
            cfg = self.config
            self._latency = cfg.fixed_latency if cfg.fixed_latency is not None \
                else wall * cfg.latency_scale
            self.trace.inference_wall += wall
            self._clock += self._latency  # the world went on while the policy thought

    def _observation(self, snap):
        from roboalign_ros.serving import observation

        self.observation_stamp = snap.image_stamp
        return observation(snap)   # as policy_node's: the model's camera <- the scene camera

    def _infer(self, worker, frames: deque, pending: deque, busy_until: float, t: float,
               task: str, seed: int) -> float:
        """Start every inference due by ``t``; returns when the policy is free again."""
        from roboalign_ros.control.chunk import Chunk, ChunkError

        tr, cfg = self.trace, self.policy.config
        while True:
            new = [f for f in frames if f[0] > self._last_frame]
            if not new:
                return busy_until
            # the worker wakes for the first new frame, or when it is free (and, under
            # max_rate, min_period after its last start, as PolicyWorker._run), on the newest one
            start = max(busy_until, new[0][0], self._last_start + self.min_period)
            if start > t + EPS:
                return busy_until
            stamp, rgb = [f for f in new if f[0] <= start + EPS][-1]
            self._last_frame, self._last_start = stamp, start
            worker.update_image(rgb, stamp)
            self._clock, self._latency = start, None
            decision = worker.step()
            if decision.error:
                raise PolicyCrashed(f"policy {self.name} crashed in predict on {task} seed "
                                    f"{seed} at sim t={start:.2f} s: {decision.error}"
                                    ) from self._crash
            if self._latency is not None:  # it ran (an output or a dropped chunk)
                busy_until = start + self._latency
                tr.latencies.append(self._latency)
            if decision.dropped:
                tr.dropped += 1
            elif decision.blocked:
                tr.blocked[decision.blocked] += 1
            if decision.output is None or decision.dropped:
                continue
            out = decision.output
            if out.reasoning_fresh and out.reasoning:
                tr.reasoning = out.reasoning
            tr.problems += bool(out.problems)
            self._sequence += 1
            try:
                chunk = Chunk(decision.snapshot.image_stamp, cfg.dt, out.chunk,
                              tuple(cfg.dimension_names), cfg.action_space, self._sequence)
            except ChunkError:  # executor_node refuses it as malformed
                tr.malformed += 1
                continue
            pending.append((busy_until, chunk))

    # -- the executor's commands as the backends send them --------------------------------

    def _send(self, command, t: float) -> None:
        from roboalign_ros.control.trajectory import trajectory_points
        from roboalign_ros.sim.server import CommandRejected, TooFast

        server = self.server
        try:
            if not self.joint_space:  # ServoBackend: a twist every tick, zeros when holding
                twist = command.arm if command.kind == "track" else np.zeros(6)
                server.command_twist(twist, stamp=t, now=t)
                self.trace.commands += 1
            elif command.kind == "track" or command.stop:  # JointTrajectoryBackend.send
                times, positions, velocities = trajectory_points(command)
                server.command_trajectory(self.robot.arm_joints, times, positions, velocities,
                                          start_time=command.stamp, now=t)
                self.trace.commands += 1
        except CommandRejected as exc:
            self.trace.sim_rejected += 1
            self.trace.sim_rejected_speed += isinstance(exc, TooFast)
            if len(self.trace.sim_reasons) < 5:
                self.trace.sim_reasons.append(f"t={t:.2f} s: {exc}")
        g = command.gripper
        if g is not None and (self._gripper is None or abs(g - self._gripper) > 1e-3):
            server.command_gripper([self.robot.gripper_to_joint(g)])  # GripperPublisher's units
            self._gripper = g

    # -- the episode -------------------------------------------------------------------------

    def run_episode(self, task: str, seed: int) -> tuple[bool, float, str]:
        """Run ``task`` / ``seed``; returns ``(success, sim seconds, end reason)``.

        :attr:`trace` holds the episode's chunks, latencies and refusals afterwards.
        """
        from roboalign_ros.control.build import build_executor
        from roboalign_ros.serving import PolicyWorker, tokenizer_counter

        server = self.server
        instruction = server.reset(task, seed)
        limit = self.config.episode_seconds or server.env.task.episode_seconds
        executor = build_executor(self.executor_params, self.robot, self.kinematics)
        if hasattr(self.policy, "reset"):
            self.policy.reset()
        tokenizer = getattr(self.policy, "tokenizer", None)
        worker = PolicyWorker(self._predict, self._observation, self.gate, lambda d: None,
                              lambda: self._clock, limits=self.limits,
                              count_tokens=tokenizer_counter(tokenizer) if tokenizer else None,
                              cameras=(self.camera_name,))
        problem = worker.set_instruction(instruction)
        if problem:
            raise ValueError(f"task {task}: {problem}")
        self.trace = EpisodeTrace()
        self._last_frame, self._last_start, self._gripper = -math.inf, -math.inf, None
        clamped = server.limiter.clamped
        dt = server.control_period
        frame_period = 1.0 / self.camera_rate
        frames: deque = deque(maxlen=2)   # the newest frames, (stamp, rgb)
        pending: deque = deque()          # chunks in flight, (arrival, chunk)
        names, position = server.env.joint_state()[:2]
        next_frame, busy_until, k = 0.0, 0.0, 0
        success, reason = False, "time limit"
        while True:
            t = k * dt
            joint_state = SimpleNamespace(name=names, position=position)
            q = self.arm_of(joint_state)
            worker.update_state(self.state_of(joint_state), t)
            if t >= next_frame - EPS:
                frames.append((t, self.camera.render().rgb))
                next_frame += frame_period
            busy_until = self._infer(worker, frames, pending, busy_until, t, task, seed)
            while pending and pending[0][0] <= t + EPS:
                arrival, chunk = pending.popleft()
                accepted, why = executor.submit(chunk, arrival)
                self.trace.chunks.append(ChunkEvent(chunk.sequence, chunk.stamp, arrival,
                                                    accepted, why))
            self._send(executor.tick(t, q, state_stamp=t), t)
            if k and k % self.status_every == 0 and server.task_status()[4]:
                success, reason = True, "sim success check"
                break
            if t >= limit - EPS:
                break
            sample = server.step(t)
            names, position = sample.names, sample.position
            k += 1
        self.executor_status = executor.status(t)
        self.rate_clamped = server.limiter.clamped - clamped
        return success, t, reason

    def record(self, task: str, seed: int, trial: int, task_trial: int, setup: dict) -> dict:
        """Run one episode and return its result record (results.py fields + diagnostics)."""
        started = time.time()
        wall0 = time.perf_counter()
        success, sim_seconds, reason = self.run_episode(task, seed)
        wall = time.perf_counter() - wall0
        tr, status = self.trace, self.executor_status
        plan = SimpleNamespace(name=PLAN, policy=setup["policy"], model=self.model)
        spec = SimpleNamespace(id=task, task=task, instruction=self.server.env.task.instruction)
        ended = time.time()
        record = make_record(plan=plan, mode="sim", spec=spec, trial=trial,
                             task_trial=task_trial, attempt=1, seed=seed,
                             outcome="success" if success else "failure",
                             progress=1.0 if success else 0.0, started_at=started,
                             ended_at=ended, labelled_at=ended, end_reason=reason, notes="",
                             operator="", label_source="auto")
        refused = {k.removeprefix("rejected_"): v for k, v in status.counters.items()
                   if k.startswith("rejected_")}
        if tr.malformed:
            refused["malformed"] = tr.malformed
        lat = np.asarray(tr.latencies)
        record.update(
            duration=round(sim_seconds, 3), sim_seconds=round(sim_seconds, 3),
            wall_seconds=round(wall, 3), setup=setup,
            inference={"calls": int(lat.size), "dropped": tr.dropped,
                       "blocked": dict(tr.blocked), "wall_seconds": round(tr.inference_wall, 3),
                       "latency_mean": float(lat.mean()) if lat.size else None,
                       "latency_max": float(lat.max()) if lat.size else None,
                       "outputs_repaired": tr.problems},
            chunks={"delivered": len(tr.chunks) + tr.malformed,
                    "accepted": status.counters.get("accepted", 0),
                    "refused": sum(refused.values()), "refusals": refused},
            sim={"commands": tr.commands, "rejected": tr.sim_rejected,
                 "rejected_speed": tr.sim_rejected_speed, "rejections": tr.sim_reasons,
                 "rate_clamped_steps": self.rate_clamped},
            executor={k: v for k, v in status.counters.items() if k.startswith("ticks_")},
            safety=status.safety_counters, reasoning=tr.reasoning[:500])
        return record

    def close(self) -> None:
        """Free the renderer (its GL context)."""
        self.camera.close()


# ------------------------------------------------------------------------- the oracle


class ExpertOracle:
    """A policy stand-in that replays the scripted expert's plan as chunks (``--model expert``).

    At an episode's first call it runs :class:`~roboalign_ros.sim.expert.ScriptedExpert` on a
    private copy of the task and seed (same layout, same physics) and records its commands;
    each ``predict`` returns the plan from the observation time on. It solves what the expert
    solves when the loop (timing, executor, safety envelope, follower) carries a good plan
    through: a ceiling for every policy evaluated in the same loop.
    """

    horizon, dt = 50, 0.02

    def __init__(self, evaluator: SimEvaluator):
        from roboalign_ros.sim import TabletopEnv

        self.evaluator = evaluator
        names = list(evaluator.robot.arm_joints) + ["gripper"]
        self.config = SimpleNamespace(
            horizon=self.horizon, dt=self.dt, action_dim=len(names), dimension_names=names,
            action_space="joint_position", camera_names=["scene"], image_size=(64, 64),
            state_dim=len(names), reasoning_every=0, action_source="head")
        self.env = TabletopEnv(evaluator.robot, evaluator.server.control_period)
        self._key: tuple | None = None

    def reset(self) -> None:
        """Forget the plan (it is computed at the next call)."""
        self._key = None

    def _plan(self, task, seed: int) -> None:
        from roboalign_ros.sim.expert import ScriptedExpert

        env = self.env
        env.reset(task, seed)
        expert = ScriptedExpert(env)
        times, rows = [], []
        while env.time < task.episode_seconds:
            q, g = expert.act()
            times.append(env.time)
            rows.append(np.append(q, g))
            if expert.done:
                break
            env.step(q, g)
        self._times, self._rows = np.asarray(times), np.asarray(rows, np.float32)

    def predict(self, observation):
        """The expert's commands at the observation time and after it."""
        from roboalign_ros.model.policy import PolicyOutput

        live = self.evaluator.server.env
        if self._key != (live.task.name, live.seed):
            self._key = (live.task.name, live.seed)
            self._plan(live.task, live.seed)
        t = self.evaluator.observation_stamp + self.dt * np.arange(self.horizon)
        chunk = np.stack([np.interp(t, self._times, col) for col in self._rows.T], axis=1)
        return PolicyOutput(chunk=chunk.astype(np.float32))


# ------------------------------------------------------------------------- many episodes


@dataclasses.dataclass
class EvalResults:
    """What :func:`evaluate` did: the records of the requested episodes and their summary."""

    out: Path
    records: list[dict]
    summary: dict
    ran: int                 # episodes run now (the others were already in the results)
    wall_seconds: float
    sim_seconds: float

    @property
    def episodes_per_minute(self) -> float:
        """Episodes run now per wall minute."""
        return 60.0 * self.ran / max(self.wall_seconds, 1e-9)

    @property
    def realtime_factor(self) -> float:
        """Sim seconds per wall second over the episodes run now."""
        return self.sim_seconds / max(self.wall_seconds, 1e-9)


def default_out(model) -> Path:
    """``runs/eval_sim/<model name>``: the results directory when none is given."""
    if not isinstance(model, (str, os.PathLike)):
        return Path("runs", "eval_sim", getattr(model, "name", type(model).__name__))
    if str(model).startswith(REMOTE):
        return Path("runs", "eval_sim", "remote_" + str(model)[len(REMOTE):].replace(":", "_"))
    name = str(model) if str(model) in (TINY, EXPERT) else Path(model).expanduser().resolve().name
    return Path("runs", "eval_sim", name)


def load_model(model, config: SimEvalConfig):
    """``(policy, name, path)`` for a checkpoint directory, 'tiny', 'expert' or a policy object.

    Applies the config's action source / reasoning / thread overrides; a checkpoint that fails
    to load raises ``ValueError`` naming it.
    """
    if not isinstance(model, (str, os.PathLike)):
        return model, getattr(model, "name", type(model).__name__), ""
    model = str(model)
    if model == EXPERT:
        return EXPERT, EXPERT, EXPERT
    if model.startswith(REMOTE):   # through the server, as policy_node with inference remote
        from roboalign_ros.serving.remote import RemotePolicy, read_token

        if config.action_source is not None or config.reasoning_every != -1:
            raise ValueError("action_source / reasoning_every: set them on the server "
                             "(roboalign serve --reasoning-every)")
        token = read_token(config.token_file) if config.token_file else None
        return RemotePolicy(model[len(REMOTE):], token=token, timeout=120.0), \
            default_out(model).name, model
    import torch

    from roboalign_ros.robot import load_robot_config
    from roboalign_ros.serving import load_policy

    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    if model != TINY and not Path(model).expanduser().is_dir():
        raise ValueError(f"model: {model} is not a checkpoint directory (nor '{TINY}' / "
                         f"'{EXPERT}')")
    try:
        policy = load_policy(str(Path(model).expanduser()) if model != TINY else TINY,
                             load_robot_config(config.robot), config.device,
                             config.reasoning_every)
    except Exception as exc:
        raise ValueError(f"model: {model} failed to load: {type(exc).__name__}: {exc}") from exc
    cfg = policy.config
    if config.action_source is not None:
        cfg.action_source = config.action_source
        if config.action_source == "tokens":
            cfg.reasoning_every = 1  # the action tokens come from each call's generation
    cfg.validate()
    return policy, default_out(model).name, model


def _setup(config: SimEvalConfig, policy, name: str) -> dict:
    """What makes results comparable: resumed records must have the same."""
    cfg = None if _is_expert(policy) else policy.config
    return {"policy": name, "robot": config.robot,
            "action_source": getattr(cfg, "action_source", "head"),
            "reasoning_every": getattr(cfg, "reasoning_every", 0),
            "latency": (f"fixed {config.fixed_latency:g} s" if config.fixed_latency is not None
                        else f"measured x {config.latency_scale:g}"),
            "episode_seconds": config.episode_seconds, "camera_rate": config.camera_rate,
            **({"max_rate": config.max_rate} if config.max_rate else {}),  # old results resume
            "image_size": list(config.image_size) if config.image_size else None,
            "executor": dict(config.executor)}


def write_summary(out: Path, records: list[dict], extra: dict, console=None) -> dict:
    """summary.json + report.png for ``records`` (report.py's figures plus ``extra``)."""
    from roboalign_ros.evaluation.report import plot_summary, render_table, summarize

    summary = {**summarize(records), **extra}
    summary["refusals"] = {
        "chunks_refused": sum(r.get("chunks", {}).get("refused", 0) for r in records),
        "sim_rejected_commands": sum(r.get("sim", {}).get("rejected", 0) for r in records),
        "chunks_dropped": sum(r.get("inference", {}).get("dropped", 0) for r in records)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if records:
        plot_summary(summary, out / "report.png")
        if console is not False:
            render_table(summary, console)
    return summary


class _Episodes:
    """Runs episodes in this process or in ``workers`` spawned ones, yielding their records.

    With workers each process loads the model and its own sim once; episodes go to whichever
    is free, so records arrive in completion order (each names its task, seed and trial).
    """

    def __init__(self, policy, config: SimEvalConfig, path: str, name: str, setup: dict,
                 seeds: list[int], workers: int):
        self.setup, self.seeds, self.pool, self.evaluator = setup, seeds, None, None
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(workers, mp.get_context("spawn"), _worker_init,
                                            (path, dataclasses.replace(config, progress=False,
                                                                       workers=1), name))
        else:
            self.evaluator = SimEvaluator(policy, config, path, name)

    def run(self, todo):
        """``(task, record)`` of every ``(index, (task, seed))`` job."""
        args = [(task, seed, i + 1, self.seeds.index(seed), self.setup) for i, (task, seed) in todo]
        if self.pool is None:
            for a in args:
                yield a[0], self.evaluator.record(*a)
            return
        from concurrent.futures import as_completed

        futures = {self.pool.submit(_worker_record, *a): a[0] for a in args}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.evaluator is not None:
            self.evaluator.close()


_WORKER: SimEvaluator | None = None


def _worker_init(path: str, config: SimEvalConfig, name: str) -> None:
    global _WORKER
    policy = load_model(path, config)[0]
    _WORKER = SimEvaluator(policy, config, path, name)


def _worker_record(task: str, seed: int, trial: int, task_trial: int, setup: dict) -> dict:
    return _WORKER.record(task, seed, trial, task_trial, setup)


def evaluate(model, tasks: str | Sequence[str], seeds: str | Iterable[int],
             out: str | os.PathLike | None = None, config: SimEvalConfig | None = None,
             console=None, **options) -> EvalResults:
    """Evaluate ``model`` on every task x seed in the sim; returns the results.

    ``model``: checkpoint directory, 'tiny', 'expert' (the scripted expert's plan replayed
    through the loop) or a policy object (``config``, ``predict``, optional ``reset``).
    ``tasks``: names or 'T1,T2' or 'all'; ``seeds``: ints or '100000-100049,7'. ``options``
    are :class:`SimEvalConfig` fields. Episodes already in ``out/results.jsonl`` are skipped;
    a KeyboardInterrupt stops after writing the summary of what finished, then propagates.
    """
    from tqdm import tqdm

    config = dataclasses.replace(config or SimEvalConfig(), **options)
    tasks = parse_tasks(tasks)
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    policy, name, path = load_model(model, config)
    out = Path(out).expanduser() if out else default_out(model)
    setup = _setup(config, policy, name)
    store = ResultsStore(out)
    for r in store.records:
        if r.get("setup") != setup:
            raise ValueError(f"out: {out} holds results of another setup ({r.get('setup')}, "
                             f"now {setup}); give another --out")
    jobs = [(task, seed) for task in tasks for seed in seeds]
    done = {(r["task"], r["seed"]) for r in store.records if r["outcome"] in COUNTED}
    todo = [(i, job) for i, job in enumerate(jobs) if job not in done]
    wall0, sim_seconds, ran = time.perf_counter(), 0.0, 0
    workers = min(config.workers, max(len(todo), 1))
    if workers > 1 and not path:
        raise ValueError("workers: > 1 needs a checkpoint directory, 'tiny' or 'expert' (each "
                         "process loads its own copy)")
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"eval {name}",
               unit="ep", disable=not config.progress, dynamic_ncols=True)
    runner = _Episodes(policy, config, path, name, setup, seeds, workers)
    try:
        for task, record in runner.run(todo):
            store.append(record)  # on disk before the next one is taken
            ran, sim_seconds = ran + 1, sim_seconds + record["sim_seconds"]
            wins = sum(r["outcome"] == "success" for r in store.records)
            bar.update(1)
            bar.set_postfix(task=task, success=f"{wins}/{len(store.records)}")
    finally:
        bar.close()
        runner.close()
        wall = time.perf_counter() - wall0
        wanted = set(jobs)
        records = [r for r in store.records if (r["task"], r["seed"]) in wanted]
        speed = {"episodes_run": ran, "wall_seconds": round(wall, 2),
                 "sim_seconds": round(sim_seconds, 2),
                 "episodes_per_minute": round(60.0 * ran / max(wall, 1e-9), 2),
                 "sim_per_wall": round(sim_seconds / max(wall, 1e-9), 2)}
        summary = write_summary(out, records, {"setup": setup, "speed": speed}, console)
    return EvalResults(out, records, summary, ran, wall, sim_seconds)
