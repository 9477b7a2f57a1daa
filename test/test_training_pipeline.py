"""End to end on the tiny model: sft -> align (GRPO) -> head, each checkpoint loads in the next.

Also: SFT resume reproduces an uninterrupted run, LoRA and freezing options, dataset errors.
Small on purpose (tiny Qwen2.5-VL, 56x56 images, horizon 4): a few CPU minutes at most.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from roboalign_ros.model import Observation, VLAPolicy
from roboalign_ros.training import ConfigError, run_align, run_head, run_sft
from roboalign_ros.training.align import reward_curve

POLICY = {"horizon": 4, "image_size": [56, 56], "head_width": 32, "head_layers": 1,
          "head_heads": 2, "action_vocab_size": 64, "attn_implementation": "sdpa",
          "policy_overrides": {"max_new_tokens": 24}}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from roboalign_ros.data.synthetic import write_synthetic_dataset
    from roboalign_ros.model.tiny import build_random_backbone

    root = tmp_path_factory.mktemp("pipeline")
    write_synthetic_dataset(root / "ds", episodes=3, frames=20, cameras={"scene": (48, 64)}).close()
    model, processor = build_random_backbone("tiny", image_size=(56, 56))
    model.save_pretrained(root / "backbone")
    processor.save_pretrained(root / "backbone")
    return root


def _run(out, **kw):
    return {"run": {"output_dir": str(out), "progress": False}, **kw}


@pytest.fixture(scope="module")
def sft(work):
    # one prompt, memorised far enough that sampled completions are sometimes right (for GRPO)
    cfg = _run(work / "sft", data={"roots": [str(work / "ds")], "max_samples": 1},
               policy={"backbone": str(work / "backbone"), **POLICY}, reasoning="none",
               learning_rate=3e-3, lr_scheduler="constant", warmup_ratio=0.0, batch_size=2,
               max_steps=65)
    final = run_sft(cfg)
    return final, json.loads((work / "sft" / "sft_history.json").read_text())


def test_sft_loss_falls(sft):
    _, hist = sft
    losses = [h["loss"] for h in hist]
    assert len(losses) == 65
    assert np.mean(losses[-5:]) < 0.25 * np.mean(losses[:5])
    assert all(h["tokens_action"] > 0 for h in hist)


def _obs(shape=(48, 64)):
    rng = np.random.default_rng(0)
    return Observation(images={"scene": rng.integers(0, 255, (*shape, 3), dtype=np.uint8)},
                       state=np.zeros(7, np.float32), instruction="pick up the red cube")


def test_sft_checkpoint_is_a_policy(sft, work):
    final, _ = sft
    p = VLAPolicy.from_pretrained(final, device="cpu")
    assert p.config.horizon == 4 and p.config.action_dim == 7
    out = p.predict(_obs(), seed=0)
    assert out.chunk.shape == (4, 7) and np.all(np.isfinite(out.chunk))
    ckpt = work / "sft" / "checkpoint-65"
    assert (ckpt / "COMPLETE").is_file()
    VLAPolicy.from_pretrained(ckpt, device="cpu")


@pytest.fixture(scope="module")
def align(sft, work):
    cfg = _run(work / "align", data={"roots": [str(work / "ds")], "max_samples": 1},
               policy={"checkpoint": str(sft[0])}, group_size=8, learning_rate=3e-4,
               beta=0.0, max_steps=30, max_completion_length=28, temperature=1.0)
    cfg["run"]["save_every"] = 15
    final = run_align(cfg)
    return final, json.loads((work / "align" / "align_history.json").read_text())


def test_grpo_mean_reward_rises(align):
    _, hist = align
    rewards = reward_curve(hist)
    assert len(rewards) == 30
    first, last = np.mean(rewards[:10]), np.mean(rewards[-10:])
    assert last > first + 0.05, rewards
    assert any("reward/format" in h for h in hist)
    assert any("reward/action_prefix" in h for h in hist)


def test_align_checkpoints_load(align, work):
    final, _ = align
    ckpt = work / "align" / "checkpoint-15"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "backbone" / "model.safetensors").is_file()
    p = VLAPolicy.from_pretrained(ckpt, device="cpu")
    # the saved processor keeps the original chat template (no GRPO <think> prefill)
    assert not p.processor.chat_template.endswith("<think>{% endif %}")
    assert p.config.horizon == 4
    VLAPolicy.from_pretrained(final, device="cpu")
    assert any((work / "align" / "tb").iterdir())


@pytest.fixture(scope="module")
def head(align, work):
    cfg = _run(work / "head", data={"roots": [str(work / "ds")], "val_fraction": 0.34},
               policy={"checkpoint": str(align[0])}, context="none", learning_rate=3e-3,
               warmup_ratio=0.0, batch_size=16, max_steps=100, eval_num_steps=4)
    final = run_head(cfg)
    return final, json.loads((work / "head" / "head_metrics.json").read_text())


def test_head_beats_mean_chunk_baseline(head, work):
    _, metrics = head
    assert metrics["samples"] == 40 and metrics["train_samples"] == 20
    assert metrics["mse"] < 0.7 * metrics["baseline_mse"], metrics
    assert list((work / "head" / "features").glob("*.safetensors"))


def test_head_policy_backbone_is_frozen_and_predicts(head, align):
    final, _ = head
    a = load_file(align[0] / "backbone" / "model.safetensors")
    b = load_file(final / "backbone" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    p = VLAPolicy.from_pretrained(final, device="cpu")
    out = p.predict(_obs(), seed=1)
    assert out.chunk.shape == (4, 7) and np.all(np.isfinite(out.chunk))


# ---------------------------------------------------------------------------- SFT options
def _small_sft(work, out, **kw):
    base = dict(data={"roots": [str(work / "ds")], "max_samples": 6},
                policy={"backbone": str(work / "backbone"), **POLICY}, reasoning="none",
                learning_rate=1e-3, lr_scheduler="constant", warmup_ratio=0.0, batch_size=2)
    base.update(kw)
    return _run(out, **base)


def _weights(path):
    return load_file(path / "backbone" / "model.safetensors")


def test_sft_resume_matches_uninterrupted_run(work, tmp_path):
    straight = run_sft(_small_sft(work, tmp_path / "a", max_steps=4))
    cfg = _small_sft(work, tmp_path / "b", max_steps=2)
    run_sft(cfg)
    cfg["max_steps"] = 4  # rerun in the same output_dir: resumes from checkpoint-2
    resumed = run_sft(cfg)
    hist = json.loads((tmp_path / "b" / "sft_history.json").read_text())
    straight_hist = json.loads((tmp_path / "a" / "sft_history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2, 3, 4]  # the checkpoint kept steps 1-2
    assert [h["loss"] for h in hist] == [h["loss"] for h in straight_hist]
    a, b = _weights(straight), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_sft_freezing(work, tmp_path):
    out = run_sft(_small_sft(work, tmp_path / "f", max_steps=2, freeze_lower_layers=2,
                             freeze_vision=True))
    base = load_file(work / "backbone" / "model.safetensors")
    new = _weights(out)
    vis = [k for k in base if k.startswith("visual.")]
    low = [k for k in base if k.startswith(("model.layers.0.", "model.layers.1."))]
    up = [k for k in base if k.startswith("model.layers.3.") and "proj.weight" in k]
    assert vis and low and up
    assert all(torch.equal(base[k], new[k]) for k in vis + low)
    assert any(not torch.equal(base[k], new[k]) for k in up)


def test_sft_lora_saves_merged_backbone(work, tmp_path):
    out = run_sft(_small_sft(work, tmp_path / "l", max_steps=2,
                             lora={"enabled": True, "r": 4, "alpha": 8}))
    w = _weights(out)
    assert not any("lora" in k or "base_layer" in k for k in w)
    base = load_file(work / "backbone" / "model.safetensors")
    changed = [k for k in base if k.startswith("model.layers.") and "q_proj.weight" in k
               and not torch.equal(base[k], w[k])]
    assert changed
    VLAPolicy.from_pretrained(out, device="cpu")


def test_bad_dataset_errors(work, tmp_path):
    with pytest.raises(ConfigError, match=r"data.roots\[0\].*not found"):
        run_sft(_small_sft(work, tmp_path / "x", data={"roots": [str(tmp_path / "nope")]}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a readable dataset"):
        run_sft(_small_sft(work, tmp_path / "x", data={"roots": [str(tmp_path / "empty")]}))
    with pytest.raises(ConfigError, match="lacks camera"):
        run_sft(_small_sft(work, tmp_path / "x", max_steps=1,
                           policy={"backbone": str(work / "backbone"), **POLICY,
                                   "camera_names": ["wrist"]}))


def test_sft_two_datasets_with_rationales(work, tmp_path):
    import shutil

    from roboalign_ros.training.rationale import RationaleStore

    shutil.copytree(work / "ds", tmp_path / "ds")
    store = RationaleStore(tmp_path / "ds")
    text = ("<Observation> a cube\n<Situation Analysis> free\n<Spatial Reasoning> right\n"
            "<Task Planning> 1. grasp")
    store.add(0, 0, text)
    cfg = _small_sft(work, tmp_path / "o", max_steps=2, reasoning="latest",
                     data={"roots": [str(tmp_path / "ds"), str(work / "ds")], "frame_stride": 10})
    run_sft(cfg)
    hist = json.loads((tmp_path / "o" / "sft_history.json").read_text())
    assert len(hist) == 2 and all(h["tokens_reasoning"] > 0 for h in hist)
    from roboalign_ros.training.samples import FrameSamples, open_datasets

    roots = [str(tmp_path / "ds"), str(work / "ds")]
    fs = FrameSamples(open_datasets(roots), roots, 4, ["scene"], 7, [[0, 1, 2]] * 2, 10)
    assert len(fs) == 12
    assert fs.reasoning_for(0, 0, 10) == text and fs.reasoning_for(1, 0, 10) is None
