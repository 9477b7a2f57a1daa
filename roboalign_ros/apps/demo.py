"""The main job: the simulated closed loop, sim -> policy -> executor -> sim, on a CPU.

``roboalign demo`` starts the three nodes as separate processes with the package's parameter
files (what ``ros2 launch roboalign_ros sim.launch.py`` starts), watches the graph from a
monitor node, prints what happens (chunk rate, latency, reasoning, commands, task status) and
stops by itself after ``--duration`` seconds or when the task succeeds.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from roboalign_ros.apps.node_processes import NodeProcesses

# What `make demo` runs: the shipped policy (models/, with its provenance) on a pick, a push
# and a place, one held-out seed each (evaluation seeds start at 100000).
DEMO_MODEL = "models/roboalign_mini_sim"
DEMO_TASKS = ("pick_red_cube", "push_green_block_left", "place_red_cube_in_bowl")
# A held-out evaluation seed (never trained on) whose layout the shipped policy solves for all
# three tasks in the headless evaluation. It solves 92 / 60 / 80 % of such seeds (README), so
# `--seed` with another value can and will fail some tasks.
DEMO_SEED = 100005


@dataclass
class LoopStats:
    """What the monitor saw (also the closed-loop benchmark's figures)."""

    chunk_times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    observation_ages: list[float] = field(default_factory=list)
    commands: int = 0
    command_times: deque = field(default_factory=lambda: deque(maxlen=500))
    # every trajectory executor_node sent: (is a stop, its first point's positions, its stamp);
    # a stop brakes from where the reference is to rest (2 points), a track is 1 or 3 points
    command_points: list[tuple[bool, np.ndarray, float]] = field(default_factory=list)
    reasoning: str = ""
    status: str = ""
    success: bool = False
    instruction: str = ""
    q_first: np.ndarray | None = None
    q_last: np.ndarray | None = None
    limit_violations: int = 0
    first_chunk_at: float | None = None
    results: list[tuple[str, int, bool, float]] = field(default_factory=list)  # task, seed, ok, s
    reset_at: float = 0.0  # ROS time of the last reset_task (older task status is ignored)

    def chunk_rate(self, window: float = 10.0) -> float:
        """Chunks per second over the last ``window`` seconds."""
        if len(self.chunk_times) < 2:
            return 0.0
        t = np.asarray(self.chunk_times)
        t = t[t >= t[-1] - window]
        return (len(t) - 1) / (t[-1] - t[0]) if t[-1] > t[0] else 0.0


def run_closed_loop(duration: float, task: str, seed: int, model: str, device: str,
                    camera_size: tuple[int, int], camera_rate: float, log_dir: str,
                    stop_on_success: bool = True, quiet: bool = False,
                    reasoning_every: int = 5, then: list[tuple[str, int]] = (),
                    server: str = "") -> LoopStats:
    """Run sim + policy + executor for ``duration`` s and return what the monitor measured.

    ``then``: more ``(task, seed)`` episodes after the first, each started with the sim's
    ``reset_task`` once the previous one succeeded or ran out of ``duration``; every episode's
    outcome (the sim's success check) lands in ``LoopStats.results``. ``server``: policy_node
    uses the policy a ``roboalign serve`` serves there (``inference: remote``), not ``model``.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rich.console import Console
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from roboalign_ros.conversions import JointStateMapper, action_chunk_to_numpy
    from roboalign_ros.msg import ActionChunk, PolicyStatus, Reasoning, TaskStatus
    from roboalign_ros.nodes.common import SENSOR_QOS
    from roboalign_ros.robot import load_robot_config

    console = Console(quiet=quiet, highlight=False)
    robot = load_robot_config("sim_arm")
    nodes = NodeProcesses(log_dir)
    nodes.start("sim_node", "sim.yaml", {"task": task, "seed": seed,
                                         "camera.width": camera_size[0],
                                         "camera.height": camera_size[1],
                                         "camera.rate": camera_rate})
    nodes.start("executor_node", "executor.yaml", {"servo.manage": False})  # sim: no Servo
    nodes.start("policy_node", "policy.yaml",
                {"model_path": model, "device": device, "reasoning_every": reasoning_every,
                 "torch_threads": 1 if device == "cpu" else 0,
                 **({"inference": "remote", "server": server} if server else {})})
    stats = LoopStats()
    state_names = {v: k[len("STATE_"):].lower() for k, v in vars(PolicyStatus).items()
                   if k.startswith("STATE_")}
    rclpy.init()
    node = Node("roboalign_demo_monitor")
    arm_positions = JointStateMapper(robot, with_gripper=False)

    def on_chunk(msg):
        now = node.get_clock().now().nanoseconds * 1e-9
        fields = action_chunk_to_numpy(msg)
        stats.chunk_times.append(time.monotonic())
        stats.latencies.append(fields.inference_time)
        stats.observation_ages.append(now - fields.stamp)
        if stats.first_chunk_at is None:
            stats.first_chunk_at = time.monotonic()
            console.print(f"[green]first chunk[/] {fields.actions.shape[0]}x"
                          f"{fields.actions.shape[1]} {fields.action_space}, inference "
                          f"{fields.inference_time * 1e3:.0f} ms")

    def on_joint_state(msg):
        q = arm_positions(msg)
        if stats.q_first is None:
            stats.q_first = q
        stats.q_last = q
        stats.limit_violations += int(np.any(q < robot.lower - 1e-3) or
                                      np.any(q > robot.upper + 1e-3))

    def on_command(msg):
        stats.commands += 1
        stats.command_times.append(time.monotonic())
        if msg.points:
            stats.command_points.append((len(msg.points) == 2, np.array(msg.points[0].positions),
                                         msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    def on_reasoning(msg):
        stats.reasoning = msg.text
        from rich.markup import escape

        # legible text, one line per ReFineVLA section; the repr only for unprintable noise
        printable = msg.text.replace("\n", "").isprintable()
        text = msg.text[:400] if printable else repr(msg.text[:160])
        took = msg.generation_time.sec + msg.generation_time.nanosec * 1e-9
        console.print(f"[magenta]reasoning #{msg.sequence}[/] ({took:.1f} s) {escape(text)}")

    def on_status(msg):
        text = f"{state_names.get(msg.state, msg.state)}: {msg.message}"
        if text != stats.status:
            console.print(f"[cyan]policy[/] {text}")
        stats.status = text

    def on_task(msg):
        from roboalign_ros.conversions import stamp_to_seconds

        if stamp_to_seconds(msg.header.stamp) < stats.reset_at:
            return  # published before the last reset: about the previous episode
        stats.instruction, stats.success = msg.instruction, msg.success

    node.create_subscription(ActionChunk, "/roboalign/action_chunk", on_chunk, 10)
    node.create_subscription(JointState, "/joint_states", on_joint_state, SENSOR_QOS)
    node.create_subscription(JointTrajectory, robot.trajectory_topic, on_command, 50)
    node.create_subscription(Reasoning, "/roboalign/reasoning", on_reasoning, 10)
    node.create_subscription(PolicyStatus, "/roboalign/status", on_status, 10)
    node.create_subscription(TaskStatus, "/roboalign/task_status", on_task, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    console.print(f"[bold]roboalign demo[/]: sim + policy ({model}) + executor for "
                  f"{duration:.0f} s; logs in {log_dir}")
    from roboalign_ros.srv import ResetTask

    reset = node.create_client(ResetTask, "/sim_node/reset_task")
    episodes = [(task, seed), *then]
    start, next_report = time.monotonic(), time.monotonic() + 5.0
    episode_start = None  # from the first chunk: the model may take a while to load

    def next_episode() -> bool:
        """Reset the sim to the next episode; False when none is left."""
        if len(stats.results) >= len(episodes):
            return False
        name, s = episodes[len(stats.results)]
        # a request sent before the client has matched the sim's service is lost
        deadline = time.monotonic() + 10.0
        while not reset.service_is_ready() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        future = reset.call_async(ResetTask.Request(task=name, seed=int(s)))
        while not future.done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        reply = future.result() if future.done() else None
        if reply is None or not reply.success:
            raise RuntimeError(f"reset_task {name} seed {s} failed: "
                               f"{reply.message if reply else 'no answer in 10 s'}")
        stats.success = False
        stats.reset_at = node.get_clock().now().nanoseconds * 1e-9
        console.print(f"[bold]episode {len(stats.results) + 1}/{len(episodes)}[/]: "
                      f"'{reply.instruction}' (seed {s})")
        return True

    try:
        while True:
            executor.spin_once(timeout_sec=0.05)
            now = time.monotonic()
            if nodes.exited():
                console.print(f"[red]node exited early: {nodes.exited()}[/] (see {log_dir})")
                break
            if episode_start is None and stats.first_chunk_at is not None:
                episode_start = now
                if then:  # a clean start for the first of several episodes
                    next_episode()
            if now >= next_report:
                next_report += 5.0
                cmd_t = stats.command_times
                cmd_rate = ((len(cmd_t) - 1) / (cmd_t[-1] - cmd_t[0])
                            if len(cmd_t) > 1 and cmd_t[-1] > cmd_t[0] else 0.0)
                moved = (0.0 if stats.q_first is None
                         else float(np.max(np.abs(stats.q_last - stats.q_first))))
                lat = np.median(stats.latencies[-20:]) * 1e3 if stats.latencies else 0.0
                console.print(
                    f"t={now - start:5.1f}s  chunks {len(stats.chunk_times):3d} "
                    f"({stats.chunk_rate():.2f}/s, latency p50 {lat:.0f} ms)  commands "
                    f"{stats.commands} ({cmd_rate:.0f}/s)  arm moved {moved:.3f} rad  "
                    f"task '{stats.instruction}' success={stats.success}")
            timed_out = (now - episode_start > duration if episode_start is not None
                         else now - start > duration + 120.0)
            if (stop_on_success and stats.success) or timed_out:
                name, s = episodes[len(stats.results)]
                took = now - (episode_start or start)
                stats.results.append((name, s, bool(stats.success), took))
                verdict = "[bold green]succeeded[/]" if stats.success else "[red]failed[/]"
                console.print(f"task {name} (seed {s}) {verdict} after {took:.1f} s "
                              "(the sim's success check)")
                if not then or not next_episode():
                    break
                episode_start = time.monotonic()
    finally:
        nodes.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return stats


def _summary(stats: LoopStats) -> str:
    lat = np.asarray(stats.latencies) * 1e3
    age = np.asarray(stats.observation_ages) * 1e3
    moved = 0.0 if stats.q_first is None else float(np.max(np.abs(stats.q_last -
                                                                  stats.q_first)))
    lines = [
        f"chunks published      {len(stats.chunk_times)}",
        f"closed-loop chunk rate {stats.chunk_rate(1e9):.2f} chunks/s",
        f"policy latency        p50 {np.percentile(lat, 50):.0f} ms, p90 "
        f"{np.percentile(lat, 90):.0f} ms" if lat.size else "policy latency        -",
        f"observation age at executor  p50 {np.percentile(age, 50):.0f} ms" if age.size else "",
        f"trajectory commands   {stats.commands}",
        f"arm moved (max joint) {moved:.3f} rad",
        f"joint limit violations {stats.limit_violations}",
        f"task success          {stats.success} ('{stats.instruction}')",
    ]
    return "\n".join(line for line in lines if line)


def add_arguments(p: argparse.ArgumentParser, duration: float = 15.0) -> None:
    """The options of ``roboalign demo``; ``func`` runs the demo."""
    p.add_argument("--duration", type=float, default=duration, help="seconds (default %(default)s)")
    p.add_argument("--task", default=None, help="one task (default: the demo's three)")
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--model", default=None,
                   help="checkpoint dir or 'tiny' (random policy); default: the shipped trained "
                        f"policy ({DEMO_MODEL}) if present, else tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--server", default="", metavar="HOST:PORT",
                   help="run policy_node with inference remote on this roboalign serve server")
    # the shipped policy was trained on 224x168 frames at 15 fps (the bulk recorder's)
    p.add_argument("--camera-size", type=int, nargs=2, default=(224, 168), metavar=("W", "H"))
    p.add_argument("--camera-rate", type=float, default=15.0)
    p.add_argument("--reasoning-every", type=int, default=5,
                   help="reason every N chunks (0 = off, -1 = the checkpoint's setting)")
    p.add_argument("--log-dir", default="log/demo")
    p.set_defaults(func=run_cli)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``roboalign bench closed-loop`` (the demo's, a longer run)."""
    add_arguments(p, duration=60.0)
    p.set_defaults(func=run_bench_cli)


def _parse(add, prog: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add(p)
    return p.parse_args(argv)


def default_model() -> str:
    """The shipped trained policy when this checkout has it, else the tiny random one."""
    from roboalign_ros.robot import package_path

    path = package_path(*DEMO_MODEL.split("/"))
    return str(path) if (path / "vla_config.json").is_file() else "tiny"


def main(argv: list[str] | None = None) -> int:
    """``roboalign demo``: the closed loop on a pick, a push and a place; what happens, printed."""
    return run_cli(_parse(add_arguments, "roboalign demo", argv))


def run_cli(a: argparse.Namespace) -> int:
    """``roboalign demo`` with parsed options."""
    model = a.model or default_model()
    tasks = [a.task] if a.task else list(DEMO_TASKS)
    stats = run_closed_loop(a.duration, tasks[0], a.seed, model, a.device,
                            tuple(a.camera_size), a.camera_rate, a.log_dir,
                            reasoning_every=a.reasoning_every,
                            then=[(t, a.seed) for t in tasks[1:]], server=a.server)
    print("\n" + _summary(stats))
    for task, seed, ok, took in stats.results:
        print(f"  {task:28s} seed {seed}: {'SUCCESS' if ok else 'failure'} ({took:.1f} s)")
    ok = len(stats.chunk_times) > 0 and stats.commands > 0 and stats.limit_violations == 0
    if not ok:
        print(f"the loop did not close (no chunks or no commands): see {a.log_dir}/*.log")
    return 0 if ok else 1


def bench_main(argv: list[str] | None = None) -> int:
    """``roboalign bench closed-loop``: chunk rate and latency of the loop on this machine."""
    return run_bench_cli(_parse(add_bench_arguments, "roboalign bench closed-loop", argv))


def run_bench_cli(a: argparse.Namespace) -> int:
    """``roboalign bench closed-loop`` with parsed options."""
    stats = run_closed_loop(a.duration, a.task or DEMO_TASKS[0], a.seed, a.model or "tiny",
                            a.device,
                            tuple(a.camera_size), a.camera_rate, a.log_dir,
                            stop_on_success=False, quiet=True,
                            reasoning_every=a.reasoning_every)
    print(f"closed loop, {a.duration:.0f} s, model {a.model} on {a.device}, camera "
          f"{a.camera_size[0]}x{a.camera_size[1]} @ {a.camera_rate} Hz, {os.cpu_count()} cores")
    print(_summary(stats))
    return 0
