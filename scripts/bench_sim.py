#!/usr/bin/env python3
"""Benchmark the MuJoCo tabletop sim: physics real-time factor and camera render rate.

    MUJOCO_GL=osmesa python scripts/bench_sim.py [--seconds 10] [--width 640 --height 480]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault('MUJOCO_GL', 'osmesa')

import numpy as np  # noqa: E402

from roboalign_ros.sim import TabletopEnv  # noqa: E402


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign bench sim``; ``func`` runs the benchmark."""
    ap.add_argument('--seconds', type=float, default=10.0, help='simulated seconds of physics')
    ap.add_argument('--frames', type=int, default=30, help='frames to render')
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--task', default='pick_red_cube')
    ap.set_defaults(func=run_cli)


def main(argv: list[str] | None = None) -> int:
    """Print physics RTF (no rendering) and colour+depth render rate."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """The benchmark with parsed options."""

    env = TabletopEnv()
    env.reset(args.task, seed=0)
    home = env.robot.home
    n = int(round(args.seconds / env.control_period))
    t0 = time.perf_counter()
    for i in range(n):  # a slow sinusoid on every joint so contacts/constraints are exercised
        env.step(home + 0.2 * np.sin(2 * np.pi * 0.25 * i * env.control_period), 1.0)
    wall = time.perf_counter() - t0
    print(f'physics: {args.seconds:.1f} s simulated in {wall:.2f} s wall -> real-time factor '
          f'{args.seconds / wall:.1f}x (timestep {env.model.opt.timestep * 1e3:.1f} ms, '
          f'{env.n_substeps} substeps per {env.control_period * 1e3:.0f} ms control period)')

    env.render(args.width, args.height)  # create the GL context outside the timing
    for label, depth in (('color+depth', True), ('color only', False)):
        t0 = time.perf_counter()
        for _ in range(args.frames):
            env.step(home, 1.0)
            env.render(args.width, args.height, depth=depth)
        dt = (time.perf_counter() - t0) / args.frames
        print(f'render {args.width}x{args.height} {label}: {dt * 1e3:.1f} ms/frame '
              f'-> {1.0 / dt:.1f} Hz (MUJOCO_GL={os.environ.get("MUJOCO_GL")})')
    env.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
