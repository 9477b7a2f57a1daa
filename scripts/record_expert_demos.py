#!/usr/bin/env python3
"""Record the scripted-expert demo dataset of every sim task (through sim_node + recorder_node).

    python scripts/record_expert_demos.py [--episodes 3] [--root datasets/sim_expert] [...]

Same as ``roboalign record sim --task all --episodes 3 --width 128 --height 128
--root datasets/sim_expert``; extra arguments are passed through (see ``--help``).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roboalign_ros.apps import record_sim  # noqa: E402

DEFAULTS = ["--task", "all", "--episodes", "3", "--width", "128", "--height", "128",
            "--root", str(Path(__file__).resolve().parents[1] / "datasets" / "sim_expert")]


def main(argv: list[str] | None = None) -> int:
    """Run `roboalign record sim` with this dataset's defaults (later arguments win)."""
    # a private DDS domain unless the caller chose one: nothing else on the graph interferes
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    argv = sys.argv[1:] if argv is None else argv
    if "--task" in argv:  # the caller's tasks replace 'all'
        defaults = DEFAULTS[2:]
    else:
        defaults = DEFAULTS
    return record_sim.main(defaults + argv)


if __name__ == "__main__":
    sys.exit(main())
