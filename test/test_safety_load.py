"""Issue 10 item 7: under CPU load every command the sim receives is still feasible.

Runs scripts/bench_safety_load.py (sim_node + executor_node + a chunk source asking for more
than the envelope allows, beside two processes that each burn a core) for 15 s and reads its
figures: no command refused by the sim, no joint faster than its limit between two
consecutive /joint_states samples.

The e-stop process and sim_node are also stopped for 0.3 s every 2 s, in turn (issue 22:
fresh-clone CI runs saw each starved: tracks the e-stop process published late were refused
as ending in the past or made the reference jump, 1.03x the velocity limit; sim_node skipped
the time it lost, and its reference jumped the same way). Such tracks are held back now, and
sim_node's physics catches up step by step.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_safety_load.py"


def test_closed_loop_beside_cpu_burners_stays_feasible(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "15", "--burners", "2",
                          "--stall-estop-process", "0.3", "--stall-sim-node", "0.3",
                          "--log-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=180)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    refused = int(re.search(r"refused by the sim for speed\s+(\d+)", text).group(1))
    violations, samples = map(int, re.search(r"violations on /joint_states\s+(\d+) of (\d+)",
                                             text).groups())
    travel = float(re.search(r"joint travel \(sum \|dq\|\) ([0-9.]+)", text).group(1))
    assert samples > 500 and travel > 5.0, text[-2000:]   # it ran, and the arm moved a lot
    assert refused == 0, text[-2000:]
    held_back = int(re.search(r"tracks held back (\d+)", text).group(1))
    assert held_back > 0, text[-2000:]
    # a stall can land after the e-stop process published a track but before DDS delivered
    # it: such a track arrives late and is refused as ending in the past (the controller goes
    # on with the one before: no jump). No other refusal.
    refusals = re.findall(r"rejected joint_trajectory command: (.*)",
                          (tmp_path / "sim_node.log").read_text())
    assert all("ends in the past" in r for r in refusals), refusals
    assert violations == 0, text[-2000:]
