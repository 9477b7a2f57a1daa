#!/usr/bin/env python3
"""Chunk rate of policy_nodes sharing one ``roboalign serve`` server, through ROS.

Starts a loopback server (the shipped mini policy), sim_node (the scene camera at
``--camera-size`` and ``--camera-rate``) and one, then two, policy_nodes with ``inference:
remote`` on the same camera, each publishing on its own chunk topic; counts each node's chunks
for ``--seconds`` once all are acting. Prints chunks/s per node for one node alone and for two
sharing the server. One process tree, one run: compare the rows, not absolute rates on a
shared machine.

    python scripts/bench_remote_nodes.py [--seconds 30] [--camera-size 640 480]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                            env=os.environ.copy())


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def policy_node(name: str, server: str, log_dir: Path) -> subprocess.Popen:
    params = {"inference": "remote", "server": server, "remote_timeout": 10.0,
              "chunk_topic": f"/{name}/action_chunk", "status_topic": f"/{name}/status",
              "reasoning_topic": f"/{name}/reasoning"}
    args = ["-m", "roboalign_ros.nodes.policy_node", "--ros-args", "-r", f"__node:={name}"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    return start(args, log_dir / f"{name}.log")


def count_chunks(names: list[str], seconds: float, warmup: float = 120.0) -> dict[str, float]:
    """Chunks/s on each ``/<name>/action_chunk`` over ``seconds``, once every node publishes."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from roboalign_ros.msg import ActionChunk

    rclpy.init()
    node = Node("bench_remote_nodes")
    counts = {n: 0 for n in names}
    for n in names:
        node.create_subscription(ActionChunk, f"/{n}/action_chunk",
                                 lambda _m, n=n: counts.__setitem__(n, counts[n] + 1), 50)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + warmup
    while min(counts.values()) < 3:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every node published within {warmup} s: {counts}")
        executor.spin_once(timeout_sec=0.1)
    start_counts, t0 = dict(counts), time.monotonic()
    while time.monotonic() - t0 < seconds:
        executor.spin_once(timeout_sec=0.1)
    rates = {n: (counts[n] - start_counts[n]) / seconds for n in names}
    node.destroy_node()
    rclpy.shutdown()
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "roboalign_mini_sim"))
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--camera-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    ap.add_argument("--camera-rate", type=float, default=15.0)
    ap.add_argument("--log-dir", default="log/bench_remote_nodes")
    a = ap.parse_args()
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    server = f"127.0.0.1:{free_port()}"
    procs = [start(["-m", "roboalign_ros.apps.serve", "--model", a.model, "--bind", server,
                    "--device", "cpu", "--torch-threads", "1"], log_dir / "serve.log"),
             start(["-m", "roboalign_ros.nodes.sim_node", "--ros-args",
                    "-p", f"camera.width:={a.camera_size[0]}",
                    "-p", f"camera.height:={a.camera_size[1]}",
                    "-p", f"camera.rate:={a.camera_rate}"], log_dir / "sim_node.log")]
    try:
        deadline = time.monotonic() + 180
        while "listening" not in (log_dir / "serve.log").read_text():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"the server did not start: see {log_dir}/serve.log")
            time.sleep(1)
        procs.append(policy_node("policy_a", server, log_dir))
        alone = count_chunks(["policy_a"], a.seconds)
        procs.append(policy_node("policy_b", server, log_dir))
        shared = count_chunks(["policy_a", "policy_b"], a.seconds)
    finally:
        stop(procs[::-1])
    print(f"camera {a.camera_size[0]}x{a.camera_size[1]} @ {a.camera_rate} Hz, {a.model}, "
          f"server on loopback, {a.seconds:.0f} s each, {os.cpu_count()} cores")
    print(f"one policy_node alone: {alone['policy_a']:.2f} chunks/s")
    print(f"two policy_nodes sharing the server: {shared['policy_a']:.2f} + "
          f"{shared['policy_b']:.2f} = {sum(shared.values()):.2f} chunks/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
