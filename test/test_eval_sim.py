"""The headless evaluator (``roboalign eval sim``): sim + policy worker + executor in sim time."""

import json
import types

import numpy as np
import pytest

from roboalign_ros.evaluation import headless as hl
from roboalign_ros.evaluation.report import wilson_interval

TASK = "pick_red_cube"
SEED = 100000


class StillPolicy:
    """A fast stand-in: every chunk holds the measured state; counts its calls."""

    name = "still"

    def __init__(self, crash_on: int | None = None, interrupt_on: int | None = None):
        names = ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]
        self.config = types.SimpleNamespace(
            horizon=10, dt=0.1, dimension_names=names, action_space="joint_position",
            camera_names=["scene"], image_size=(32, 32), state_dim=7)
        self.calls, self.crash_on, self.interrupt_on = 0, crash_on, interrupt_on

    def predict(self, observation):
        from roboalign_ros.model.policy import PolicyOutput

        self.calls += 1
        if self.calls == self.crash_on:
            raise RuntimeError("CUDA out of memory (pretend)")
        if self.calls == self.interrupt_on:
            raise KeyboardInterrupt
        assert observation.images["scene"].shape == (32, 32, 3)
        return PolicyOutput(chunk=np.tile(observation.state, (10, 1)).astype(np.float32))


def lines(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny():
    """The random tiny policy policy_node runs for model_path 'tiny' (built once)."""
    import torch

    from roboalign_ros.robot import load_robot_config
    from roboalign_ros.serving import load_policy

    torch.set_num_threads(1)  # two threads on two busy cores: 20x slower
    return load_policy("tiny", load_robot_config("sim_arm"), "cpu", reasoning_every=0)


def test_seed_and_task_syntax():
    assert hl.parse_seeds("100000-100002") == [100000, 100001, 100002]
    assert hl.parse_seeds("7, 1,3-4") == [7, 1, 3, 4]
    for bad in ("", "a-b", "5-3", "1,1", "-2"):
        with pytest.raises(ValueError, match="seeds"):
            hl.parse_seeds(bad)
    assert hl.parse_tasks(f"{TASK}, push_red_cube_right") == [TASK, "push_red_cube_right"]
    with pytest.raises(ValueError, match="unknown"):
        hl.parse_tasks("pick_the_moon")
    assert hl.eval_seeds(3) == [100000, 100001, 100002]  # held out from training


def test_wilson_interval():
    # reference values (Wilson score interval, z = 1.96)
    assert wilson_interval(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert wilson_interval(0, 2) == pytest.approx((0.0, 0.6576), abs=1e-4)
    assert wilson_interval(50, 50) == pytest.approx((0.9287, 1.0), abs=1e-4)


def test_tiny_policy_runs_writes_and_resumes(tiny, tmp_path):
    out = tmp_path / "tiny"
    result = hl.evaluate(tiny, TASK, [SEED, SEED + 1], out, episode_seconds=1.0,
                         progress=False, console=False)
    assert result.ran == 2 and [r["seed"] for r in lines(out)] == [SEED, SEED + 1]
    for r in result.records:
        assert r["outcome"] == "failure" and r["end_reason"] == "time limit"
        assert r["sim_seconds"] == pytest.approx(1.0)
        assert r["chunks"]["accepted"] > 0 and r["chunks"]["refused"] == 0
        # every command that reached the sim was feasible
        assert r["sim"]["commands"] > 0 and r["sim"]["rejected"] == 0
        assert r["sim"]["rate_clamped_steps"] == 0
        assert r["inference"]["calls"] > 0 and r["inference"]["latency_mean"] > 0
    summary = json.loads((out / "summary.json").read_text())
    task = summary["tasks"][TASK]
    assert (task["trials"], task["successes"]) == (2, 0)
    assert (task["ci95_low"], task["ci95_high"]) == pytest.approx(wilson_interval(0, 2))
    assert (out / "report.png").stat().st_size > 0

    again = hl.evaluate(tiny, TASK, [SEED, SEED + 1, SEED + 2], out, episode_seconds=1.0,
                        progress=False, console=False)
    assert again.ran == 1 and [r["seed"] for r in lines(out)] == [SEED, SEED + 1, SEED + 2]
    assert again.summary["tasks"][TASK]["trials"] == 3
    with pytest.raises(ValueError, match="another setup"):
        hl.evaluate(tiny, TASK, [SEED], out, episode_seconds=2.0, progress=False,
                    console=False)


def test_chunks_arrive_after_the_inference_delay(tmp_path):
    policy = StillPolicy()
    config = hl.SimEvalConfig(fixed_latency=0.15, camera_rate=10.0, progress=False)
    ev = hl.SimEvaluator(policy, config, "still")
    try:
        success, seconds, _ = ev.run_episode(TASK, SEED)
        trace = ev.trace
    finally:
        ev.close()
    assert not success and seconds == pytest.approx(12.0)  # the task's episode_seconds
    chunks = trace.chunks
    assert len(chunks) > 20 and all(c.accepted for c in chunks)
    # stamped with the observation time; inference starts on the newest frame when the
    # previous one has finished, and its chunk arrives `latency` after that start
    free = 0.0
    for c in chunks:
        assert c.arrival == pytest.approx(max(free, c.stamp) + 0.15, abs=1e-9)
        free = c.arrival
    # frames every 0.1 s, busy 0.15 s: the frame that came during an inference is taken
    # at its end (0.1 at 0.15), a frame due right then is (0.3 at 0.3)
    assert [round(c.stamp, 3) for c in chunks[:5]] == [0.0, 0.1, 0.3, 0.4, 0.6]
    assert [round(c.arrival, 3) for c in chunks[:5]] == [0.15, 0.3, 0.45, 0.6, 0.75]
    assert trace.sim_rejected == 0 and trace.dropped == 0


def test_max_rate_spaces_decisions_as_policy_node_does(tmp_path):
    config = hl.SimEvalConfig(fixed_latency=0.05, camera_rate=10.0, max_rate=4.0,
                              episode_seconds=2.0, progress=False)
    ev = hl.SimEvaluator(StillPolicy(), config, "still")
    try:
        ev.run_episode(TASK, SEED)
        chunks = ev.trace.chunks
    finally:
        ev.close()
    # free after 0.05 s, but the next start waits for 0.25 s after the last one and then
    # takes the newest frame (0.2 at 0.25, 0.5 at 0.5, 0.7 at 0.75), as PolicyWorker._run
    assert [round(c.stamp, 3) for c in chunks[:5]] == [0.0, 0.2, 0.5, 0.7, 1.0]
    assert [round(c.arrival, 3) for c in chunks[:5]] == [0.05, 0.3, 0.55, 0.8, 1.05]
    assert len(chunks) == 8  # 2 s at 4 Hz
    with pytest.raises(ValueError, match="max_rate"):
        hl.SimEvalConfig(max_rate=-1.0)


def test_a_delay_beyond_max_image_age_drops_every_chunk(tmp_path):
    out = tmp_path / "slow"
    result = hl.evaluate(StillPolicy(), TASK, [SEED], out, fixed_latency=0.6,
                         episode_seconds=1.5, progress=False, console=False)
    r = result.records[0]
    assert r["inference"]["calls"] == r["inference"]["dropped"] > 0  # as policy_node does
    assert r["chunks"]["delivered"] == 0 and r["executor"].get("ticks_track", 0) == 0


def test_expert_oracle_solves_pick_through_the_loop(tmp_path):
    """Timing, executor (safety envelope on) and follower carry a good plan to success."""
    result = hl.evaluate("expert", TASK, [SEED], tmp_path / "expert", fixed_latency=0.1,
                         progress=False, console=False)
    r = result.records[0]
    assert r["outcome"] == "success" and r["end_reason"] == "sim success check"
    assert r["sim_seconds"] < 12.0  # stopped at the first success
    assert r["chunks"]["refused"] == 0 and r["inference"]["dropped"] == 0
    assert r["sim"]["rejected"] == 0 and r["sim"]["rate_clamped_steps"] == 0
    assert result.summary["tasks"][TASK]["successes"] == 1


def test_a_crashing_policy_is_named_and_finished_episodes_kept(tmp_path):
    out = tmp_path / "crash"
    policy = StillPolicy(crash_on=12)  # during the second episode (10 calls per second)
    with pytest.raises(hl.PolicyCrashed, match=r"policy still crashed .* seed 100001 .*"
                       r"RuntimeError: CUDA out of memory"):
        hl.evaluate(policy, TASK, [SEED, SEED + 1], out, episode_seconds=1.0,
                    progress=False, console=False)
    assert [r["seed"] for r in lines(out)] == [SEED]
    assert json.loads((out / "summary.json").read_text())["overall"]["trials"] == 1


def test_interrupt_keeps_what_finished(tmp_path):
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        hl.evaluate(StillPolicy(interrupt_on=12), TASK, [SEED, SEED + 1], out,
                    episode_seconds=1.0, progress=False, console=False)
    assert [r["seed"] for r in lines(out)] == [SEED]
    assert json.loads((out / "summary.json").read_text())["speed"]["episodes_run"] == 1


def test_bad_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        hl.evaluate(str(tmp_path / "missing"), TASK, [SEED], tmp_path / "o", progress=False)
    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "vla_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"model: {bad} failed to load"):
        hl.evaluate(str(bad), TASK, [SEED], tmp_path / "o", progress=False)


def test_cli_tiny(tmp_path, capsys):
    from roboalign_ros.cli import main

    out = tmp_path / "cli"
    code = main(["eval", "sim", "--model", "tiny", "--task", TASK, "--seeds", f"{SEED}",
                 "--episode-seconds", "0.5", "--reasoning-every", "0", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "episodes/min" in printed and "0% - " in printed  # the Wilson interval column
    assert len(lines(out)) == 1 and (out / "summary.json").is_file()
    assert main(["eval", "sim", "--model", "tiny", "--task", TASK, "--seeds", "x"]) == 2


def test_executor_built_as_the_node_builds_it():
    from roboalign_ros.control.build import build_executor, executor_parameters

    p = executor_parameters()
    assert p["rate"] == 100.0 and p["safety.velocity_scale"] == 0.5  # config/executor.yaml
    ex = build_executor(p)
    assert ex.config.rate_hz == 100.0 and ex.envelope.has_workspace
    assert ex.envelope.limits.velocity_scale == 0.5
    with pytest.raises(ValueError, match="safety.velocity: executor_node has no such parameter"):
        executor_parameters({"safety.velocity": 1.0})
    pytest.importorskip("rclpy")
    from roboalign_ros.nodes.backends import backend_for

    with pytest.raises(ValueError, match="backend: 'joint_trajectory' does not stream"):
        backend_for("joint_trajectory", "ee_delta")   # executor_node's check (its registry)


def test_workers_give_the_same_records_as_one_process(tmp_path):
    """Two spawned processes, each with its own sim and model: same episodes, same outcomes."""
    seeds = [SEED, SEED + 1]
    one = hl.evaluate("expert", "pick_red_cube,push_green_block_left", seeds, tmp_path / "one",
                      fixed_latency=0.1, progress=False, console=False)
    two = hl.evaluate("expert", "pick_red_cube,push_green_block_left", seeds, tmp_path / "two",
                      fixed_latency=0.1, workers=2, progress=False, console=False)

    def key(r):
        return r["task"], r["seed"], r["trial"], r["outcome"], r["sim_seconds"]

    assert sorted(map(key, one.records)) == sorted(map(key, two.records))
    assert len(lines(tmp_path / "two")) == 4 and two.summary["overall"]["successes"] == 4
    with pytest.raises(ValueError, match="workers: > 1 needs a checkpoint"):
        hl.evaluate(StillPolicy(), TASK, seeds, tmp_path / "obj", workers=2, progress=False)
    with pytest.raises(ValueError, match="workers: must be >= 1"):
        hl.SimEvalConfig(workers=0)


def test_executor_overrides_from_the_command_line(tmp_path):
    assert hl.parse_executor_overrides(["blend=temporal_ensemble", "safety.velocity_scale=0.3"]) \
        == {"blend": "temporal_ensemble", "safety.velocity_scale": 0.3}
    with pytest.raises(ValueError, match="'blend' is not KEY=VALUE"):
        hl.parse_executor_overrides(["blend"])
    from roboalign_ros.cli import main

    out = tmp_path / "te"
    assert main(["eval", "sim", "--model", "expert", "--task", TASK, "--seeds", f"{SEED}",
                 "--executor", "blend=temporal_ensemble", "--out", str(out), "--quiet"]) == 0
    assert lines(out)[0]["setup"]["executor"] == {"blend": "temporal_ensemble"}
    assert lines(out)[0]["outcome"] == "success"


def test_eval_run_refuses_a_bad_executor_override_before_starting_nodes(capsys):
    from roboalign_ros.cli import main

    assert main(["eval", "run", "--executor", "blend"]) == 2
    assert "executor: 'blend' is not KEY=VALUE" in capsys.readouterr().err


def test_a_malformed_executor_value_is_named_not_a_traceback():
    with pytest.raises(ValueError, match=r"executor: 'blend=\[': bad value"):
        hl.parse_executor_overrides(["blend=["])
