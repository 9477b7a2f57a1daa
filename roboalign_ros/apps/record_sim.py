"""``roboalign record sim``: scripted-expert demos recorded through the ROS graph.

The sim (``sim_node``) runs in this process; ``recorder_node`` runs as a subprocess, exactly
as it would next to a real arm. Per episode: reset the sim via ``/sim_node/reset_task``
(seed = episode index), start an episode via ``/recorder_node/start_episode``, let the scripted
expert (which needs the object poses only the sim knows) compute joint targets from the sim's
state and send them as ``JointTrajectory`` / gripper commands on the real topics (so the
recorder sees commanded actions on the graph as with teleop), then stop and save with the
outcome of ``/roboalign/task_status``. The sim runs in real time: an episode takes its real
duration (5-12 s). Exit status 0 when every episode succeeded, 1 otherwise.

    roboalign record sim --task pick_red_cube --episodes 3 --root datasets/demo

rclpy is imported inside the functions: importing this module needs no ROS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "datasets/sim_expert"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign record sim``; ``func`` records."""
    ap.add_argument("--task", action="append", default=None,
                    help="task name (repeatable; 'all' = every registered task)")
    ap.add_argument("--episodes", "-n", type=int, default=3, help="episodes per task")
    ap.add_argument("--first-seed", type=int, default=0, help="seed of the first episode")
    ap.add_argument("--root", default=DEFAULT_ROOT,
                    help="dataset directory (appended if it exists)")
    ap.add_argument("--robot", default="sim_arm")
    ap.add_argument("--width", type=int, default=128, help="camera width (px)")
    ap.add_argument("--height", type=int, default=128, help="camera height (px)")
    ap.add_argument("--fps", type=int, default=15, help="dataset fps")
    ap.add_argument("--camera-rate", type=float, default=0.0,
                    help="sim camera Hz (default 2 x fps: a late render still has a neighbour "
                         "within max skew)")
    ap.add_argument("--max-skew", type=float, default=0.05)
    ap.add_argument("--discard-failures", action="store_true",
                    help="discard episodes the expert failed (default: save, outcome=failure)")
    ap.add_argument("--settle", type=float, default=0.5, help="s recorded after the expert ends")
    ap.add_argument("--operator", default="scripted_expert")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.set_defaults(func=run_cli)


def _checked(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the default camera rate filled in; ValueError naming a bad option."""
    if args.episodes < 1:
        raise ValueError("--episodes: must be >= 1")
    if args.fps < 1 or args.fps > 60:
        raise ValueError("--fps: must be in [1, 60]")
    args.camera_rate = args.camera_rate or min(60.0, 2.0 * args.fps)
    if not args.fps <= args.camera_rate <= 60:
        raise ValueError("--camera-rate: must be in [fps, 60]")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options, checked (exit 2 on a bad one)."""
    ap = argparse.ArgumentParser(prog="roboalign record sim", description=__doc__.splitlines()[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return _checked(args)
    except ValueError as exc:
        ap.error(str(exc))


def _wait(future, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no answer within {timeout} s")
        time.sleep(0.005)
    return future.result()


class _Driver:
    """The expert's side of the graph: commands, services, task status (rclpy node)."""

    def __init__(self, context, robot, recorder: str = "/recorder_node"):
        from rclpy.node import Node
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        from roboalign_ros.msg import RecorderStatus, TaskStatus
        from roboalign_ros.nodes.common import COMMAND_QOS, LATCHED_QOS
        from roboalign_ros.srv import ResetTask, StartEpisode, StopEpisode

        self.robot = robot
        self.node = Node("sim_demo_driver", context=context)
        self.traj_pub = self.node.create_publisher(JointTrajectory, robot.trajectory_topic,
                                                   COMMAND_QOS)
        self.grip_pub = self.node.create_publisher(Float64MultiArray, robot.gripper_topic,
                                                   COMMAND_QOS)
        self.reset_client = self.node.create_client(ResetTask, "/sim_node/reset_task")
        self.start_client = self.node.create_client(StartEpisode, f"{recorder}/start_episode")
        self.stop_client = self.node.create_client(StopEpisode, f"{recorder}/stop_episode")
        self.task_status = None
        self.recorder_status = None
        self.node.create_subscription(TaskStatus, "/roboalign/task_status",
                                      lambda m: setattr(self, "task_status", m), 10)
        self.node.create_subscription(RecorderStatus, "/roboalign/recorder_status",
                                      lambda m: setattr(self, "recorder_status", m), LATCHED_QOS)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the sim and recorder services and the recorder's command subscriptions."""
        deadline = time.monotonic() + timeout
        for client in (self.reset_client, self.start_client, self.stop_client):
            if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                raise TimeoutError(f"service {client.srv_name} did not come up")
        while time.monotonic() < deadline:  # sim + recorder both subscribed to the commands
            if (self.traj_pub.get_subscription_count() >= 2
                    and self.grip_pub.get_subscription_count() >= 2
                    and self.recorder_status is not None):
                return
            time.sleep(0.05)
        raise TimeoutError("recorder_node did not subscribe to the command topics")

    def send(self, q: np.ndarray, lead: float) -> None:
        """One-point trajectory to ``q`` reached ``lead`` s from now (JTC semantics)."""
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        from roboalign_ros.conversions import seconds_to_duration

        point = JointTrajectoryPoint(positions=[float(v) for v in q])
        seconds_to_duration(lead, point.time_from_start)
        self.traj_pub.publish(JointTrajectory(joint_names=list(self.robot.arm_joints),
                                              points=[point]))

    def gripper(self, opening: float) -> None:
        """Gripper opening command, in the controller's units (the finger joint's position)."""
        from std_msgs.msg import Float64MultiArray

        self.grip_pub.publish(Float64MultiArray(data=[self.robot.gripper_to_joint(opening)]))

    def reset(self, task: str, seed: int) -> str:
        """Reset the sim; return the instruction."""
        from roboalign_ros.srv import ResetTask

        r = _wait(self.reset_client.call_async(ResetTask.Request(task=task, seed=seed)), 30,
                  "reset_task")
        if not r.success:
            raise RuntimeError(f"reset_task refused {task!r}: {r.message}")
        return r.instruction

    def start(self, task: str, operator: str):
        """StartEpisode (source expert)."""
        from roboalign_ros.srv import StartEpisode

        return _wait(self.start_client.call_async(StartEpisode.Request(
            task=task, operator_name=operator, source="expert")), 30, "start_episode")

    def stop(self, save: bool, success: bool):
        """StopEpisode with the outcome."""
        from roboalign_ros.srv import StopEpisode

        outcome = StopEpisode.Request.OUTCOME_SUCCESS if success else \
            StopEpisode.Request.OUTCOME_FAILURE
        return _wait(self.stop_client.call_async(StopEpisode.Request(
            save=save, outcome=outcome, notes="scripted expert")), 120, "stop_episode")


def run_expert_episode(server, expert, driver: _Driver, settle: float,
                       on_first_command=None) -> float:
    """Drive one episode in sim time: one expert step per physics step; return its end time.

    The expert reads the sim state under the server lock; its targets go out as trajectory
    commands with a lead long enough for the controller's velocity limits.
    """
    env, robot = server.env, server.robot
    dt = env.control_period
    vmax = 0.8 * np.asarray(robot.velocity, float)
    limit = env.task.episode_seconds
    last_t, g_last, end = None, None, None
    while True:
        with server.lock:
            t = env.time
            steps = 1 if last_t is None else int(round((t - last_t) / dt))
            if steps > 0:
                for _ in range(min(steps, 10)):
                    q, g = expert.act()
                lead = max(2 * dt, float(np.max(np.abs(q - env.q_target) / vmax)))
                last_t = t
        if steps > 0:
            driver.send(q, lead)
            if g != g_last:
                driver.gripper(g)
                g_last = g
            if on_first_command is not None:
                on_first_command()
                on_first_command = None
            if end is None and (expert.done or t >= limit):
                end = t + (settle if expert.done else 0.0)
            if end is not None and t >= end:
                return t
        time.sleep(dt / 4)


def hold_still(server, driver: _Driver, seconds: float = 0.2) -> None:
    """Command the current pose and gripper for a moment (fresh commands before recording)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with server.lock:
            q, g = server.env.arm_q(), server.env.gripper_target
        driver.send(q, 2 * server.control_period)
        driver.gripper(g)
        time.sleep(0.05)


def _recorder_process(args, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "roboalign_ros.nodes.recorder_node", "--ros-args",
           "-p", f"robot:={args.robot}", "-p", f"dataset_root:={Path(args.root).resolve()}",
           "-p", f"fps:={args.fps}", "-p", f"max_skew:={args.max_skew}",
           "-p", "action_source:=joint_trajectory", "-p", "status_rate:=5.0"]
    out = open(log, "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())


def main(argv: list[str] | None = None) -> int:
    """Record scripted-expert demos of sim tasks through sim_node + recorder_node."""
    return run_cli(parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """``roboalign record sim`` with parsed options."""
    try:
        _checked(args)
    except ValueError as exc:
        print(f"roboalign record sim: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from tqdm import tqdm

    from roboalign_ros.nodes.sim_node import SimNode
    from roboalign_ros.sim import TASKS
    from roboalign_ros.sim.expert import ScriptedExpert

    tasks = args.task or ["pick_red_cube"]
    if "all" in tasks:
        tasks = sorted(TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"--task: unknown {unknown}; known: {sorted(TASKS)}", file=sys.stderr)
        return 2
    root = Path(args.root)
    root.parent.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.gettempdir()) / f"roboalign_record_{root.name}_{os.getpid()}.log"
    recorder = _recorder_process(args, log)

    context = rclpy.Context()
    rclpy.init(context=context)
    sim = driver = executor = None
    results: list[tuple[str, int, bool, int]] = []
    try:
        sim = SimNode(context=context, parameter_overrides=[
            Parameter("robot", value=args.robot), Parameter("task", value=tasks[0]),
            Parameter("camera.width", value=args.width),
            Parameter("camera.height", value=args.height),
            Parameter("camera.rate", value=float(args.camera_rate)),
            Parameter("camera.depth", value=False)])
        driver = _Driver(context, sim.server.robot)
        executor = SingleThreadedExecutor(context=context)  # see nodes/common.run_node
        executor.add_node(sim)
        executor.add_node(driver.node)
        threading.Thread(target=executor.spin, daemon=True).start()
        driver.wait_ready()
        expert = ScriptedExpert(sim.server.env)
        plan = [(task, args.first_seed + i) for task in tasks for i in range(args.episodes)]
        bar = tqdm(plan, desc="expert demos", unit="ep", disable=args.quiet)
        for task, seed in bar:
            if recorder.poll() is not None:
                raise RuntimeError(f"recorder_node exited ({recorder.returncode}); see {log}")
            instruction = driver.reset(task, seed)
            expert.reset()
            hold_still(sim.server, driver)
            started = {}

            def start_recording(instruction=instruction, started=started):
                r = driver.start(instruction, args.operator)
                if not r.success:
                    raise RuntimeError(f"start_episode failed: {r.message}")
                started["index"] = r.episode_index

            t_end = run_expert_episode(sim.server, expert, driver, args.settle, start_recording)
            deadline = time.monotonic() + 5.0  # a task status from after the episode's end
            while (driver.task_status is None or driver.task_status.elapsed < t_end
                   or driver.task_status.seed != seed) and time.monotonic() < deadline:
                time.sleep(0.01)
            success = bool(driver.task_status and driver.task_status.success)
            save = success or not args.discard_failures
            r = driver.stop(save, success)
            if not r.success:
                raise RuntimeError(f"stop_episode failed: {r.message}")
            results.append((task, seed, success, r.frames))
            ok = sum(s for _, _, s, _ in results)
            bar.set_postfix(task=task, success=f"{ok}/{len(results)}", frames=r.frames)
        bar.close()
    finally:
        if executor is not None:
            executor.shutdown()
        for node in (sim, driver.node if driver else None):
            if node is not None:
                if hasattr(node, "close"):
                    node.close()
                node.destroy_node()
        context.try_shutdown()
        recorder.terminate()
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
    for task in tasks:
        mine = [r for r in results if r[0] == task]
        if mine:
            print(f"{task:32s} {sum(r[2] for r in mine)}/{len(mine)} successful, frames "
                  f"{[r[3] for r in mine]}")
    print(f"dataset: {root.resolve()} (recorder log: {log})")
    return 0 if results and all(r[2] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
