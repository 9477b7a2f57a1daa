"""Action-chunk inter-arrival while reasoning runs: async (dual rate) vs inline vs off.

``attention`` is ``async`` plus the attention overlays ``policy_node`` publishes with
``attention.enabled`` (an :class:`AttentionWorker` every ``--attention-period`` s): compare its
row with ``async`` to see what the attention topic costs the action path.

Serves a policy the way ``policy_node`` does, without ROS: a camera thread feeds frames at
``--camera-rate`` into a :class:`PolicyWorker`; the reasoning is off, runs inside the action
path every ``--every`` chunks (``inline``, what ``predict`` does) or on its own thread
(``async``, a :class:`ReasoningWorker`, the node's default). Prints, per mode, the chunk
rate, the inter-arrival p50 / p99 / max, the number of reasonings finished and their p50, in
one process and one run (compare the rows, not the absolute times on a shared machine).

    python scripts/bench_serving.py [--model tiny|DIR] [--seconds 10] [--new-tokens 64]
    roboalign bench serving ...   (the same)

The tiny policy (random weights, CPU) by default; a checkpoint directory with ``--model``.
On a GPU machine: ``--device cuda --model DIR`` (or the bench's qwen2.5-vl-3b preset via
``--preset``).
"""

import argparse
import json
import threading
import time

import numpy as np
import torch

from roboalign_ros.model import Observation
from roboalign_ros.serving import (
    AttentionWorker,
    GateLimits,
    ObservationGate,
    PolicyWorker,
    ReasoningWorker,
    attention_overlays,
)

MODES = ("off", "inline", "async", "attention")


def load(args):
    """The policy to serve, with ``max_new_tokens`` set to ``--new-tokens``."""
    if args.model == "tiny" and args.preset == "tiny":
        from roboalign_ros.model import build_tiny_policy

        pol = build_tiny_policy(image_size=tuple(args.image_size), device=args.device,
                                max_new_tokens=args.new_tokens)
    elif args.model == "tiny":
        from roboalign_ros.model.bench import build_policy

        pol = build_policy(args.preset, torch.device(args.device), tuple(args.image_size), 1,
                           args.new_tokens, 10)
    else:
        from roboalign_ros.model import VLAPolicy

        pol = VLAPolicy.from_pretrained(args.model, device=args.device)
        pol.config.max_new_tokens = args.new_tokens
    pol.config.head_context = "none"  # the heads the repro trains read no reasoning
    return pol


def serve(pol, mode: str, seconds: float, camera_rate: float, every: int, period: float,
          attention_period: float = 1.0):
    """Run one mode for ``seconds``; returns chunk times, reasoning and attention durations."""
    h, w = pol.config.image_size or (224, 224)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    state = np.zeros(pol.config.state_dim, np.float32)
    t_start = time.monotonic()
    clock = time.monotonic
    chunks, thoughts, overlays = [], [], []

    def observe(snap):
        return Observation({n: snap.image for n in pol.config.camera_names}, state,
                           snap.instruction)

    pol.reset()
    pol.config.reasoning_every = every if mode == "inline" else (0 if mode == "off" else 1)
    reasoner = attention = None
    predict = pol.predict
    if mode in ("async", "attention"):
        reasoner = ReasoningWorker(pol.reason, observe,
                                   lambda r: thoughts.append(r.seconds), period)
        predict = pol.act
    if mode == "attention":
        from roboalign_ros.model.attention import AttentionExplainer

        attention = AttentionWorker(attention_overlays(AttentionExplainer(pol),
                                                       reasoner.latest_text), observe,
                                    lambda r: overlays.append(r.seconds), attention_period)

    def on_decision(d):
        if d.output is not None:
            chunks.append(clock())
            if mode == "inline" and d.output.reasoning_fresh:
                thoughts.append(d.output.timings.get("generate", 0.0))

    # a stale frame is not the point here: the gate only needs a fresh image
    worker = PolicyWorker(predict, observe, ObservationGate(GateLimits(max_image_age=60.0),
                                                            needs_state=False),
                          on_decision, clock, reasoner=reasoner)
    worker.observers = [attention] if attention is not None else []
    worker.set_instruction("pick up the red cube")
    stop = threading.Event()

    def camera():
        while not stop.is_set():
            worker.update_image(image, clock())
            stop.wait(1.0 / camera_rate)

    cam = threading.Thread(target=camera, daemon=True)
    for background in (reasoner, attention):
        if background is not None:
            background.start()
    worker.start()
    cam.start()
    time.sleep(seconds)
    stop.set()
    worker.stop()
    for background in (reasoner, attention):
        if background is not None:
            background.stop()
    cam.join()
    return np.asarray(chunks) - t_start, np.asarray(thoughts), np.asarray(overlays)


def summarize(chunks: np.ndarray, thoughts: np.ndarray, overlays: np.ndarray,
              seconds: float) -> dict:
    """Chunk rate, inter-arrival percentiles (ms), reasoning and attention counts of a mode."""
    gaps = np.diff(chunks) * 1e3 if len(chunks) > 1 else np.asarray([np.nan])
    return {"chunks": int(len(chunks)), "chunk_rate_hz": len(chunks) / seconds,
            "inter_arrival_p50_ms": float(np.percentile(gaps, 50)),
            "inter_arrival_p99_ms": float(np.percentile(gaps, 99)),
            "inter_arrival_max_ms": float(np.max(gaps)),
            "reasonings": int(len(thoughts)),
            "reasoning_p50_ms": float(np.percentile(thoughts, 50) * 1e3) if len(thoughts)
            else float("nan"),
            "attention_maps": int(len(overlays)),
            "attention_p50_ms": float(np.percentile(overlays, 50) * 1e3) if len(overlays)
            else float("nan")}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign bench serving``; ``func`` runs the benchmark."""
    ap.add_argument("--model", default="tiny", help="tiny (random) or a checkpoint directory")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "qwen2.5-vl-3b"],
                    help="with --model tiny: the random policy's size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=10.0, help="per mode")
    ap.add_argument("--camera-rate", type=float, default=30.0)
    ap.add_argument("--every", type=int, default=5, help="inline: reasoning every N chunks")
    ap.add_argument("--period", type=float, default=0.0,
                    help="async: seconds between generations (0: back to back, the worst case)")
    ap.add_argument("--attention-period", type=float, default=2.0,
                    help="attention: seconds between attention maps (policy_node's default)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--image-size", type=int, nargs=2, default=(112, 112))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--json", default=None)
    ap.set_defaults(func=run_cli)


def main(argv=None) -> dict:
    """Serve each mode in turn and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


def run_cli(a: argparse.Namespace) -> dict:
    """Serve each mode with parsed options; returns the rows."""
    if a.threads:
        torch.set_num_threads(a.threads)
    pol = load(a)
    pol.warmup()
    rows = {}
    for mode in a.modes:
        rows[mode] = summarize(*serve(pol, mode, a.seconds, a.camera_rate, a.every, a.period,
                                       a.attention_period),
                               a.seconds)
    print(f"model={a.model} preset={a.preset} device={pol.device} threads="
          f"{torch.get_num_threads()} camera={a.camera_rate:g} Hz new_tokens={a.new_tokens} "
          f"seconds/mode={a.seconds:g} inline every={a.every} async period={a.period:g} s")
    print(f"{'mode':<8}{'chunks/s':>9}{'gap p50':>9}{'gap p99':>9}{'gap max':>9}"
          f"{'reasonings':>11}{'reason p50':>11}{'attn maps':>10}{'attn p50':>9}   (ms)")
    for mode, r in rows.items():
        print(f"{mode:<8}{r['chunk_rate_hz']:>9.1f}{r['inter_arrival_p50_ms']:>9.0f}"
              f"{r['inter_arrival_p99_ms']:>9.0f}{r['inter_arrival_max_ms']:>9.0f}"
              f"{r['reasonings']:>11}{r['reasoning_p50_ms']:>11.0f}{r['attention_maps']:>10}"
              f"{r['attention_p50_ms']:>9.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
