"""Offline figures of a policy on held-out frames: what RoboAlign's reward measures.

:func:`token_prefix_accuracy` generates (greedy) reasoning + FAST action tokens for frames of
the held-out episodes (the last ``val_fraction`` of the dataset, as the training stages hold
them out) and scores them with the alignment reward's own action term: the longest common
prefix of generated and target FAST tokens over ``max(m, n)`` (RoboAlign's r_action with the
edge cases closed), plus how often the output had the right format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def token_prefix_accuracy(policy_dir, dataset, frames: int = 40, val_fraction: float = 0.1,
                          seed: int = 0) -> dict:
    """Mean FAST-token prefix accuracy and format rate of ``policy_dir`` on held-out frames."""
    import torch

    from roboalign_ros.model import VLAPolicy
    from roboalign_ros.training.rewards import action_prefix_reward
    from roboalign_ros.training.samples import FrameSamples, open_datasets, split_episodes

    policy = VLAPolicy.from_pretrained(Path(policy_dir), device="cpu")
    pc = policy.config
    readers = open_datasets([dataset])
    _, val = split_episodes(len(readers[0]), val_fraction)
    reasoning = "none" if pc.reasoning_every == 0 else "latest"
    samples = FrameSamples(readers, [dataset], pc.horizon, pc.camera_names, pc.state_dim, [val],
                           max_samples=frames, reasoning=reasoning, episode_cache=64)
    accuracies, formats = [], []
    torch.manual_seed(seed)
    with torch.inference_mode():
        for i in range(len(samples)):
            s = samples[i]
            inputs = policy.encode_observation(s.observation)
            parsed, _ = policy.generate(inputs)
            target = policy.tokenize_chunk(s.chunk)
            accuracies.append(action_prefix_reward(parsed.action_tokens or [], target))
            formats.append(1.0 if parsed.format_ok else 0.0)
    return {"frames": len(accuracies),
            "prefix_accuracy": float(np.mean(accuracies)) if accuracies else 0.0,
            "format_rate": float(np.mean(formats)) if formats else 0.0}
