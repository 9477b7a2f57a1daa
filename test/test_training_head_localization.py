"""The head stage's localization loss: the head's own keypoints learn where the objects are."""

import json

import numpy as np
import pytest
import torch

from roboalign_ros.training import ConfigError, run_head

SIZE = (56, 56)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A two-episode bulk-recorded sim dataset (with environment_state) and a tiny checkpoint."""
    from roboalign_ros.model import build_tiny_policy
    from roboalign_ros.recording import bulk

    root = tmp_path_factory.mktemp("head_loc")
    bulk.record_bulk(bulk.BulkConfig(root / "ds", ["pick_red_cube"], episodes=2,
                                     width=SIZE[1], height=SIZE[0], progress=False))
    build_tiny_policy(action_dim=7, horizon=4, image_size=SIZE).save_pretrained(root / "policy")
    return root


def _config(data, out, **kw):
    return {"data": {"roots": [str(data / "ds")], "frame_stride": 4, "val_fraction": 0.0},
            "run": {"output_dir": str(out), "progress": False},
            "policy": {"checkpoint": str(data / "policy")}, "context": "none",
            "reinit_head": True, "head_overrides": {"keypoints": 8}, "learning_rate": 3e-3,
            "warmup_ratio": 0.0, "batch_size": 8, "max_steps": 40, **kw}


def test_token_points_sit_on_the_objects_pixels():
    """sim_token_points: the token nearest each projected object shows that object."""
    from roboalign_ros.data.scene_state import environment_state_names
    from roboalign_ros.model import build_tiny_policy
    from roboalign_ros.recording.bulk import scene_state
    from roboalign_ros.sim import TabletopEnv
    from roboalign_ros.training.localization import object_position_columns, sim_token_points

    grid = build_tiny_policy(action_dim=7, horizon=4, image_size=(112, 112)).token_grid()
    with TabletopEnv() as env:
        env.reset("place_red_cube_in_bowl", 7)
        names = environment_state_names(list(env.objects))
        state = scene_state(env, env.data).to_vector()
        rgb, _ = env.render(112, 112, "scene", depth=False)
    points = sim_token_points(names, state[None], grid, (112, 112))
    objects = [names[c][:-2] for c in object_position_columns(names)[::2]]
    assert points.shape == (1, len(objects), 2)
    image = grid[grid[:, 0] == 0].numpy()
    cols, rows = len(np.unique(image[:, 1])), len(np.unique(image[:, 2]))
    x, y = points[0, objects.index("red_cube")]
    u = ((x + 1) / 2 * (cols - 1) + 0.5) * 112 / cols           # back to pixels
    v = ((y + 1) / 2 * (rows - 1) + 0.5) * 112 / rows
    px = rgb.astype(int)
    red = (px[..., 0] > 150) & (px[..., 1] < 100) & (px[..., 2] < 100)
    vs, us = np.nonzero(red)
    assert red.sum() > 5
    assert np.hypot(u - np.median(us), v - np.median(vs)) < 3.0, (u, v)  # the cube's pixels


def test_localization_loss_trains_the_heads_keypoints(data):
    out = run_head(_config(data, data / "loc", localization_weight=1.0,
                           localization_token_targets=True))
    history = json.loads((data / "loc" / "head_history.json").read_text())
    errors = [h["localization_error"] for h in history]
    assert len(errors) == 40 and all(0 < e < 1 for e in errors)
    assert np.mean(errors[-5:]) < np.mean(errors[:5]), errors      # it learns where they are
    from roboalign_ros.model import VLAPolicy

    trained = VLAPolicy.from_pretrained(out, device="cpu")           # the probe is not saved
    assert trained.config.head.keypoints == 8
    plain = run_head(_config(data, data / "plain", max_steps=2))
    assert "localization_error" not in json.loads(
        (data / "plain" / "head_history.json").read_text())[0]
    with torch.no_grad():
        a = VLAPolicy.from_pretrained(plain, device="cpu").head.keypoint_logits[1].weight
        assert not torch.allclose(a, trained.head.keypoint_logits[1].weight)


def test_localization_needs_keypoints_and_scene_states(data, tmp_path):
    with pytest.raises(ConfigError, match="head.localization_weight: the head has no keypoints"):
        run_head(_config(data, tmp_path / "a", localization_weight=1.0, head_overrides={}))
    with pytest.raises(ConfigError, match="localization_weight: must be >= 0"):
        run_head(_config(data, tmp_path / "b", localization_weight=-1.0))


def test_resume_with_the_probe_reproduces_the_run(data, tmp_path):
    """The probe's regressor is kept in checkpoints, so a resumed run is the uninterrupted one."""
    import shutil

    def run(out, save_every=0):
        cfg = _config(data, out, localization_weight=1.0, localization_token_targets=True,
                      max_steps=4)
        cfg["data"]["frame_stride"] = 8
        cfg["run"].update(save_every=save_every, keep_checkpoints=0)
        return run_head(cfg)

    straight = run(tmp_path / "a")
    run(tmp_path / "b", save_every=2)
    shutil.copytree(tmp_path / "b" / "checkpoint-2", tmp_path / "c" / "checkpoint-2")
    resumed = run(tmp_path / "c")
    a, c = (json.loads((tmp_path / d / "head_history.json").read_text()) for d in "ac")
    assert [h["step"] for h in c] == [1, 2, 3, 4]
    assert [h["loss"] for h in c] == [h["loss"] for h in a]
    from safetensors.torch import load_file

    wa, wc = load_file(straight / "head.safetensors"), load_file(resumed / "head.safetensors")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
