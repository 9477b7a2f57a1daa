"""The closed loop under CPU load: is every command the sim receives still feasible?

Starts sim_node and executor_node (and policy_node with ``--source policy``) as separate
processes, plus ``--burners`` processes that spin a core each, and drives the arm for
``--seconds``. With ``--source sine`` (the default, the harder case) this script publishes
chunks that ask for a large sinusoid on three joints, faster than the envelope allows, so the
velocity and acceleration limits bind all the time. Prints:

- commands the sim refused for speed (its log and its ``/diagnostics``);
- joint-velocity violations measured on ``/joint_states`` (consecutive samples faster than
  the URDF limit);
- the executor's command period p50/p99 (its ``/diagnostics``) and the states it went through.

``--stall-estop-process S`` also stops the e-stop process (which publishes every trajectory)
for S seconds every 2 s, as a starved machine can: the tracks it then takes late are held back
(``tracks_held_back``) instead of jumping the controller's reference. ``--stall-sim-node S``
stops sim_node the same way, 1 s out of phase: its physics catches up step by step after.

    python scripts/bench_safety_load.py [--seconds 60] [--burners 2] [--source sine|policy]
                                        [--stall-estop-process 0.3] [--stall-sim-node 0.3]
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState

from roboalign_ros.apps.node_processes import NodeProcesses
from roboalign_ros.conversions import JointStateMapper, numpy_to_action_chunk, stamp_to_seconds
from roboalign_ros.msg import ActionChunk
from roboalign_ros.nodes.common import SENSOR_QOS
from roboalign_ros.robot import load_robot_config

SPEED_REFUSAL = re.compile(r"rad/s > velocity limit|faster than")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--source", choices=("sine", "policy"), default="sine")
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--stall-estop-process", type=float, default=0.0, metavar="S",
                        help="stop the e-stop process for S s every 2 s (SIGSTOP/SIGCONT)")
    parser.add_argument("--stall-sim-node", type=float, default=0.0, metavar="S",
                        help="stop sim_node for S s every 2 s, 1 s after the e-stop process")
    args = parser.parse_args()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench_safety_load_"))
    robot = load_robot_config("sim_arm")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(args.burners)]
    nodes = NodeProcesses(log_dir)
    try:
        sim = nodes.start("sim_node", "sim.yaml", {"camera.width": 320, "camera.height": 240,
                                                   "camera.rate": 10.0})
        executor = nodes.start("executor_node", "executor.yaml")
        if args.source == "policy":
            nodes.start("policy_node", "policy.yaml", {"model_path": "tiny", "device": "cpu",
                                                       "torch_threads": 1})
        stop_stalls, stalls = threading.Event(), {"estop": [], "sim": []}
        if args.stall_estop_process > 0:
            threading.Thread(target=stall, daemon=True, args=(
                lambda: estop_process_pid(executor.pid), args.stall_estop_process, 0.0,
                stop_stalls, stalls["estop"])).start()
        if args.stall_sim_node > 0:
            threading.Thread(target=stall, daemon=True, args=(
                lambda: sim.pid, args.stall_sim_node, 1.0, stop_stalls,
                stalls["sim"])).start()
        figures = drive(robot, args, nodes)
        stop_stalls.set()
    finally:
        nodes.stop()
        for b in burners:
            b.kill()
            b.wait()
    sim_log = (log_dir / "sim_node.log").read_text()
    refused_speed = len(SPEED_REFUSAL.findall(sim_log))
    print(f"closed loop ({args.source}) for {args.seconds:.0f} s beside {args.burners} "
          f"CPU burners on {__import__('os').cpu_count()} cores (logs: {log_dir}):")
    print(f"  commands refused by the sim for speed   {refused_speed} "
          f"(sim diagnostics: {figures['sim']})")
    print(f"  joint-velocity violations on /joint_states  {figures['violations']} of "
          f"{figures['samples']} consecutive samples (peak {figures['peak_ratio']:.2f} x limit)")
    print(f"  executor period  p50 {figures['executor'].get('period_p50_ms', '?')} ms, "
          f"p99 {figures['executor'].get('period_p99_ms', '?')} ms (last 500 ticks)")
    if args.stall_estop_process > 0:
        print(f"  e-stop process stopped {len(stalls['estop'])} times for "
              f"{args.stall_estop_process} s: tracks held back "
              f"{figures['executor'].get('tracks_held_back', '?')}")
    if args.stall_sim_node > 0:
        print(f"  sim_node stopped {len(stalls['sim'])} times for {args.stall_sim_node} s")
    print(f"  executor states seen  {sorted(figures['states'])}; "
          f"commands/trajectory points the sim got: {figures['commands']}")
    moved = figures["travel"]
    print(f"  joint travel (sum |dq|) {moved:.2f} rad: the arm did move")


def estop_process_pid(executor_pid: int) -> int | None:
    """executor_node's e-stop process (its spawned child), once it is up."""
    for task in Path(f"/proc/{executor_pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def stall(pid_of, seconds: float, offset: float, done: threading.Event, stalls: list) -> None:
    """SIGSTOP the process ``pid_of()`` for ``seconds`` every 2 s (first after ``offset`` s).

    Appends to ``stalls`` after each.
    """
    pid = None
    while pid is None and not done.wait(0.5):
        pid = pid_of()
    if done.wait(offset):
        return
    while not done.wait(2.0):
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        stalls.append(seconds)


def drive(robot, args, nodes):
    """Publish chunks (sine mode), watch joint states and diagnostics; return the figures."""
    from trajectory_msgs.msg import JointTrajectory

    rclpy.init()
    node = Node("bench_safety_load")
    mapper = JointStateMapper(robot, with_gripper=False)
    prev = {"q": None, "t": None}
    figures = {"violations": 0, "samples": 0, "peak_ratio": 0.0, "sim": {}, "executor": {},
               "states": set(), "commands": 0, "travel": 0.0}
    limit = np.asarray(robot.velocity, float)

    def on_state(msg):
        try:
            q = mapper(msg)
        except Exception:
            return
        t = stamp_to_seconds(msg.header.stamp)
        if prev["q"] is not None and t > prev["t"]:
            speed = np.abs(q - prev["q"]) / (t - prev["t"])
            ratio = float(np.max(speed / limit))
            figures["samples"] += 1
            figures["peak_ratio"] = max(figures["peak_ratio"], ratio)
            # 1e-4 rad of slack: integration noise, not motion
            if np.any(np.abs(q - prev["q"]) > limit * (t - prev["t"]) + 1e-4):
                figures["violations"] += 1
            figures["travel"] += float(np.abs(q - prev["q"]).sum())
        prev["q"], prev["t"] = q, t

    def on_diag(msg):
        for s in msg.status:
            values = {kv.key: kv.value for kv in s.values}
            if s.hardware_id == "executor_node":
                figures["executor"] = values
                figures["states"].add(values.get("state", "?"))
            elif s.hardware_id == "sim_node":
                figures["sim"] = {k: v for k, v in values.items()
                                  if k.startswith(("rejected", "rate_", "resyncs"))}

    def on_command(msg):
        figures["commands"] += 1

    node.create_subscription(JointState, robot.topics["joint_states"], on_state, SENSOR_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    node.create_subscription(JointTrajectory, robot.trajectory_topic, on_command, 100)
    chunks = node.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)
    names = [*robot.arm_joints, "gripper"]
    amplitude = np.array([0.6, 0.4, 0.5, 0.0, 0.0, 0.0])
    omega = 3.0  # rad/s: peak 1.8 rad/s on joint1, beyond the 0.5 x 2.0 rad/s envelope

    def publish_chunk():
        now = node.get_clock().now().nanoseconds * 1e-9
        t = now + 0.1 * np.arange(16)[:, None]
        target = robot.home + amplitude * np.sin(omega * t)
        actions = np.hstack([target, np.ones((16, 1))]).astype(np.float32)
        chunks.publish(numpy_to_action_chunk(actions, stamp=now, dt=0.1,
                                             action_space="joint_position",
                                             dimension_names=names))

    if args.source == "sine":
        node.create_timer(0.1, publish_chunk)
    # the measurement starts once the loop is closed: the sim's joint states arrive and the
    # executor has matched the chunk source (beside the burners, start-up takes a while)
    end = time.monotonic() + 120.0
    started = None
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.01)
        if started is None and figures["samples"] > 0 and chunks.get_subscription_count() > 0:
            started = time.monotonic()
            end = started + args.seconds
        if nodes.exited():
            raise SystemExit(f"nodes exited: {nodes.exited()}")
    if started is None:
        raise SystemExit(f"the loop did not close in 120 s: {figures['samples']} joint states, "
                         f"{chunks.get_subscription_count()} chunk subscribers")
    node.destroy_node()
    rclpy.shutdown()
    return figures


if __name__ == "__main__":
    main()
