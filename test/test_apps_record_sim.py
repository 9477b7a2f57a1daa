"""`roboalign record sim`: expert demos recorded through sim_node + recorder_node (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from roboalign_ros.apps.record_sim import parse_args

pytestmark = pytest.mark.ros


def test_arguments_are_checked():
    args = parse_args(["--task", "pick_red_cube", "--episodes", "2"])
    assert args.task == ["pick_red_cube"] and args.episodes == 2 and args.width == 128
    with pytest.raises(SystemExit):
        parse_args(["--episodes", "0"])


@pytest.mark.slow
def test_one_expert_episode_through_the_graph(tmp_path):
    from roboalign_ros.apps.record_sim import main
    from roboalign_ros.data import DatasetReader

    root = tmp_path / "demos"
    assert main(["--task", "pick_red_cube", "--episodes", "1", "--width", "64", "--height",
                 "64", "--root", str(root), "--quiet"]) == 0
    reader = DatasetReader(root)
    ep = reader.episode(0)
    assert ep.task == "pick up the red cube" and ep.info.success is True
    assert ep.info.source == "expert" and reader.cameras == {"scene": (64, 64)}
    assert len(ep) > 3 * reader.fps  # several seconds of motion
    assert ep.frames["scene"].std() > 5
    # commanded targets lead the measured joints: the arm follows the recorded actions
    lag = 3
    err = np.abs(ep.actions[:-lag, :6] - ep.states[lag:, :6]).max(axis=1)
    assert np.median(err) < 0.05
    assert ep.actions[:, 6].min() == 0.0 and ep.actions[0, 6] == 1.0  # opens, then grasps
