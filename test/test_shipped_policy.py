"""The shipped mini policy (models/roboalign_mini_sim) solves each demo task in the sim.

No ROS: the headless evaluator runs the policy through the executor core (safety envelope on)
in sim time. A fixed inference delay (the policy's typical one on this machine) keeps the
episodes reproducible on a loaded machine.
"""

import json
from pathlib import Path

import pytest

from roboalign_ros.apps.demo import DEMO_MODEL, DEMO_TASKS
from roboalign_ros.evaluation.headless import evaluate
from roboalign_ros.model import VLAPolicy

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / DEMO_MODEL
# held-out evaluation seeds (never trained on) that the shipped policy solves in the
# evaluation recorded in its provenance.json
SEEDS = {"pick_red_cube": 100005, "push_green_block_left": 100005,
         "place_red_cube_in_bowl": 100005}


def test_the_checkpoint_is_small_and_says_where_it_came_from():
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size < 25 * 2**20
    provenance = json.loads((MODEL / "provenance.json").read_text())
    assert provenance["commit"] and provenance["dataset"]["sha256"]
    assert provenance["command"].startswith("roboalign repro mini")
    policy = VLAPolicy.from_pretrained(MODEL, device="cpu")
    assert policy.config.head.keypoints > 0 and policy.config.head_context == "none"


@pytest.mark.parametrize("task", DEMO_TASKS)
def test_the_shipped_policy_solves_a_held_out_episode(task, tmp_path):
    result = evaluate(MODEL, [task], [SEEDS[task]], tmp_path / task, reasoning_every=0,
                      fixed_latency=0.08, progress=False)
    record = result.records[0]
    assert record["outcome"] == "success", record
