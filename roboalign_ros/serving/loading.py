"""Loading the policy a node serves: a checkpoint directory, or the random tiny demo policy."""

from __future__ import annotations

import numpy as np

TINY = "tiny"  # model_path value that builds a random tiny policy (demos and tests)


def checkpoint_cameras(model_path: str) -> list[str]:
    """The camera names a checkpoint expects, from its vla_config.json (no model is loaded).

    ``tiny``: its one ``scene`` camera. An unreadable config gives ``["scene"]``; loading the
    model then says what is wrong with it.
    """
    import json
    from pathlib import Path

    if model_path == TINY:
        return ["scene"]
    try:
        names = json.loads((Path(model_path) / "vla_config.json").read_text())["camera_names"]
        return [str(n) for n in names] or ["scene"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["scene"]


def load_policy(model_path: str, robot, device: str = "auto", reasoning_every: int = -1):
    """Load a checkpoint directory, or build the random tiny policy for ``model_path='tiny'``.

    The tiny policy is untrained: its chunks are noise around the robot's home pose (scaled to
    +-0.15 rad) so that a demo moves the arm gently inside the safety envelope.
    """
    from roboalign_ros.model import Normalizer, VLAPolicy, build_tiny_policy
    from roboalign_ros.model.tiny import synthetic_chunks

    if not model_path:
        raise ValueError("model_path: empty; give a checkpoint directory (save_pretrained "
                         f"layout) or '{TINY}' for the random demo policy")
    resolved = None if device == "auto" else device
    if model_path == TINY:
        names = list(robot.arm_joints) + ["gripper"]
        policy = build_tiny_policy(action_dim=len(names), state_dim=len(names),
                                   dimension_names=names, horizon=10, dt=0.1,
                                   device=resolved or "cpu")
        center = np.append(robot.home, 0.5).astype(np.float32)
        chunks = center + 0.15 * synthetic_chunks(256, 10, len(names), seed=1)
        policy.normalizer = Normalizer.fit(action=chunks, state=chunks[:, 0])
    else:
        policy = VLAPolicy.from_pretrained(model_path, device=resolved)
    if reasoning_every >= 0:
        policy.config.reasoning_every = reasoning_every
    return policy
