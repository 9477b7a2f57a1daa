#!/usr/bin/env python3
"""Benchmark `roboalign record bulk`: episodes/min and frames/s per image size on this machine.

Records a few expert episodes of every given task into a temp dataset per image size and
prints the speed with its breakdown (physics + expert, rendering, writing).

    python scripts/bench_bulk_recorder.py [--episodes 2] [--sizes 224x224 640x480] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "osmesa")

from roboalign_ros.recording import bulk  # noqa: E402

DEFAULT_TASKS = "pick_red_cube,place_red_cube_in_bowl,push_green_block_left"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per image size."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated, or 'all'")
    ap.add_argument("--episodes", type=int, default=2, help="episodes per task and size")
    ap.add_argument("--sizes", nargs="+", default=["224x224", "640x480"], help="WxH")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        with tempfile.TemporaryDirectory(prefix="bench_bulk_") as tmp:
            ns = bulk.parse_args(["--tasks", args.tasks, "--episodes", str(args.episodes),
                                  "--out", str(Path(tmp) / "ds"), "--width", str(width),
                                  "--height", str(height), "--workers", str(args.workers)])
            result = bulk.record_bulk(bulk.config_from_args(ns))
        print(result.summary(), flush=True)
        n = sum(result.saved.values())
        per = {k: 1000 * v / max(result.frames, 1) for k, v in result.timings.items()}
        rows.append(f"{size:>9s}  {result.episodes_per_minute:7.1f} ep/min  "
                    f"{result.frames_per_second:7.1f} frames/s  {n} episodes, {result.frames} "
                    f"frames, {result.sim_seconds / max(result.wall_seconds, 1e-9):5.1f}x real "
                    "time; per frame: " + ", ".join(f"{k} {v:.1f} ms" for k, v in per.items()))
    print(f"\nbulk recorder, {args.workers} worker(s), {os.cpu_count()} CPUs:")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
