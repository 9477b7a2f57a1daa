"""VLAPolicy on a tiny random Qwen2.5-VL: predict, seeds, save/load, bad checkpoints."""

import json
import shutil

import numpy as np
import pytest
import torch

from roboalign_ros.model import (
    BackboneNotFoundError,
    CheckpointError,
    Observation,
    VLAConfig,
    VLAPolicy,
    build_tiny_policy,
)
from roboalign_ros.model.config import default_feature_layer
from roboalign_ros.model.reasoning import parse_generation


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small models run faster (and far steadier on a shared machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_obs(seed=0, instruction="pick up the red cube", size=112):
    rng = np.random.default_rng(seed)
    return Observation(images={"scene": rng.integers(0, 255, (size, size, 3), dtype=np.uint8)},
                       state=rng.uniform(-1, 1, 7).astype(np.float32), instruction=instruction)


@pytest.fixture(scope="module")
def policy():
    return build_tiny_policy(action_dim=7, horizon=10, seed=0)


@pytest.fixture(scope="module")
def checkpoint(policy, tmp_path_factory):
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def copy_ckpt(checkpoint, tmp_path):
    return shutil.copytree(checkpoint, tmp_path / "ckpt")


def test_predict_shapes_and_timings(policy):
    policy.reset()
    out = policy.predict(make_obs())
    assert out.chunk.shape == (10, 7) and out.chunk.dtype == np.float32
    assert np.all(np.isfinite(out.chunk))
    assert out.reasoning_fresh and out.generated_text.startswith("<think>")
    assert isinstance(out.reasoning, (str, type(None))) and isinstance(out.problems, list)
    for key in ("preprocess", "generate", "features", "head", "total"):
        assert out.timings[key] >= 0
    assert out.timings["total"] < 5.0


def test_seed_determinism(policy):
    a, b = policy.predict(make_obs(), seed=7), policy.predict(make_obs(), seed=7)
    c = policy.predict(make_obs(), seed=8)
    np.testing.assert_array_equal(a.chunk, b.chunk)
    assert not np.array_equal(a.chunk, c.chunk)
    other = build_tiny_policy(action_dim=7, horizon=10, seed=0)
    np.testing.assert_array_equal(other.predict(make_obs(), seed=7).chunk, a.chunk)


def test_reasoning_cache_every_n():
    pol = build_tiny_policy(reasoning_every=3, max_new_tokens=4)
    fresh = [pol.predict(make_obs()).reasoning_fresh for _ in range(6)]
    assert fresh == [True, False, False, True, False, False]
    assert pol.predict(make_obs(instruction="open the drawer")).reasoning_fresh
    off = build_tiny_policy(reasoning_every=0)
    out = off.predict(make_obs())
    assert out.reasoning is None and "generate" not in out.timings


def test_head_context_none_keeps_generated_text_out_of_the_action_path(monkeypatch):
    pol = build_tiny_policy(reasoning_every=1, max_new_tokens=4)
    suffixes = []
    encode = pol.encode_observation

    def spy(obs, suffix=""):
        suffixes.append(suffix)
        return encode(obs, suffix)

    monkeypatch.setattr(pol, "encode_observation", spy)
    monkeypatch.setattr(pol, "generate", lambda inputs, max_new_tokens=None: (
        parse_generation("<think>the cube is left</think><answer><ACTION_START><ACTION_END>"
                         "</answer>"), "<think>the cube is left</think>"))
    pol.predict(make_obs())
    assert suffixes[-1] == pol.feature_suffix("the cube is left")   # ReFineVLA: reasoning
    pol.config.head_context = "none"
    out = pol.predict(make_obs())
    assert out.reasoning == "the cube is left"                       # still generated ...
    assert suffixes[-1] == pol.feature_suffix(None)                  # ... but not read
    with pytest.raises(ValueError, match="head_context"):
        VLAConfig(head_context="text")


def test_act_on_a_reasoning_gives_what_predict_gives_and_never_generates(monkeypatch):
    pol = build_tiny_policy(reasoning_every=1, max_new_tokens=6)
    obs = make_obs()
    serial = pol.predict(obs, seed=3)
    thought = pol.reason(obs)
    assert thought.instruction == obs.instruction and thought.seconds > 0
    assert thought.text == serial.generated_text
    monkeypatch.setattr(pol, "generate", lambda *a, **k: pytest.fail("act generated"))
    out = pol.act(obs, thought, seed=3)
    np.testing.assert_array_equal(out.chunk, serial.chunk)   # head_context: reasoning
    assert out.reasoning == serial.reasoning and not out.reasoning_fresh
    blind = pol.act(obs, None, seed=3)                        # no reasoning finished yet
    assert blind.reasoning is None and blind.generated_text is None
    assert blind.chunk.shape == serial.chunk.shape


def test_features_stop_early_only_for_their_own_thread_while_another_generates():
    """The feature pass's early exit (a forward hook) must not cut a generation on another
    thread short: the reasoning and action paths share the model."""
    import threading

    pol = build_tiny_policy(reasoning_every=1, max_new_tokens=24)
    obs = make_obs()
    texts_alone = pol.reason(obs).text
    chunk_alone = pol.act(obs, None, seed=1).chunk
    texts, errors = [], []

    def think():
        try:
            for _ in range(3):
                texts.append(pol.reason(obs).text)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    thread = threading.Thread(target=think)
    thread.start()
    chunks = []
    while thread.is_alive():
        chunks.append(pol.act(obs, None, seed=1).chunk)
    thread.join()
    assert not errors and texts == [texts_alone] * 3
    assert chunks and all(np.allclose(c, chunk_alone, atol=1e-5) for c in chunks)


def test_token_action_source():
    pol = build_tiny_policy(max_new_tokens=4)
    pol.config.action_source = "tokens"
    out = pol.predict(make_obs())
    assert out.chunk.shape == (10, 7)  # random model: malformed tokens are repaired, reported
    assert out.problems


def test_observation_validation(policy):
    bad_img = make_obs()
    bad_img.images["scene"] = bad_img.images["scene"].astype(np.float32)
    cases = [(Observation({}, np.zeros(7, np.float32), "x"), "images"),
             (bad_img, "images"),
             (Observation(make_obs().images, np.zeros(3, np.float32), "x"), "state"),
             (Observation(make_obs().images, np.zeros(7, np.float32), ""), "instruction")]
    for obs, field in cases:
        with pytest.raises(ValueError, match=field):
            policy.predict(obs)


def test_images_are_resized_and_warmup(policy):
    assert policy.predict(make_obs(size=150), seed=0).chunk.shape == (10, 7)
    policy.warmup(calls=1)
    assert policy.predict(make_obs()).reasoning_fresh  # warmup reset the reasoning cache


def test_save_load_identical(policy, checkpoint):
    loaded = VLAPolicy.from_pretrained(checkpoint, device="cpu")
    policy.reset()
    a, b = policy.predict(make_obs(), seed=3), loaded.predict(make_obs(), seed=3)
    np.testing.assert_array_equal(a.chunk, b.chunk)
    assert a.generated_text == b.generated_text
    assert loaded.config == policy.config
    assert not list(checkpoint.rglob("*.bin")) and not list(checkpoint.rglob("*.pt"))


@pytest.mark.parametrize("victim, message", [
    ("vla_config.json", "vla_config.json"),
    ("normalization.json", "normalization.json"),
    ("head.safetensors", "head.safetensors"),
    ("action_tokenizer/tokenizer.json", "tokenizer.json"),
])
def test_missing_file_named(checkpoint, tmp_path, victim, message):
    ckpt = copy_ckpt(checkpoint, tmp_path)
    (ckpt / victim).unlink()
    with pytest.raises(CheckpointError, match=message):
        VLAPolicy.from_pretrained(ckpt, device="cpu")


def test_corrupted_files_named(checkpoint, tmp_path):
    ckpt = copy_ckpt(checkpoint, tmp_path)
    head = ckpt / "head.safetensors"
    head.write_bytes(head.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="head.safetensors"):
        VLAPolicy.from_pretrained(ckpt, device="cpu")
    (ckpt / "vla_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="vla_config.json"):
        VLAPolicy.from_pretrained(ckpt, device="cpu")


def test_head_config_mismatch_named(checkpoint, tmp_path):
    ckpt = copy_ckpt(checkpoint, tmp_path)
    cfg = json.loads((ckpt / "vla_config.json").read_text())
    cfg["head"]["layers"] = 3
    (ckpt / "vla_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="head.safetensors"):
        VLAPolicy.from_pretrained(ckpt, device="cpu")


def test_missing_backbone_names_path(checkpoint, tmp_path):
    ckpt = copy_ckpt(checkpoint, tmp_path)
    shutil.rmtree(ckpt / "backbone")
    with pytest.raises(BackboneNotFoundError, match="tiny-random"):
        VLAPolicy.from_pretrained(ckpt, device="cpu")
    missing = tmp_path / "no_such_model"
    with pytest.raises(BackboneNotFoundError, match=str(missing)):
        VLAPolicy.from_pretrained(ckpt, device="cpu", backbone=missing)
    with pytest.raises(BackboneNotFoundError, match="Hugging Face cache"):
        VLAPolicy.from_pretrained(ckpt, device="cpu", backbone="Qwen/Not-A-Real-Model-3B")
    with pytest.raises(CheckpointError, match="does not exist"):
        VLAPolicy.from_pretrained(tmp_path / "nothing", device="cpu")


def test_training_interface(policy):
    obs = [make_obs(0), make_obs(1, "open the drawer")]
    chunk = policy.normalizer.unnormalize("action", np.zeros((10, 7), np.float32))
    target = policy.format_target("reach the cube", chunk)
    assert target.startswith("<think>reach the cube</think><answer><ACTION_START><ACT_")
    inputs = policy.sft_inputs(obs, ["reach", None], [chunk, chunk])
    labels = inputs["labels"]
    n_act = [int(torch.isin(row, policy.token_ids["actions"]).sum()) for row in labels]
    assert n_act == [len(policy.tokenize_chunk(chunk))] * 2
    assert policy.backbone(**inputs).loss.isfinite()
    # features: the hooked early exit equals the full forward's hidden_states[layer]
    feats, mask = policy.backbone_features(inputs)
    assert policy.feature_layer == default_feature_layer(4) == 3
    full = policy.backbone(**{k: v for k, v in inputs.items() if k != "labels"},
                           output_hidden_states=True).hidden_states[policy.feature_layer]
    torch.testing.assert_close(feats, full)
    state = torch.zeros(2, 7)
    chunk_n = torch.zeros(2, 10, 7)
    assert policy.head.loss(feats, state, chunk_n, mask).isfinite()


def test_config_validation():
    with pytest.raises(ValueError, match="action_space"):
        VLAConfig(action_space="torque")
    with pytest.raises(ValueError, match="unknown"):
        VLAConfig.from_dict({"horizon": 4, "bogus": 1})
    assert default_feature_layer(28) == 18 and default_feature_layer(36) == 23


def test_shipped_model_configs_load():
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "config" / "policy").glob("*.yaml"))
    assert files
    for f in files:
        assert VLAConfig.load(f).backbone.startswith("Qwen/")
