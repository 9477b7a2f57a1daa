"""The ground stage: rendered sim scenes with their object positions, and a backbone out."""

import json
from pathlib import Path

import numpy as np
import pytest

from roboalign_ros.training import ConfigError
from roboalign_ros.training.ground import SceneSource, run_ground

DEMOS = Path(__file__).resolve().parents[1] / "datasets" / "sim_expert"


def test_scenes_are_seeded_layouts_with_their_true_positions():
    arm = np.array([[0.3, 0.2, 0.4, 0.0, 0.9, 0.0, 1.0], [-0.3, 0.1, 0.6, 0.0, 0.8, 0.3, 0.2]])
    src = SceneSource(["pick_red_cube", "push_green_block_left"], arm, (84, 112))
    img, state, instruction = src.scene(1_000_123, 1)
    assert img.shape == (84, 112, 3) and img.dtype == np.uint8
    names = src.names
    red = [state[names.index(f"red_cube.{a}")] for a in "xyz"]
    np.testing.assert_allclose(red, src.env.object_position("red_cube"), atol=1e-6)
    tool = [state[names.index(f"tool.{a}")] for a in "xyz"]
    np.testing.assert_allclose(tool, src.env.tool_pose()[:3, 3], atol=1e-6)
    assert instruction == src.env.task.instruction
    again, state2, _ = src.scene(1_000_123, 1)           # same seed and pose: same scene
    np.testing.assert_array_equal(again, img)
    np.testing.assert_array_equal(state2, state)
    other, state3, _ = src.scene(1_000_124, 1)           # another layout moves the objects
    assert np.abs(state3[names.index("red_cube.x"):names.index("red_cube.x") + 2]
                  - state[names.index("red_cube.x"):names.index("red_cube.x") + 2]).max() > 1e-3


def test_ground_trains_and_writes_a_backbone_sft_can_load(tmp_path):
    from roboalign_ros.model.tiny import build_random_backbone

    model, processor = build_random_backbone("tiny", image_size=(56, 56))
    model.save_pretrained(tmp_path / "random")
    processor.save_pretrained(tmp_path / "random")
    out = run_ground({"data": {"roots": [str(DEMOS)]},
                      "run": {"output_dir": str(tmp_path / "g"), "progress": False},
                      "policy": {"backbone": str(tmp_path / "random"), "horizon": 4,
                                 "image_size": [56, 56], "head_width": 32, "head_layers": 1,
                                 "head_heads": 2, "action_vocab_size": 64,
                                 "attn_implementation": "sdpa"},
                      "steps": 3, "batch_size": 4, "eval_scenes": 4, "eval_every": 2,
                      "keypoints": 2})
    history = json.loads((tmp_path / "g" / "ground_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(0 < h["error_m"] < 1 for h in history)
    assert sum("held_out_error_m" in h for h in history) == 2
    from roboalign_ros.model import backbone as bb

    loaded, _ = bb.load_backbone(out, "cpu", bb.resolve_dtype("float32", "cpu"), "sdpa")
    before = dict(model.named_parameters())
    changed = [n for n, p in loaded.named_parameters()
               if n in before and before[n].shape == p.shape and
               not np.allclose(before[n].detach().numpy(), p.detach().numpy())]
    assert any("visual" in n for n in changed)            # the vision tower was trained


def test_seeds_clear_of_the_evaluation_seeds():
    with pytest.raises(ConfigError, match="seed_base"):
        run_ground({"data": {"roots": [str(DEMOS)]}, "policy": {"backbone": "x"},
                    "seed_base": 100_010})
