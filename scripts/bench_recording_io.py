#!/usr/bin/env python3
"""Benchmark live recording: two 640x480 cameras at 30 fps through `DatasetWriter`.

Prints the CPU time the writer spends per time step (encoding both cameras + stats sampling)
and per camera frame, the real-time load (fraction of the CPU cores used at the given fps),
and the save time of the episode. Frames are pre-generated, so only the writer is timed.

    python scripts/bench_recording_io.py --seconds 10 [--codec libx264] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from roboalign_ros.data import DatasetReader, DatasetWriter
from roboalign_ros.data.synthetic import synthetic_image


def main() -> None:
    """Run the benchmark and print the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--codec", default="libx264")
    ap.add_argument("--crf", type=int, default=None)
    ap.add_argument("--gop", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="encoder threads per camera")
    ap.add_argument("--noise", type=float, default=4.0, help="sensor noise std (8-bit levels)")
    ap.add_argument("--root", type=Path, default=None, help="dataset dir (default: a temp dir)")
    args = ap.parse_args()

    h, w, n = args.height, args.width, int(args.seconds * args.fps)
    rng = np.random.default_rng(0)
    pool = [
        np.clip(synthetic_image(t, h, w, seed) + rng.normal(0, args.noise, (h, w, 3)), 0, 255)
        .astype(np.uint8)
        for seed in (0, 3)
        for t in range(0, 60, 2)
    ]
    half = len(pool) // 2
    tmp = None if args.root else tempfile.mkdtemp(prefix="bench_rec_")
    root = args.root or Path(tmp) / "ds"
    try:
        writer = DatasetWriter.create(
            root, args.fps, [f"j{i}" for i in range(7)], [f"j{i}" for i in range(7)],
            {"scene": (h, w), "wrist": (h, w)}, "bench",
            codec=args.codec, crf=args.crf, gop=args.gop, encoder_threads=args.threads,
        )
        writer.start_episode("benchmark", operator="bench", source="teleop")
        state = np.zeros(7, np.float32)
        step_wall = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for t in range(n):
            images = {"scene": pool[t % half], "wrist": pool[half + t % half]}
            s0 = time.perf_counter()
            writer.add_frame(state, state, images, timestamp=t / args.fps)
            step_wall.append(time.perf_counter() - s0)
        cpu_total, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        c0, s0 = time.process_time(), time.perf_counter()
        writer.save_episode(success=True)
        save_cpu, save_wall = time.process_time() - c0, time.perf_counter() - s0
        size = sum(p.stat().st_size for p in root.rglob("*.mp4"))
        DatasetReader(root)  # the result is a valid dataset
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    lat = np.array(step_wall) * 1e3
    cpu_step = cpu_total / n * 1e3  # all threads of the process (encoders may run async)
    cores = len(os.sched_getaffinity(0))
    load = cpu_step / 1e3 * args.fps
    print(f"codec={args.codec} crf={args.crf or 'default'} gop={args.gop} threads/cam="
          f"{args.threads} {w}x{h} x2 cameras, {n} steps @ {args.fps} fps, noise={args.noise}")
    print(f"CPU per step (2 frames): {cpu_step:.2f} ms; per camera frame {cpu_step / 2:.2f} ms")
    print(f"add_frame wall latency: p50 {np.percentile(lat, 50):.2f} ms, p99 "
          f"{np.percentile(lat, 99):.2f} ms, max {lat.max():.2f} ms (budget {1e3 / args.fps:.1f})")
    print(f"real-time load at {args.fps} fps: {load:.2f} core-seconds per second "
          f"({100 * load / cores:.0f}% of {cores} cores); loop wall {wall / n * 1e3:.2f} ms/step")
    print(f"save_episode: cpu {save_cpu * 1e3:.0f} ms, wall {save_wall * 1e3:.0f} ms; "
          f"video {size / 1e6 / args.seconds:.2f} MB/s for both cameras")


if __name__ == "__main__":
    main()
