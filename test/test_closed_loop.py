"""The simulated closed loop with the tiny model: chunks flow, the arm moves, safely."""

import numpy as np
import pytest

from roboalign_ros.apps.demo import run_closed_loop
from roboalign_ros.control.kinematics import Kinematics
from roboalign_ros.robot import load_robot_config

pytestmark = pytest.mark.ros


def test_closed_loop_moves_the_arm_inside_the_safety_envelope(tmp_path):
    stats = run_closed_loop(duration=30.0, task="pick_red_cube", seed=0, model="tiny",
                            device="cpu", camera_size=(160, 120), camera_rate=10.0,
                            log_dir=str(tmp_path), stop_on_success=False, quiet=True)
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
    assert len(stats.chunk_times) >= 5, f"too few chunks: {len(stats.chunk_times)}\n{logs}"
    assert stats.commands >= 500, f"too few commands reached the arm: {stats.commands}"
    assert np.max(np.abs(stats.q_last - stats.q_first)) > 0.01, "the arm did not move"
    assert stats.limit_violations == 0

    robot = load_robot_config("sim_arm")
    commands = np.array([q for _, q, _ in stats.command_points])
    margin = 0.02  # config/executor.yaml safety.margin
    assert np.all(commands >= robot.lower + margin - 1e-6)
    assert np.all(commands <= robot.upper - margin + 1e-6)
    # feasibility: between consecutive tracks (no stop between them) each step within max_step
    # and at no more than duration_margin (0.8) of the URDF velocity limits over the time
    # between their stamps; every message starts at its stamp
    # (after a tick later than lead_time the executor goes on from where the controller braked
    # to, not from its last command: test_control_trajectory checks that seam)
    pairs = [(a, b) for a, b in zip(stats.command_points, stats.command_points[1:])
             if not a[0] and not b[0] and b[2] - a[2] <= 0.02 + 1e-6]
    assert len(pairs) >= 400
    steps = np.array([np.abs(b[1] - a[1]) for a, b in pairs])
    elapsed = np.array([b[2] - a[2] for a, b in pairs])
    assert np.all(steps <= 0.05 + 1e-6)
    assert np.all(elapsed > 0)
    assert np.all(steps / elapsed[:, None] <= 0.8 * robot.velocity + 1e-6)
    kinematics = Kinematics(robot)
    tool = np.array([kinematics.fk_position(q) for q in commands[::10]])
    assert np.all(tool >= robot.workspace_min - 1e-6) and np.all(tool <= robot.workspace_max + 1e-6)


def test_demo_runs_several_tasks_one_after_another(tmp_path):
    """`make demo`: each task is started with reset_task and ends with the sim's check."""
    stats = run_closed_loop(duration=4.0, task="pick_red_cube", seed=100000, model="tiny",
                            device="cpu", camera_size=(160, 120), camera_rate=10.0,
                            log_dir=str(tmp_path), quiet=True, reasoning_every=0,
                            then=[("push_green_block_left", 100000)])
    logs = {p.name: p.read_text()[-1500:] for p in tmp_path.glob("*.log")}
    assert [r[0] for r in stats.results] == ["pick_red_cube", "push_green_block_left"], logs
    assert all(isinstance(ok, bool) and took >= 3.9 for _, _, ok, took in stats.results)
    assert stats.instruction == "push the green block to the left"   # the sim was reset to it
    assert "reset: 'push the green block to the left' (seed 100000)" in \
        (tmp_path / "sim_node.log").read_text()
