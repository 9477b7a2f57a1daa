"""Attention maps (model/attention.py) and ``roboalign explain`` (apps/explain.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from roboalign_ros.apps.demo import DEMO_MODEL
from roboalign_ros.apps.explain import main as explain_main
from roboalign_ros.model import Observation, VLAPolicy, build_tiny_policy
from roboalign_ros.model.attention import ACTION_HEAD, ACTION_TOKENS, AttentionExplainer
from roboalign_ros.model.reasoning import SECTIONS, format_target, section_spans
from roboalign_ros.sim import TabletopEnv

ROOT = Path(__file__).resolve().parents[1]
RATIONALE = ("<Observation> I see the red cube.\n<Situation Analysis> Not grasped yet.\n"
             "<Spatial Reasoning> The cube is 5 cm left of the gripper.\n"
             "<Task Planning> 1. move above it 2. close the gripper")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_policy(seed=0)


def _obs(policy, seed=0):
    h, w = policy.config.image_size or (224, 224)
    rng = np.random.default_rng(seed)
    return Observation({n: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                        for n in policy.config.camera_names},
                       np.zeros(policy.config.state_dim, np.float32), "pick up the red cube")


def test_section_spans_cut_the_rationale_at_its_tags():
    spans = section_spans(RATIONALE + "</think><answer>")
    assert list(spans) == list(SECTIONS)
    text = RATIONALE
    assert text[slice(*spans["Spatial Reasoning"])].startswith("<Spatial Reasoning> The cube")
    assert text[slice(*spans["Task Planning"])].endswith("close the gripper")
    assert section_spans("no tags here") == {}


def test_every_source_is_a_distribution_over_the_image_patches(tiny):
    explainer = AttentionExplainer(tiny)
    text = format_target(RATIONALE, [3, 1, 4, 1, 5])
    maps = explainer.explain(_obs(tiny), text)
    assert maps.sources == [*SECTIONS, "reasoning", ACTION_TOKENS, ACTION_HEAD]
    grid = tiny.token_grid()
    for source in maps.sources:
        cams = maps.maps[source]
        assert set(cams) == set(tiny.config.camera_names)
        total = sum(float(m.sum()) for m in cams.values())
        assert total == pytest.approx(1.0, abs=1e-5)
        for c, m in enumerate(cams.values()):
            assert m.size == int((grid[:, 0] == c).sum()) and np.all(m >= 0)
        assert 0 < maps.image_share[source] <= 1 + 1e-6
        camera = tiny.config.camera_names[0]
        heat = maps.heat(source, camera)
        assert heat.shape == maps.images[camera].shape[:2]
        assert heat.sum() == pytest.approx(cams[camera].sum(), rel=1e-4)
        assert maps.overlay(source, camera).dtype == np.uint8


def test_the_explainer_leaves_the_policys_own_model_alone(tiny):
    obs = _obs(tiny, seed=1)
    before = tiny.act(obs, seed=3).chunk
    explainer = AttentionExplainer(tiny)
    explainer.explain(obs, format_target(RATIONALE, [2, 7]))
    assert tiny.backbone.config._attn_implementation != "eager"
    assert explainer.backbone.config._attn_implementation == "eager"
    # the copy shares the weights (no second model in memory)
    ours = dict(explainer.backbone.named_parameters())
    for name, p in tiny.backbone.named_parameters():
        assert ours[name].data_ptr() == p.data_ptr()
    np.testing.assert_array_equal(tiny.act(obs, seed=3).chunk, before)


def test_bad_layers_are_named(tiny):
    with pytest.raises(ValueError, match="layers"):
        AttentionExplainer(tiny, layers=[0])
    with pytest.raises(ValueError, match="layers"):
        AttentionExplainer(tiny, layers=[99])


@pytest.fixture(scope="module")
def mini():
    return VLAPolicy.from_pretrained(ROOT / DEMO_MODEL, device="cpu")


def test_the_shipped_policys_head_looks_at_the_cube_it_must_pick(mini):
    """On a rendered held-out scene the head's attention is densest around the red cube."""
    h, w = mini.config.image_size
    with TabletopEnv() as env:
        env.reset("pick_red_cube", seed=100005)
        image, _ = env.render(w, h, depth=False)
        cube = env.project(env.object_position("red_cube")[None], w, h)[0]
        state = np.append(env.arm_q(), env.gripper_opening()).astype(np.float32)
    obs = Observation({"scene": image}, state, "pick up the red cube")
    maps = AttentionExplainer(mini).explain(obs, generate=False)
    assert maps.sources == [ACTION_HEAD]
    radius = 20.0
    uniform = np.pi * radius ** 2 / (h * w)
    near_cube = maps.mass_within(ACTION_HEAD, "scene", cube, radius)
    assert near_cube > 2 * uniform, (near_cube, uniform)
    # keypoint tokens hand their share back to the patches: the head map is not just the
    # cross-attention onto image tokens
    explainer = AttentionExplainer(mini)
    features = torch.randn(1, mini.token_grid().shape[0], explainer.head.feature_dim)
    kp = explainer._keypoint_weights(features, torch.ones(1, features.shape[1]))
    assert kp.shape[1] == mini.config.head.keypoints
    np.testing.assert_allclose(kp.sum(0).numpy(), 1.0, rtol=1e-5)
    text = mini.token_grid()[:, 0] < 0
    assert float(kp[text].abs().sum()) == 0.0


def test_explain_writes_the_overlays_and_names_bad_input(tmp_path, capsys):
    images = []
    for i in range(1):
        path = tmp_path / f"cam{i}.png"
        Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(path)
        images += ["--image", str(path)]
    out = tmp_path / "out"
    rc = explain_main(["--model", "tiny", *images, "--instruction", "pick up the red cube",
                       "--out", str(out)])
    assert rc == 0
    assert (out / "explain_scene.png").is_file() and (out / "attention.json").is_file()
    assert (out / "action_head_scene.png").is_file()
    rc = explain_main(["--model", "tiny", *images, *images, "--instruction", "x",
                       "--out", str(out)])
    assert rc == 2 and "camera" in capsys.readouterr().err
    rc = explain_main(["--model", "tiny", "--out", str(out)])
    assert rc == 2 and "--dataset" in capsys.readouterr().err
    rc = explain_main(["--model", "tiny", *images, "--instruction", "x", "--layers", "a,b"])
    assert rc == 2 and "--layers" in capsys.readouterr().err


def test_the_check_compares_the_named_object_with_the_other_objects_not_the_tool(tmp_path):
    from roboalign_ros.apps.explain import attention_check
    from roboalign_ros.data import DatasetReader
    from roboalign_ros.recording import bulk

    cfg = bulk.BulkConfig(tmp_path / "d", ["pick_red_cube"], episodes=1, width=112, height=84,
                          progress=False).resolved()
    bulk.record_bulk(cfg)
    result = attention_check(AttentionExplainer(build_tiny_policy(seed=0)),
                             DatasetReader(cfg.root), frames=1)
    assert result["frames"] == 1 and result["rows"][0]["object"] == "red_cube"
    mass = result["rows"][0][ACTION_HEAD]["mass"]
    assert "tool" not in mass and "red_cube" in mass and len(mass) >= 2
    assert result["chance_wins"] == pytest.approx(1 / len(mass))
    assert 0 <= result["sources"][ACTION_HEAD]["named_mass"] <= 1
