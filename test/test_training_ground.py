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
    img, state, instruction, pixels = src.scene(1_000_123, 1)
    assert img.shape == (84, 112, 3) and img.dtype == np.uint8
    names = src.names
    red = [state[names.index(f"red_cube.{a}")] for a in "xyz"]
    np.testing.assert_allclose(red, src.env.object_position("red_cube"), atol=1e-6)
    tool = [state[names.index(f"tool.{a}")] for a in "xyz"]
    np.testing.assert_allclose(tool, src.env.tool_pose()[:3, 3], atol=1e-6)
    assert instruction == src.env.task.instruction
    u, v = pixels[list(src.env.objects).index("red_cube")]
    r, g, b = img[int(v), int(u)].astype(int)             # the projected centre is red
    assert r > 150 and g < 100 and b < 100, (u, v, r, g, b)
    again, state2, _, _ = src.scene(1_000_123, 1)           # same seed and pose: same scene
    np.testing.assert_array_equal(again, img)
    np.testing.assert_array_equal(state2, state)
    other, state3, _, _ = src.scene(1_000_124, 1)           # another layout moves the objects
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
                      "keypoints": 6})
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


def test_token_targets_point_at_the_token_holding_each_object():
    import torch

    from roboalign_ros.training.localization import (
        LocalizationProbe,
        pixels_to_grid,
        token_targets_loss,
    )

    # 2 x 3 token grid of a 84 x 56 image (28 px cells) after one text token
    grid = torch.tensor([[-1, 0, 0, 0, 0]] + [[0, x, y, 1.0, 2.0] for y in (-1.0, 1.0)
                                             for x in (-1.0, 0.0, 1.0)])
    np.testing.assert_allclose(pixels_to_grid(np.array([[14.0, 14.0], [70.0, 42.0]]), 84, 56,
                                              3, 2), [[-1, -1], [1, 1]])
    probe = LocalizationProbe(4, 2, 1, [0], [0.0], [1.0])
    with torch.no_grad():                     # logits = feature channel 0 / 1, offsets 0
        probe.logits[0].weight.fill_(1.0)
        probe.logits[0].bias.zero_()
        lin = probe.logits[1]
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0, 0] = lin.weight[1, 1] = 20.0
    hidden = torch.zeros(1, 7, 4)
    hidden[0, 1 + 5, 0] = 1.0                 # object 0 in token (x=1, y=1)
    hidden[0, 1 + 0, 1] = 1.0                 # object 1 in token (x=-1, y=-1)
    points = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]])
    good = float(token_targets_loss(probe.logits(hidden), grid, None, points))
    swapped = float(token_targets_loss(probe.logits(hidden), grid, None, points.flip(1)))
    assert good < 0.1 < swapped
    off_image = torch.tensor([[[5.0, 5.0], [-1.0, -1.0]]])   # object 0 outside: ignored
    assert float(token_targets_loss(probe.logits(hidden), grid, None, off_image)) < 0.1


def test_seeds_clear_of_the_evaluation_seeds():
    with pytest.raises(ConfigError, match="seed_base"):
        run_ground({"data": {"roots": [str(DEMOS)]}, "policy": {"backbone": "x"},
                    "seed_base": 100_010})


def test_ground_resumes_where_it_stopped(tmp_path):
    import shutil

    from roboalign_ros.model.tiny import build_random_backbone

    model, processor = build_random_backbone("tiny", image_size=(56, 56))
    model.save_pretrained(tmp_path / "random")
    processor.save_pretrained(tmp_path / "random")

    def run(out, save_every=0):
        return run_ground({"data": {"roots": [str(DEMOS)]},
                           "run": {"output_dir": str(out), "progress": False,
                                   "save_every": save_every, "keep_checkpoints": 0},
                           "policy": {"backbone": str(tmp_path / "random"), "horizon": 4,
                                      "image_size": [56, 56], "head_width": 32,
                                      "head_layers": 1, "head_heads": 2,
                                      "action_vocab_size": 64, "attn_implementation": "sdpa"},
                           "steps": 4, "batch_size": 2, "eval_scenes": 2, "eval_every": 2,
                           "keypoints": 6})

    run(tmp_path / "a")
    run(tmp_path / "b", save_every=2)
    shutil.copytree(tmp_path / "b" / "checkpoint-2", tmp_path / "c" / "checkpoint-2")
    run(tmp_path / "c")  # resumes at step 2: the backbone, the probe, the optimizer
    a, c = (json.loads((tmp_path / d / "ground_history.json").read_text()) for d in "ac")
    assert [h["step"] for h in c] == [1, 2, 3, 4]
    assert [h["loss"] for h in c] == [h["loss"] for h in a]
