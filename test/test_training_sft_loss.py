"""ReFineVLA loss spans and the SFT inputs they are computed on."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from roboalign_ros.training.sft import split_losses

START = 7


def test_split_losses_spans_and_weights():
    torch.manual_seed(0)
    labels = torch.tensor([[-100, -100, 1, 2, START, 3, 4, -100],
                           [-100, 5, START, 6, -100, -100, -100, -100]])
    logits = torch.randn(2, 8, 10)
    l_act, l_rea, n_act, n_rea = split_losses(logits, labels, START)
    assert (n_act, n_rea) == (5, 3)  # [START,3,4] + [START,6] ; [1,2] + [5]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].clamp(min=0),
                         reduction="none")
    tgt = labels[:, 1:]
    act = torch.tensor([[0, 0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    rea = (tgt != -100) & ~act
    torch.testing.assert_close(l_act, ce[act].mean())
    torch.testing.assert_close(l_rea, ce[rea].mean())


def test_split_losses_without_reasoning_tokens():
    labels = torch.tensor([[-100, START, 3, 4]])
    l_act, l_rea, n_act, n_rea = split_losses(torch.randn(1, 4, 10), labels, START)
    assert n_rea == 0 and float(l_rea) == 0.0 and n_act == 3


def test_split_losses_over_processes_average_to_the_batch_mean():
    """Each process divides by the global token counts / 2: the mean is the batch's loss."""
    torch.manual_seed(0)
    labels = torch.tensor([[-100, 1, START, 3, 4, 5, 6, -100],
                           [-100, -100, 2, 5, START, 3, -100, -100]])
    logits = torch.randn(2, 8, 10)
    whole = split_losses(logits, labels, START)
    rows = [(logits[i:i + 1], labels[i:i + 1]) for i in range(2)]  # one row per process
    plain = [split_losses(lg, lb, START) for lg, lb in rows]
    total = torch.tensor([sum(p[2] for p in plain), sum(p[3] for p in plain)])  # all-reduce
    shared = [split_losses(lg, lb, START, lambda c: total.clamp(min=1) / 2) for lg, lb in rows]
    for k in range(2):  # action, reasoning
        torch.testing.assert_close((shared[0][k] + shared[1][k]) / 2, whole[k])
    # each process's own token mean would weight the rows' tokens unequally
    assert abs(float((plain[0][0] + plain[1][0]) / 2 - whole[0])) > 1e-3


@pytest.fixture(scope="module")
def policy():
    from roboalign_ros.model import build_tiny_policy

    return build_tiny_policy(action_dim=3, horizon=4, image_size=(56, 56))


def test_sft_inputs_label_exactly_the_target(policy):
    """What the SFT loss relies on from ``VLAPolicy.sft_inputs``."""
    from roboalign_ros.model import Observation

    rng = np.random.default_rng(0)
    obs = [Observation({"scene": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)},
                       np.zeros(3, np.float32), t) for t in ("pick up the cube", "open it")]
    chunks = [np.zeros((4, 3), np.float32), np.full((4, 3), 0.5, np.float32)]
    reasons = ["The cube is right.", None]
    inputs = policy.sft_inputs(obs, reasons, chunks)
    prompt = policy.encode_observation(obs)
    tok = policy.tokenizer
    for i in range(2):
        n = int(prompt["attention_mask"][i].sum())
        ids = inputs["input_ids"][i]
        assert torch.equal(ids[:n], prompt["input_ids"][i, :n])  # prompt tokens unchanged
        lab = inputs["labels"][i]
        assert (lab[:n] == -100).all()
        target = tok.decode(lab[lab != -100].tolist(), skip_special_tokens=False)
        expected = policy.format_target(reasons[i], chunks[i])[len("<think>"):] + tok.eos_token
        assert target == expected
    assert inputs["pixel_values"].shape[0] == prompt["pixel_values"].shape[0]
    out = policy.backbone(**{k: v for k, v in inputs.items() if k != "labels"})
    assert out.logits.shape[:2] == inputs["input_ids"].shape


def test_localization_probe_trains_the_vision_tower(policy):
    """The probe's loss reaches the vision tower: the signal it exists to give."""
    from roboalign_ros.model import Observation
    from roboalign_ros.training.localization import LocalizationProbe
    from roboalign_ros.training.samples import Sample
    from roboalign_ros.training.sft import sft_loss, vision_tower

    rng = np.random.default_rng(1)
    batch = [Sample(Observation({"scene": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)},
                                np.zeros(3, np.float32), "pick up the cube"),
                    np.zeros((4, 3), np.float32), "The cube is left.", (0, 0, i),
                    np.array([0.1 * i, 0.3, -0.2 * i], np.float32)) for i in range(2)]
    from roboalign_ros.model import backbone as bb

    hidden = bb.text_config(policy.backbone).hidden_size
    probe = LocalizationProbe(hidden, 4, 1, [0, 2], [0.0, 0.0], [0.1, 0.1])
    policy.backbone.zero_grad()
    loss, metrics = sft_loss(policy.backbone, policy, batch, 0.3, probe, 1.0,
                             policy.token_grid())
    loss.backward()
    assert metrics["loss_localization"] > 0 and metrics["localization_error"] > 0
    assert metrics["loss"] > metrics["loss_action"] + 0.3 * metrics["loss_reasoning"]
    grads = [p.grad for p in vision_tower(policy.backbone).parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    policy.backbone.zero_grad()
    with pytest.raises(ValueError, match="environment_state"):
        sft_loss(policy.backbone, policy, [Sample(batch[0].observation, batch[0].chunk, None,
                                                  (0, 0, 0))], 0.3, probe, 1.0,
                 policy.token_grid())


def test_localization_needs_scene_state_in_the_dataset(tmp_path, policy):
    from roboalign_ros.data.synthetic import write_synthetic_dataset
    from roboalign_ros.training.config import ConfigError
    from roboalign_ros.training.localization import localization_probe
    from roboalign_ros.training.samples import open_datasets

    write_synthetic_dataset(tmp_path / "d", episodes=1, frames=4).close()
    with pytest.raises(ConfigError, match="localization_weight.*environment_state"):
        localization_probe(open_datasets([tmp_path / "d"]), policy, 4)
