#!/usr/bin/env python3
"""What remote inference (``roboalign serve``, loopback) adds to in-process inference.

For each camera size: the same observations go to the policy in this process and, alternately,
through a loopback server (``act``, the action path). Prints per size the in-process and remote
latency p50 / p99 and what the transport added (the client's round trip minus the server's own
compute, per call). Then two clients share one server, each running its action path back to
back as a policy_node does: their chunk rates against one client alone. One process, one run:
compare the rows, not the absolute times on a shared machine.

    python scripts/bench_remote.py [--model models/roboalign_mini_sim] [--calls 60]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"224x168": (168, 224), "640x480": (480, 640)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "roboalign_mini_sim"))
    ap.add_argument("--calls", type=int, default=60, help="per size and path")
    ap.add_argument("--seconds", type=float, default=15.0, help="of the sharing run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    a = ap.parse_args()

    import torch

    from roboalign_ros.model import Observation
    from roboalign_ros.parameters import node_parameters
    from roboalign_ros.robot import load_robot_config
    from roboalign_ros.serving import load_checked
    from roboalign_ros.serving.remote import PolicyServer, RemotePolicy

    torch.set_num_threads(a.threads)
    p = node_parameters("policy_node", overrides={"model_path": a.model, "device": "cpu",
                                                  "reasoning_every": 0})
    policy = load_checked(p, load_robot_config("sim_arm"))
    server = PolicyServer(policy, f"127.0.0.1:{free_port()}").start()
    remote = RemotePolicy(f"{server.host}:{server.port}", timeout=30.0)
    cfg = policy.config
    print(f"model {a.model} ({cfg.horizon}x{cfg.action_dim} chunks, image_size "
          f"{cfg.image_size}), CPU, {a.threads} torch thread(s), loopback")
    print(f"{'camera':>8} | {'in-process p50/p99 ms':>22} | {'remote p50/p99 ms':>18} | "
          f"{'added p50/p99 ms':>17}")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        obs = Observation({c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                           for c in cfg.camera_names},
                          np.zeros(cfg.state_dim, np.float32), "pick up the red cube")
        local, far, added = [], [], []
        for i in range(a.calls + 5):
            t0 = time.perf_counter()
            policy.act(obs, seed=i)
            t_local = time.perf_counter() - t0
            out = remote.act(obs, seed=i)
            if i >= 5:   # warm-up calls left out
                local.append(t_local)
                far.append(out.timings["total"])
                added.append(out.timings["total"] - out.timings["server_total"])
        print(f"{name:>8} | {pct(local, 50):9.1f} / {pct(local, 99):9.1f} | "
              f"{pct(far, 50):7.1f} / {pct(far, 99):7.1f} | {pct(added, 50):6.2f} / "
              f"{pct(added, 99):6.2f}")

    h, w = SIZES["640x480"]
    obs = Observation({c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                       for c in cfg.camera_names},
                      np.zeros(cfg.state_dim, np.float32), "pick up the red cube")

    def run(clients: int) -> list[float]:
        counts, stop = [0] * clients, threading.Event()

        def loop(k: int) -> None:
            client = RemotePolicy(f"{server.host}:{server.port}", timeout=30.0)
            while not stop.is_set():
                client.act(obs)
                counts[k] += 1

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        time.sleep(a.seconds)
        stop.set()
        for t in threads:
            t.join()
        return [c / a.seconds for c in counts]

    alone, shared = run(1), run(2)
    print(f"one client alone: {alone[0]:.2f} chunks/s; two clients sharing the server: "
          f"{shared[0]:.2f} + {shared[1]:.2f} = {sum(shared):.2f} chunks/s "
          f"(640x480 camera, {a.seconds:.0f} s each)")
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
