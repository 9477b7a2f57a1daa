#!/usr/bin/env python3
"""The action path under ``torch.compile``: graph breaks, recompiles, eager vs compiled latency.

For one policy (default: the shipped mini policy, its 168x224 camera):

1. ``torch._dynamo.explain`` of the action path as ``act`` runs it eagerly (``backbone_features``
   then ``head.sample``): graph count, graph break count, break reasons;
2. the same for the compilable core (``policy.action_core()``, what ``compile_action_path``
   compiles with ``fullgraph=True, dynamic=False``);
3. recompiles over ``--calls`` compiled calls after warm-up (dynamo's ``unique_graphs``
   counter: one more graph per recompile);
4. ``act`` latency p50 / p90, eager and compiled (two copies of the policy, called in turn so
   that both see the same load), over the same observations (the sim tasks' instructions,
   random images and states, seeded noise), and the largest difference between their chunks.

Plain Python, no ROS. CPU figures here; on CUDA the compiled path uses CUDA graphs
(``mode="reduce-overhead"``).

    python scripts/bench_compile.py [--model models/roboalign_mini_sim | tiny] [--calls 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the sim tasks' instructions (roboalign_ros.sim.tasks), as the mini policy was trained on
INSTRUCTIONS = ["pick up the red cube", "put the red cube in the blue bowl",
                "push the green block to the left", "pick up the yellow cylinder",
                "put the purple cube in the blue bowl", "stack the red cube on the green block",
                "push the red cube to the right"]


def load(model: str, device: str):
    """The policy: a checkpoint directory, or ``tiny`` (serving's random demo policy)."""
    if model == "tiny":
        from roboalign_ros.robot import load_robot_config
        from roboalign_ros.serving import load_policy

        return load_policy("tiny", load_robot_config("sim_arm"), device)
    from roboalign_ros.model import VLAPolicy

    return VLAPolicy.from_pretrained(model, device=device)


def observations(policy, n: int, seed: int = 0):
    """``n`` observations for the policy's camera setup, varied in every input."""
    from roboalign_ros.model import Observation

    rng = np.random.default_rng(seed)
    h, w = policy.config.image_size
    return [Observation({c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                         for c in policy.config.camera_names},
                        rng.normal(0, 0.1, policy.config.state_dim).astype(np.float32),
                        INSTRUCTIONS[i % len(INSTRUCTIONS)]) for i in range(n)]


def explain(fn, *args) -> dict:
    """``torch._dynamo.explain`` summary: graphs, breaks, reasons (with their counts)."""
    import torch

    torch._dynamo.reset()
    with torch.no_grad():
        out = torch._dynamo.explain(fn)(*args)
    reasons = Counter()
    for r in out.break_reasons:
        frame = r.user_stack[-1] if r.user_stack else None
        where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
        reasons[f"{r.reason.splitlines()[0][:120]} ({where})"] += 1
    return {"graphs": out.graph_count, "breaks": out.graph_break_count, "reasons": reasons}


def print_explain(title: str, summary: dict) -> None:
    """One explain summary, reasons by count."""
    print(f"{title}: {summary['graphs']} graph(s), {summary['breaks']} graph break(s)")
    for reason, n in summary["reasons"].most_common():
        print(f"    {n:3d} x {reason}")


class Timed:
    """Seconds per ``act`` call ("act") and per stage ("preprocess", "features + head")."""

    def __init__(self, policy):
        self.policy, self.times = policy, {"act": [], "preprocess": [], "features + head": []}

    def act(self, obs, seed: int) -> np.ndarray:
        """One timed call; its chunk."""
        t0 = time.perf_counter()
        out = self.policy.act(obs, seed=seed)
        self.times["act"].append(time.perf_counter() - t0)
        stages = out.timings
        self.times["preprocess"].append(stages["preprocess"])
        self.times["features + head"].append(stages.get("features_head", 0.0)
                                             + stages.get("features", 0.0)
                                             + stages.get("head", 0.0))
        return out.chunk


def ms(times, q) -> float:
    return float(np.percentile(np.asarray(times) * 1e3, q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "roboalign_mini_sim"),
                    help="checkpoint directory, or 'tiny'")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--calls", type=int, default=100, help="compiled calls after warm-up")
    ap.add_argument("--runs", type=int, default=30, help="timed calls per path")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()

    import torch
    from torch._dynamo.utils import counters

    if a.threads:
        torch.set_num_threads(a.threads)
    policy = load(a.model, a.device)
    cfg = policy.config
    print(f"model {a.model}: {cfg.camera_names} {cfg.image_size[1]}x{cfg.image_size[0]}, "
          f"{cfg.head.num_steps} head steps, device {policy.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    obs = observations(policy, max(a.calls, a.runs))
    inputs = policy.encode_observation(obs[0], policy.feature_suffix(None))
    state = torch.as_tensor(policy.normalizer.normalize("state", obs[0].state),
                            device=policy.device)[None]

    def eager_path(inputs, state):  # act's features + head, as it runs them eagerly
        features, mask = policy.backbone_features(inputs)
        noise = torch.Generator(device=policy.device).manual_seed(0)
        return policy.head.sample(features, state, mask, generator=noise)

    print_explain("explain, eager action path (backbone_features + head.sample)",
                  explain(eager_path, inputs, state))
    core_args = policy.action_core_inputs(obs[0], seed=0)
    print(f"compilable core: prompt padded to {policy._core_tokens} tokens "
          f"({inputs['input_ids'].shape[1]} for {obs[0].instruction!r})")
    print_explain("explain, compiled core (policy.action_core())",
                  explain(policy.action_core(), *core_args))
    torch._dynamo.reset()

    compiled = load(a.model, a.device)
    compiled.compile_action_path()
    t0 = time.perf_counter()
    compiled.warmup(reasoning=False)
    print(f"compile + warm-up: {time.perf_counter() - t0:.1f} s")
    graphs = counters["stats"]["unique_graphs"]  # one more per recompile
    for i, o in enumerate(obs[:a.calls]):
        compiled.act(o, seed=i)
    recompiles = counters["stats"]["unique_graphs"] - graphs
    print(f"recompiles over {a.calls} calls after warm-up: {recompiles}"
          + (" (TORCH_LOGS=recompiles says why)" if recompiles else ""))

    eager, fast, diff = Timed(policy), Timed(compiled), 0.0
    eager.act(obs[0], 0)
    for i, o in enumerate(obs[:a.runs]):
        diff = max(diff, float(np.abs(eager.act(o, i) - fast.act(o, i)).max()))
    print(f"compiled vs eager chunks (same seeds): max |difference| {diff:.2e} (robot units)")

    print(f"latency over {a.runs} calls each, in turn ({policy.device}), p50 / p90 ms:")
    print(f"    {'':16s} {'eager':>15s} {'compiled':>15s} {'speed-up p50':>13s}")
    for stage, e in eager.times.items():
        e, c = e[1:], fast.times[stage]
        print(f"    {stage:16s} {ms(e, 50):7.2f} /{ms(e, 90):6.2f} "
              f"{ms(c, 50):7.2f} /{ms(c, 90):6.2f} {ms(e, 50) / ms(c, 50):12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
