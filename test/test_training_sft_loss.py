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
