"""The action path compiled: one graph, no recompiles after warm-up, chunks as the eager path's.

On serving's tiny policy. Its head's output layer starts at zero (a chunk would then be the
noise alone, whatever the features), so the fixture gives it random weights: the chunks
compared here depend on the backbone and every head layer.

Tolerance of compiled against eager chunks: 1e-4 in robot units (the chunks span about +-1).
The compiled path pads the prompt to a fixed length and inductor fuses kernels, so the float
operations differ; measured: below 1e-6 on this policy and 1.3e-5 on the shipped mini policy.
"""

import logging

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from roboalign_ros.model import Observation
from roboalign_ros.model.policy import Reasoning
from roboalign_ros.model.reasoning import parse_generation
from roboalign_ros.robot import load_robot_config
from roboalign_ros.serving import load_policy

ATOL = 1e-4
INSTRUCTIONS = ["pick up the red cube", "put the red cube in the blue bowl",
                "push the green block to the left", "stack the red cube on the green block"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """One torch thread (steadier on a shared machine); dynamo's caches and counters cleared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(n)


def tiny_policy():
    policy = load_policy("tiny", load_robot_config("sim_arm"))
    torch.nn.init.normal_(policy.head.action_out.weight, std=0.5,
                          generator=torch.Generator().manual_seed(0))
    return policy


@pytest.fixture(scope="module")
def eager():
    return tiny_policy()


def make_obs(policy, i: int, instruction: str | None = None) -> Observation:
    rng = np.random.default_rng(i)
    h, w = policy.config.image_size
    return Observation({c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                        for c in policy.config.camera_names},
                       rng.normal(0, 0.1, policy.config.state_dim).astype(np.float32),
                       instruction or INSTRUCTIONS[i % len(INSTRUCTIONS)])


def reasoning(text: str, instruction: str) -> Reasoning:
    return Reasoning(parse_generation(f"<think>{text}</think>"), f"<think>{text}</think>",
                     instruction)


def graphs() -> int:
    return counters["stats"]["unique_graphs"]  # one more per (re)compile; compare differences


def test_sample_is_the_scheduler_loop(eager):
    """The head's Euler loop written out gives diffusers' scheduler steps bit for bit."""
    head = eager.head
    features = torch.randn(1, 20, head.feature_dim, generator=torch.Generator().manual_seed(1))
    state = torch.randn(1, head.state_dim)
    noise = torch.randn(1, head.horizon, head.action_dim)
    with torch.no_grad():
        context, bias = head.encode_context(features, None)
        x, scheduler = noise.clone(), head.scheduler
        scheduler.set_timesteps(head.cfg.num_steps)
        scheduler.set_begin_index(0)
        for t in scheduler.timesteps:
            v = head.velocity(x, t.expand(1), context, bias, state)
            x = scheduler.step(v.float(), t, x, return_dict=False)[0]
        assert torch.equal(head.sample(features, state, noise=noise), x)
        assert x.abs().max() > 0 and not torch.equal(x, noise)


def test_core_matches_act(eager):
    """The compilable core, run eagerly on its padded inputs, gives act's chunk."""
    core = eager.action_core()
    for i in range(3):
        obs = make_obs(eager, i)
        args = eager.action_core_inputs(obs, seed=i)
        assert args[0].shape == (1, eager._core_tokens)
        with torch.no_grad():
            chunk = eager.normalizer.unnormalize("action", core(*args)[0].numpy())
        np.testing.assert_allclose(chunk, eager.act(obs, seed=i).chunk, atol=ATOL, rtol=0)


def test_one_graph_and_no_recompiles_dynamo_only(eager):
    """Dynamo alone (backend "eager"): 0 breaks, and varied inputs reuse the warm graph."""
    policy = tiny_policy()
    obs = make_obs(policy, 0)
    summary = torch._dynamo.explain(policy.action_core())(*policy.action_core_inputs(obs))
    assert (summary.graph_count, summary.graph_break_count) == (1, 0), summary.break_reasons
    torch._dynamo.reset()

    start = graphs()
    policy.compile_action_path(backend="eager")
    policy.warmup(calls=1, reasoning=False)
    assert graphs() == start + 1
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(8):  # other images, states, instructions, reasoning texts and seeds
            obs = make_obs(policy, i)
            why = reasoning("the cube is " + "left " * i, obs.instruction) if i % 2 else None
            if i == 4:  # a generation in between (it sets state on the backbone) changes nothing
                why = policy.reason(obs)
            out = policy.act(obs, why, seed=i)
            assert "features_head" in out.timings and "features" not in out.timings
            np.testing.assert_allclose(out.chunk, eager.act(obs, why, seed=i).chunk, atol=ATOL,
                                       rtol=0)
    assert graphs() == start + 1


def test_a_longer_prompt_grows_the_fixed_length_once(eager, caplog):
    policy = tiny_policy()
    start = graphs()
    policy.compile_action_path(backend="eager")
    policy.warmup(calls=1, reasoning=False)
    tokens = policy._core_tokens
    obs = make_obs(policy, 1)
    long = reasoning("the red cube is on the left of the bowl " * 8, obs.instruction)
    with caplog.at_level(logging.WARNING, logger="roboalign_ros.model.policy"):
        out = policy.act(obs, long, seed=3)
    assert policy._core_tokens > tokens and policy._core_tokens % 32 == 0
    assert "exceeds the fixed length" in caplog.text and graphs() == start + 2
    np.testing.assert_allclose(out.chunk, eager.act(obs, long, seed=3).chunk, atol=ATOL, rtol=0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        policy.act(make_obs(policy, 2), long, seed=4)  # the new length is fixed now
        policy.act(make_obs(policy, 3), seed=5)        # and a short prompt pads to it


def test_config_switch_compiles_at_warmup(monkeypatch):
    policy = tiny_policy()
    obs = make_obs(policy, 0)
    before = policy.act(obs, seed=1)
    assert "features_head" not in before.timings  # eager by default
    calls = []
    original = type(policy).compile_action_path
    monkeypatch.setattr(policy, "compile_action_path",
                        lambda: calls.append(1) or original(policy, backend="eager"))
    policy.config.compile_action_path = True
    start = graphs()
    policy.warmup(calls=1, reasoning=False)
    assert calls == [1] and graphs() == start + 1
    after = policy.act(obs, seed=1)
    assert "features_head" in after.timings
    np.testing.assert_allclose(after.chunk, before.chunk, atol=ATOL, rtol=0)


def test_what_cannot_be_compiled_is_refused():
    policy = tiny_policy()
    policy.config.image_size = None
    with pytest.raises(ValueError, match="image_size"):
        policy.compile_action_path()
    policy = tiny_policy()
    policy.config.action_source = "tokens"
    with pytest.raises(ValueError, match="action_source"):
        policy.compile_action_path()


@pytest.mark.slow
def test_compiled_action_path_inductor(eager):
    """Inductor (what compile_action_path uses by default): one graph, 0 breaks, 0 recompiles
    over 100 calls after warm-up, chunks as the eager path's."""
    policy = tiny_policy()
    summary = torch._dynamo.explain(policy.action_core())(
        *policy.action_core_inputs(make_obs(policy, 0)))
    assert (summary.graph_count, summary.graph_break_count) == (1, 0), summary.break_reasons
    torch._dynamo.reset()

    policy.config.compile_action_path = True
    start = graphs()
    policy.warmup(reasoning=False)
    warm = graphs()
    assert warm == start + 1
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(100):
            obs = make_obs(policy, i)
            out = policy.act(obs, seed=i)
            if i % 10 == 0:
                np.testing.assert_allclose(out.chunk, eager.act(obs, seed=i).chunk, atol=ATOL,
                                           rtol=0)
    assert graphs() == warm
