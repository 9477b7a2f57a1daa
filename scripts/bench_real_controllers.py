#!/usr/bin/env python3
"""Benchmark executor_node against the REAL ros2_control (controller_manager + JTC, mock hardware).

Needs a ros2_control installation (a sourced ROS 2, or ../shared/vendor/ros2_control_kilted:
``make bench-controllers`` sources it). For each hardware variant (``exact``: state = command;
``lagging``: velocity commands through the JTC's PID, the state trails) it prints:

1. e-stop while streaming joint1 at ~1 rad/s: the distance the reference travels after the
   e-stop is published, and the time from publishing to zero reference velocity;
2. e-stop 1 s into a ``~/go_home`` move from home + 0.8 rad: the same two figures, and whether
   the arm reached home anyway;
3. ``--seconds`` of a chunk stream recorded from the shipped policy in the sim (replayed at its
   own timing): controller periods whose reference velocity changes by more than
   ``acc_max * dt``, and the largest velocity jump (rad/s^2) at a message seam;
4. gripper opening 0.5 -> the finger's position (m);
5. "Empty trajectory received" in the controller's log (count);
6. e-stop latency while 10^6-dimension chunks and a 1000 chunks/s flood arrive: p50/p99 from
   publishing the e-stop to the stop arriving on the controller's topic (DDS both ways), the
   executor's own reaction (its DDS reader to the stop published, from its log), and the
   commands it sent after its stop.

    python scripts/bench_real_controllers.py [--variant exact|lagging|both] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Session:
    """The real controllers + executor_node (own process) + a probe, for one variant."""

    def __init__(self, variant: str, log_dir: Path, executor_params: dict | None = None,
                 arm: dict | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        from roboalign_ros.apps.node_processes import NodeProcesses
        from roboalign_ros.apps.ros2_control_rig import Probe, Ros2ControlRig, find_ros2_control
        from roboalign_ros.robot import load_robot_config

        install = find_ros2_control()
        if install is None:
            raise SystemExit("no ros2_control installation found (source ROS 2 or set "
                             "ROBOALIGN_ROS2_CONTROL)")
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("bench_real_controllers", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.robot = load_robot_config("sim_arm")
        self.rig = Ros2ControlRig(self.node, install, log_dir, variant, arm)
        try:
            self.rig.activate(self.executor)
        except BaseException:
            self.rig.stop()
            raise
        self.probe = Probe(self.node, self.robot)
        from trajectory_msgs.msg import JointTrajectory

        from roboalign_ros.nodes.common import COMMAND_QOS

        self.traj_pub = self.node.create_publisher(JointTrajectory, self.robot.trajectory_topic,
                                                   COMMAND_QOS)
        self.spin_until(lambda: self.probe.arm() is not None, 30, "no /joint_states")
        self.move(self.robot.home, 2.0)  # the mock starts at zeros: outside the workspace box
        self.nodes = NodeProcesses(log_dir / variant)
        self.nodes.start("executor_node", "executor.yaml", executor_params)
        self.executor_log = log_dir / variant / "executor_node.log"
        p = self.probe
        self.spin_until(lambda: p.chunk_pub.get_subscription_count() > 0
                        and p.estop_pub.get_subscription_count() > 0
                        and p.home_client.service_is_ready(), 60, "executor_node not up")
        p.wait_executor_holding(self.executor, 30)

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.002)

    def spin_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} (after {timeout} s); controller log:\n"
                                   f"{self.rig.log()[-1500:]}")
            self.executor.spin_once(timeout_sec=0.01)

    def move(self, q, seconds: float) -> None:
        """Straight to ``q`` at rest in ``seconds`` (a trajectory to the JTC), and wait."""
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        from roboalign_ros.conversions import seconds_to_duration

        point = JointTrajectoryPoint(positions=[float(x) for x in q],
                                     velocities=[0.0] * len(q),
                                     time_from_start=seconds_to_duration(seconds))
        self.traj_pub.publish(JointTrajectory(joint_names=list(self.robot.arm_joints),
                                              points=[point]))
        self.spin(seconds + 0.5)

    def reference_since(self, t0: float):
        """(stamps, q, qd) of the controller's reference from ``t0`` on."""
        rows = [r for r in self.probe.reference if r[0] >= t0]
        return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                np.array([r[2] for r in rows]))

    def close(self) -> None:
        self.nodes.stop()
        self.rig.stop()
        self.node.destroy_node()
        self.context.try_shutdown()


def stop_figures(s: Session, t_estop: float, joint: int = 0) -> dict:
    """Distance the reference travels after ``t_estop`` and the time to zero velocity."""
    s.spin(1.5)
    t, q, qd = s.reference_since(t_estop - 0.05)
    if not len(t):
        raise RuntimeError("no controller_state reference recorded")
    q_at = np.interp(t_estop, t, q[:, joint])
    speed = np.abs(qd[:, joint])
    after = t >= t_estop
    still = np.nonzero(after & (speed < 1e-3))[0]
    stopped_at = t[still[0]] if len(still) else float("nan")
    return {"speed_at_estop_rad_s": float(np.interp(t_estop, t, speed)),
            "travel_after_estop_rad": float(abs(q[-1, joint] - q_at)),
            "time_to_zero_velocity_s": float(stopped_at - t_estop),
            "peak_deceleration_rad_s2": float(np.max(np.abs(np.diff(qd[after, joint]) /
                                                            np.diff(t[after])))
                                             if after.sum() > 2 else float("nan"))}


def estop_while_streaming(s: Session) -> dict:
    """Stream joint1 at ~1 rad/s (chunks every 0.1 s) from home - 0.5 rad, e-stop at 0.8 s."""
    s.move(s.robot.home - [0.5, 0, 0, 0, 0, 0], 2.0)
    p, start = s.probe, s.probe.arm().copy()
    speed, t0 = 1.0, p.now()
    t_estop = None
    while True:
        now = p.now()
        if now - t0 > 0.8:
            t_estop = p.estop(True)
            break
        rows = np.array([np.append(start + [speed * (now - t0 + 0.1 * i), 0, 0, 0, 0, 0], 1.0)
                         for i in range(20)])
        p.chunk(rows, dt=0.1, stamp=now)
        s.spin(0.1)
    figures = stop_figures(s, t_estop)
    p.estop(False)
    s.spin(0.5)
    s.move(s.robot.home, 3.0)
    return figures


def estop_during_homing(s: Session) -> dict:
    """From home + 0.8 rad on joint1, ``~/go_home``, e-stop 1 s later."""
    home = s.robot.home
    s.move(home + [0.8, 0, 0, 0, 0, 0], 3.0)
    future = s.probe.go_home()
    s.spin_until(future.done, 10, "go_home did not answer")
    s.spin(1.0)
    t_estop = s.probe.estop(True)
    figures = stop_figures(s, t_estop)
    s.spin(2.0)
    figures["home_answer"] = future.result().message
    figures["reached_home"] = bool(abs(s.probe.arm()[0] - home[0]) < 0.01)
    figures["distance_from_home_rad"] = float(abs(s.probe.arm()[0] - home[0]))
    s.probe.estop(False)
    s.spin(0.5)
    s.move(home, 3.0)
    return figures


def policy_stream(seconds: float, cache: Path) -> list[tuple[float, np.ndarray, float, float]]:
    """The shipped policy's chunks while it closes the loop in the headless sim (pick, push,
    place, held-out seeds), as (arrival time, actions, dt, age at arrival); cached."""
    if cache.exists():
        data = np.load(cache)
        return list(zip(data["t"], data["actions"], data["dt"], data["age"]))
    from roboalign_ros.control.executor import ChunkExecutor
    from roboalign_ros.evaluation import headless as hl

    rows, episode = [], []
    submit = ChunkExecutor.submit

    def record(self, chunk, now):
        episode.append((float(now), np.asarray(chunk.actions, np.float32), float(chunk.dt),
                        float(now - chunk.stamp)))
        return submit(self, chunk, now)

    ChunkExecutor.submit = record
    tasks, seed = ["pick_red_cube", "push_green_block_left", "place_red_cube_in_bowl"], 900000
    try:
        while not rows or rows[-1][0] < seconds:
            episode.clear()
            hl.evaluate(str(ROOT / "models" / "roboalign_mini_sim"), tasks[seed % 3], [seed],
                        tempfile.mkdtemp(), progress=False, console=False)
            offset = rows[-1][0] + 0.5 if rows else 0.0
            rows += [(t - episode[0][0] + offset, a, dt, age) for t, a, dt, age in episode]
            seed += 1
    finally:
        ChunkExecutor.submit = submit
    rows = [r for r in rows if r[0] <= seconds]
    np.savez(cache, t=[r[0] for r in rows], actions=np.stack([r[1] for r in rows]),
             dt=[r[2] for r in rows], age=[r[3] for r in rows])
    return rows


def streaming_smoothness(s: Session, stream, acc_max: float) -> dict:
    """Replay the policy's chunks (re-stamped to now) and read the JTC's reference."""
    p = s.probe
    t_start = p.now()
    for t, actions, dt, age in stream:
        while p.now() - t_start < t:
            s.executor.spin_once(timeout_sec=0.002)
        p.chunk(actions, dt=dt, stamp=p.now() - age)
    s.spin(1.0)
    t, q, qd = s.reference_since(t_start)
    dv = np.abs(np.diff(qd, axis=0))
    dt = np.diff(t)[:, None]
    ok = dt[:, 0] > 0
    acc = dv[ok] / dt[ok]
    # 1 %: the executor accelerates AT acc_max, and the controller's periods jitter by ~1 %
    over = np.any(dv[ok] > 1.01 * acc_max * dt[ok], axis=1)
    over_half = np.any(dv[ok] > 1.5 * acc_max * dt[ok], axis=1)
    figures = {"periods": int(ok.sum()), "periods_over_acc_max": int(over.sum()),
               "periods_over_1.5x_acc_max": int(over_half.sum()),
               "largest_velocity_jump_rad_s2": float(acc.max()) if acc.size else 0.0,
               "largest_joint_speed_rad_s": float(np.abs(qd).max()) if qd.size else 0.0,
               "load_average_1min": os.getloadavg()[0]}
    s.move(s.robot.home, 3.0)
    return figures


def gripper_units(s: Session) -> dict:
    """A chunk whose gripper opening is 0.5: where the finger goes."""
    p, q = s.probe, s.probe.arm().copy()
    for _ in range(5):
        p.chunk(np.tile(np.append(q, 0.5), (20, 1)), dt=0.1)
        s.spin(0.1)
    s.spin(0.5)
    finger = s.robot.joint_names.index(s.robot.gripper_joints[0])
    return {"command_sent": p.gripper_commands[-1] if p.gripper_commands else None,
            "finger_position_m": float(p.states[-1][1][finger])}


def estop_latency_under_load(s: Session, trials: int = 100) -> dict:
    """E-stops while huge chunks and a 1000/s flood arrive from another publisher."""
    from trajectory_msgs.msg import JointTrajectory

    arrivals: list[tuple[float, int]] = []   # (when, points) of every trajectory sent
    s.node.create_subscription(JointTrajectory, s.robot.trajectory_topic,
                               lambda m: arrivals.append((time.monotonic(), len(m.points))),
                               100)
    flood = subprocess.Popen([sys.executable, str(Path(__file__)), "--flood"])
    latencies, after = [], 0
    try:
        p = s.probe
        s.spin(2.0)  # the flood is running
        for _ in range(trials):
            q = p.arm().copy()
            rows = np.array([np.append(q + [0.3 * i / 20, 0, 0, 0, 0, 0], 1.0)
                             for i in range(20)])
            for _ in range(3):
                p.chunk(rows, dt=0.1)
                s.spin(0.1)
            n = len(arrivals)
            sent = time.monotonic()
            p.estop(True)

            def stop_index(n=n):  # the stop: two points (from the reference, to rest)
                return next((i for i in range(n, len(arrivals)) if arrivals[i][1] == 2), None)

            s.spin_until(lambda: stop_index() is not None, 5, "no stop after the e-stop")
            k = stop_index()
            latencies.append((arrivals[k][0] - sent) * 1e3)
            s.spin(0.2)
            after += len(arrivals) - k - 1   # anything the executor sent after its stop
            p.estop(False)
            s.spin(0.2)
    finally:
        flood.terminate()
        flood.wait()
    reaction = [float(x) for x in re.findall(r"stop sent ([0-9.]+) ms after",
                                             s.executor_log.read_text(errors="replace"))]
    return {"trials": trials, "latency_p50_ms": float(np.percentile(latencies, 50)),
            "executor_reaction_p50_ms": float(np.percentile(reaction, 50)),
            "executor_reaction_p99_ms": float(np.percentile(reaction, 99)),
            "load_average_1min": os.getloadavg()[0],
            "latency_p99_ms": float(np.percentile(latencies, 99)),
            "latency_max_ms": float(np.max(latencies)),
            "commands_after_estop": after}


def flood() -> None:
    """Another publisher: a 10^6-dimension chunk every 0.1 s and 1000 small chunks/s."""
    import array

    import rclpy
    from rclpy.node import Node

    from roboalign_ros.conversions import numpy_to_action_chunk
    from roboalign_ros.msg import ActionChunk
    from roboalign_ros.nodes.common import COMMAND_QOS

    rclpy.init()
    node = Node("bench_flood")
    pub = node.create_publisher(ActionChunk, "/roboalign/action_chunk", COMMAND_QOS)
    small = numpy_to_action_chunk(np.zeros((20, 7), np.float32), stamp=0.0, dt=0.1,
                                  action_space="joint_position",
                                  dimension_names=[f"j{i}" for i in range(7)])  # refused
    huge = numpy_to_action_chunk(np.zeros((1, 1), np.float32), stamp=0.0, dt=0.1,
                                 action_space="joint_position", dimension_names=["x"])
    huge.dimension_names = ["x"] * 10**6
    huge.actions = array.array("f", [0.0]) * 10**6
    k = 0
    while rclpy.ok():
        start = time.monotonic()
        pub.publish(huge if k % 100 == 0 else small)
        k += 1
        time.sleep(max(0.0, 0.001 - (time.monotonic() - start)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="both", choices=["exact", "lagging", "both"])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--flood", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="runs/bench_real_controllers")
    ap.add_argument("--only", default="", help="one check (e.g. estop_under_load)")
    args = ap.parse_args()
    if args.flood:
        flood()
        return 0
    from roboalign_ros.control.build import executor_parameters

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    acc_max = float(executor_parameters()["safety.acc_max"])
    stream = (policy_stream(args.seconds, out / f"policy_stream_{int(args.seconds)}s.npz")
              if args.only in ("", "policy_stream") else [])
    results = {}
    for variant in (["exact", "lagging"] if args.variant == "both" else [args.variant]):
        s = Session(variant, out)
        try:
            r = results[variant] = {}
            checks = {"estop_while_streaming": estop_while_streaming,
                      "estop_during_homing": estop_during_homing, "gripper": gripper_units,
                      "policy_stream": lambda s: streaming_smoothness(s, stream, acc_max),
                      "estop_under_load": estop_latency_under_load}
            for name, check in checks.items():
                if args.only in ("", name):
                    r[name] = check(s)
                    print(variant, name, r[name], flush=True)
            r["empty_trajectory_errors"] = s.rig.log().count("Empty trajectory received")
        finally:
            s.close()
    print(json.dumps(results, indent=2))
    (out / f"results{'_' + args.only if args.only else ''}.json").write_text(
        json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    raise SystemExit(main())
