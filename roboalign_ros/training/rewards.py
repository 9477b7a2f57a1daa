"""RoboAlign rewards for GRPO: format reward, FAST-token prefix reward, optional distance term.

The paper's reward is ``r = (r_format + r_action) / 2`` with ``r_format`` in {0, 1} and
``r_action = (longest common prefix of generated and target FAST tokens) / m`` (m = target
length). The paper leaves three cases open; our choice (:func:`action_prefix_reward`) is

    r_action = prefix / max(m, n)        (n = number of generated action tokens)

* no match (first token wrong, or no action tokens at all)  -> 0;
* shorter output (n < m)                                     -> prefix / m (as in the paper);
* longer output / extra tokens after a full match (n > m)    -> m / n < 1, i.e. every extra
  token costs reward, so "full match + garbage" never ties the exact answer;
* exact match                                                -> 1;
* empty target (m = 0; FAST never produces one)              -> 1 if n == 0 else 0.

The optional distance term decodes the generated tokens with the action tokenizer (repairs
included) and scores ``exp(-mean|chunk - target| / distance_scale)`` in normalized units. With
weight ``w`` the reward becomes ``(r_format + (1 - w) * r_action + w * r_distance) / 2``, which
stays in [0, 1] and equals the paper's reward for ``w = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model.reasoning import THINK_START, ParsedGeneration, parse_generation


def common_prefix_length(generated, target) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for a, b in zip(generated, target):
        if int(a) != int(b):
            break
        n += 1
    return n


def action_prefix_reward(generated, target) -> float:
    """``prefix / max(m, n)``: RoboAlign's r_action with the open edge cases closed (see module)."""
    generated, target = list(generated), list(target)
    m, n = len(target), len(generated)
    if m == 0:
        return 1.0 if n == 0 else 0.0
    return common_prefix_length(generated, target) / max(m, n)


def format_reward(parsed: ParsedGeneration) -> float:
    """1.0 iff the generation followed ``<think>..</think><answer><ACTION_START>..`` exactly."""
    return 1.0 if parsed.format_ok else 0.0


def distance_reward(generated, target_chunk: np.ndarray, action_tokenizer,
                    scale: float = 0.25) -> float:
    """``exp(-mean|decode(generated) - target| / scale)`` in normalized units (0 if undecodable)."""
    if not list(generated):
        return 0.0
    chunk = action_tokenizer.decode(list(generated)).chunk
    err = float(np.mean(np.abs(np.asarray(chunk, np.float64) - np.asarray(target_chunk))))
    return math.exp(-err / scale) if math.isfinite(err) else 0.0


@dataclass
class RewardBreakdown:
    """Components of one completion's reward."""

    total: float
    format: float
    action: float
    distance: float | None
    parsed: ParsedGeneration


def roboalign_reward(text: str, target_tokens, num_action_tokens: int | None = None,
                     action_tokenizer=None, target_chunk=None, distance_weight: float = 0.0,
                     distance_scale: float = 0.25) -> RewardBreakdown:
    """Reward of one generated text (starting at the assistant turn, ``<think>`` included)."""
    parsed = parse_generation(text, num_action_tokens)
    r_format = format_reward(parsed)
    r_action = action_prefix_reward(parsed.action_tokens, target_tokens)
    r_dist = None
    if distance_weight > 0:
        if action_tokenizer is None or target_chunk is None:
            raise ValueError("distance_weight > 0 needs action_tokenizer and target_chunk")
        r_dist = distance_reward(parsed.action_tokens, target_chunk, action_tokenizer,
                                 distance_scale)
        total = (r_format + (1 - distance_weight) * r_action + distance_weight * r_dist) / 2
    else:
        total = (r_format + r_action) / 2
    return RewardBreakdown(total, r_format, r_action, r_dist, parsed)


class GRPOReward:
    """TRL reward function: decodes ``completion_ids`` with special tokens kept.

    TRL decodes completions with ``skip_special_tokens=True``, which would drop the action
    tokens, so this reads the ids. Dataset columns used: ``target_tokens`` (local FAST
    indices) and, for the distance term, ``target_chunk`` (normalized [H, D] as nested lists).
    The prompt ends with a pre-filled ``<think>``, so it is prepended to every completion.
    """

    __name__ = "roboalign_reward"

    def __init__(self, tokenizer, action_tokenizer, distance_weight: float = 0.0,
                 distance_scale: float = 0.25):
        self.tokenizer, self.action_tokenizer = tokenizer, action_tokenizer
        self.distance_weight, self.distance_scale = distance_weight, distance_scale
        self.strip = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
        self.last: list[RewardBreakdown] = []

    def text(self, ids) -> str:
        """Completion ids -> text starting with ``<think>`` (end-of-turn / padding removed)."""
        ids = [int(t) for t in ids if int(t) not in self.strip]
        return THINK_START + self.tokenizer.decode(ids, skip_special_tokens=False)

    def __call__(self, prompts=None, completions=None, completion_ids=None, target_tokens=None,
                 target_chunk=None, log_metric=None, **_) -> list[float]:
        """Rewards for a batch of completions (TRL calling convention)."""
        if completion_ids is None or target_tokens is None:
            raise ValueError("GRPOReward needs completion_ids and the target_tokens column")
        out = []
        for i, ids in enumerate(completion_ids):
            chunk = None if target_chunk is None else np.asarray(target_chunk[i], np.float32)
            out.append(roboalign_reward(
                self.text(ids), target_tokens[i], self.action_tokenizer.vocab_size,
                self.action_tokenizer, chunk, self.distance_weight, self.distance_scale))
        self.last = out
        if log_metric is not None and out:
            log_metric("reward/format", float(np.mean([r.format for r in out])))
            log_metric("reward/action_prefix", float(np.mean([r.action for r in out])))
            if self.distance_weight > 0:
                log_metric("reward/distance", float(np.mean([r.distance for r in out])))
        return [r.total for r in out]
