"""The training stages on the recorded sim expert demos (datasets/sim_expert, recorded through
the ROS graph with `roboalign record sim`): sft -> align -> head, each loading the last.

The memorisation-style checks (loss falls, reward rises) are in test_training_pipeline.py; here
the real demos flow through every stage and the head, trained on them, beats the mean chunk.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from roboalign_ros.data import DatasetReader
from roboalign_ros.model import Observation, VLAPolicy
from roboalign_ros.training import run_align, run_head, run_sft

DEMOS = Path(__file__).resolve().parents[1] / "datasets" / "sim_expert"
POLICY = {"horizon": 4, "image_size": [56, 56], "head_width": 32, "head_layers": 1,
          "head_heads": 2, "action_vocab_size": 64, "attn_implementation": "sdpa",
          "policy_overrides": {"max_new_tokens": 24}}


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_expert")
    shutil.copytree(DEMOS, root / "ds")  # stages may add files (rationales) next to the data
    from roboalign_ros.model.tiny import build_random_backbone

    model, processor = build_random_backbone("tiny", image_size=(56, 56))
    model.save_pretrained(root / "backbone")
    processor.save_pretrained(root / "backbone")
    return root


def _run(out, **kw):
    return {"run": {"output_dir": str(out), "progress": False}, **kw}


def test_demos_are_the_recorded_expert_dataset():
    reader = DatasetReader(DEMOS)
    tasks = {e.task for e in reader.episodes}
    assert len(tasks) >= 3 and all(e.success for e in reader.episodes)
    assert {e.source for e in reader.episodes} == {"expert"}


def test_stages_chain_on_expert_demos(demos):
    ds = str(demos / "ds")
    sft = run_sft(_run(demos / "sft", data={"roots": [ds], "frame_stride": 15},
                       policy={"backbone": str(demos / "backbone"), **POLICY},
                       reasoning="none", learning_rate=1e-3, lr_scheduler="constant",
                       warmup_ratio=0.0, batch_size=4, max_steps=30))
    history = json.loads((demos / "sft" / "sft_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), "SFT loss did not fall on the demos"

    align = run_align(_run(demos / "align", data={"roots": [ds], "max_samples": 2},
                           policy={"checkpoint": str(sft)}, group_size=2, learning_rate=1e-5,
                           beta=0.0, max_steps=2, max_completion_length=16))
    VLAPolicy.from_pretrained(align, device="cpu")

    head = run_head(_run(demos / "head", data={"roots": [ds], "frame_stride": 6,
                                               "val_fraction": 0.3},
                         policy={"checkpoint": str(align)}, context="none",
                         learning_rate=3e-3, warmup_ratio=0.0, batch_size=16, max_steps=150,
                         eval_num_steps=4))
    metrics = json.loads((demos / "head" / "head_metrics.json").read_text())
    assert metrics["mse"] < metrics["baseline_mse"], metrics

    policy = VLAPolicy.from_pretrained(head, device="cpu")
    reader = DatasetReader(DEMOS)
    episode = reader.episode(0)
    obs = Observation(images={"scene": episode.frames["scene"][0]},
                      state=episode.states[0].astype(np.float32),
                      instruction=episode.info.task)
    out = policy.predict(obs, seed=0)
    assert out.chunk.shape == (4, 7) and np.all(np.isfinite(out.chunk))
