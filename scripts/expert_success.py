#!/usr/bin/env python3
"""Success rate of the scripted expert per task over N seeded episodes (no rendering).

    python scripts/expert_success.py [--episodes 50] [--tasks pick_red_cube ...] [--robot sim_arm]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from roboalign_ros.sim import TASKS, TabletopEnv  # noqa: E402
from roboalign_ros.sim.expert import ScriptedExpert, run_episode  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Print the expert's success rate per task; exit 1 if any is below --min-rate."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--episodes', '-n', type=int, default=50)
    ap.add_argument('--first-seed', type=int, default=0)
    ap.add_argument('--tasks', nargs='*', default=sorted(TASKS))
    ap.add_argument('--robot', default='sim_arm')
    ap.add_argument('--min-rate', type=float, default=0.9)
    args = ap.parse_args(argv)

    env = TabletopEnv(args.robot)
    expert = ScriptedExpert(env)
    rates = {}
    for task in args.tasks:
        t0 = time.perf_counter()
        fails = []
        for seed in tqdm(range(args.first_seed, args.first_seed + args.episodes), desc=task,
                         leave=False):
            if not run_episode(env, task, seed, expert):
                fails.append(seed)
        rates[task] = 1.0 - len(fails) / args.episodes
        print(f'{task:32s} {rates[task] * 100:6.1f}%  ({args.episodes - len(fails)}/'
              f'{args.episodes}, {time.perf_counter() - t0:.1f} s)'
              + (f'  failed seeds: {fails}' if fails else ''), flush=True)
    worst = min(rates.values()) if rates else 1.0
    return 0 if worst >= args.min_rate else 1


if __name__ == '__main__':
    sys.exit(main())
