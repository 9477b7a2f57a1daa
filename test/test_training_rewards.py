"""RoboAlign reward: prefix fraction with the edge cases closed, format reward, distance term."""

import numpy as np
import pytest

from roboalign_ros.model.reasoning import format_target
from roboalign_ros.training.rewards import (
    GRPOReward,
    action_prefix_reward,
    common_prefix_length,
    distance_reward,
    roboalign_reward,
)


@pytest.mark.parametrize("gen,target,expected", [
    ([1, 2, 3], [1, 2, 3], 1.0),                 # exact
    ([9, 2, 3], [1, 2, 3], 0.0),                 # no match: first token wrong
    ([], [1, 2, 3], 0.0),                        # no action tokens at all
    ([1, 2], [1, 2, 3, 4], 0.5),                 # shorter: prefix / m
    ([1, 2, 3, 4, 5, 6], [1, 2, 3], 0.5),        # full match + 3 extra tokens: m / n
    ([1, 2, 3, 7], [1, 2, 3], 0.75),             # one extra token after a full match
    ([1, 5, 3], [1, 2, 3], 1 / 3),               # later tokens after a mismatch don't count
    ([], [], 1.0),                               # empty target (never produced by FAST)
    ([1], [], 0.0),
])
def test_prefix_reward_edge_cases(gen, target, expected):
    assert action_prefix_reward(gen, target) == pytest.approx(expected)


def test_extra_tokens_never_tie_exact_answer():
    target = [4, 5, 6]
    exact = action_prefix_reward(target, target)
    for extra in range(1, 5):
        assert action_prefix_reward(target + [0] * extra, target) < exact


def test_common_prefix():
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([], [1]) == 0


def test_full_reward_format_and_action():
    target = [3, 1, 4]
    good = format_target("move left", target)
    r = roboalign_reward(good, target, num_action_tokens=10)
    assert (r.total, r.format, r.action) == (1.0, 1.0, 1.0)
    # wrong tokens, right format
    r = roboalign_reward(format_target("x", [0, 0, 0]), target, 10)
    assert (r.format, r.action, r.total) == (1.0, 0.0, 0.5)
    # right tokens, broken format (trailing text) -> r_format 0, r_action still counted
    r = roboalign_reward(good + " and more", target, 10)
    assert (r.format, r.action, r.total) == (0.0, 1.0, 0.5)
    # unparseable garbage
    r = roboalign_reward("blah", target, 10)
    assert r.total == 0.0


def test_distance_term_weighting():
    from roboalign_ros.model.action_tokenizer import BinningActionTokenizer

    tok = BinningActionTokenizer(horizon=2, action_dim=1, n_bins=16)
    chunk = np.array([[0.5], [-0.5]], np.float32)
    ids = tok.encode(chunk)
    assert distance_reward(ids, chunk, tok) > 0.7
    assert distance_reward([], chunk, tok) == 0.0
    r = roboalign_reward(format_target(None, ids), ids, tok.vocab_size, tok, chunk,
                         distance_weight=0.5)
    assert 0.9 < r.total <= 1.0 and r.distance is not None
    with pytest.raises(ValueError):
        roboalign_reward("x", ids, distance_weight=0.5)


class _Tok:
    """Stand-in tokenizer: id i -> text piece."""

    eos_token_id, pad_token_id = 0, 1
    pieces = {0: "<eos>", 1: "<pad>", 2: "</think><answer><ACTION_START>", 3: "<ACT_1>",
              4: "<ACT_2>", 5: "<ACTION_END></answer>"}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


class _ActTok:
    vocab_size = 8


def test_grpo_reward_reads_ids_and_logs():
    fn = GRPOReward(_Tok(), _ActTok())
    logged = {}
    out = fn(completion_ids=[[2, 3, 4, 5, 0], [2, 3, 5, 0, 1], [3, 3]],
             target_tokens=[[1, 2], [1, 2], [1, 2]],
             log_metric=lambda k, v: logged.__setitem__(k, v))
    assert out == [1.0, pytest.approx(0.75), pytest.approx(0.0)]
    assert logged["reward/format"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        fn(completion_ids=[[2]])
