"""Both action paths can fit a handful of chunks on CPU (a few seconds each).

Stated factors: SFT cross-entropy on the token path falls >= 50x in 120 steps and greedy
decoding then reproduces every target's FAST tokens exactly; the flow-matching loss of the head
falls >= 4x in 400 steps and its sampled chunks are >= 2x closer to the targets than zero.
"""

import numpy as np
import pytest
import torch

from roboalign_ros.model import Observation, build_tiny_policy
from roboalign_ros.model.tiny import synthetic_chunks

INSTRUCTIONS = ["pick up the red cube", "open the drawer", "push the blue block",
                "close the drawer"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small models run faster (and far steadier on a shared machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    pol = build_tiny_policy(action_dim=4, horizon=8, reasoning_every=0, seed=0)
    rng = np.random.default_rng(0)
    obs = [Observation({"scene": rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)},
                       rng.uniform(-1, 1, 4).astype(np.float32), s) for s in INSTRUCTIONS]
    return pol, obs, synthetic_chunks(4, 8, 4, seed=5)


def test_head_overfits(setup):
    pol, obs, chunks = setup
    feats, mask = pol.backbone_features(pol.encode_observation(obs, pol.feature_suffix(None)))
    state = torch.as_tensor(np.stack([pol.normalizer.normalize("state", o.state) for o in obs]))
    x0 = torch.as_tensor(chunks)
    head = pol.head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(400):
        loss = head.loss(feats, state, x0, mask, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) / 4
    head.eval()
    sample = head.sample(feats, state, mask, generator=torch.Generator().manual_seed(0),
                         num_steps=10)
    assert (sample - x0).abs().mean() < 0.5 * x0.abs().mean()


def test_token_path_overfits(setup):
    pol, obs, chunks = setup
    robot_chunks = [pol.normalizer.unnormalize("action", c) for c in chunks]
    inputs = pol.sft_inputs(obs, [None] * 4, robot_chunks)
    model = pol.backbone.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = model(**inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 50
    model.eval()
    for o, c in zip(obs, robot_chunks):
        parsed, _ = pol.generate(pol.encode_observation(o), max_new_tokens=48)
        assert parsed.format_ok, parsed.problems
        assert parsed.action_tokens == pol.tokenize_chunk(c)
