"""Trial state machine without ROS: resets, time limit, labels, e-stop abort + repeat, resume."""

import json

import pytest

from roboalign_ros.evaluation import session as ev
from roboalign_ros.evaluation.plan import parse_plan
from roboalign_ros.evaluation.results import ResultsStore, load_records
from roboalign_ros.evaluation.session import EvalSession, SessionConfig, TrialState

PLAN = {"name": "unit", "policy": "p", "model": "m",
        "tasks": [{"task": "pick_red_cube", "trials": 2, "time_limit": 10, "seeds": [5, 6]},
                  {"task": "push_green_block_left", "trials": 1, "time_limit": 10}]}


def make(tmp_path, **config):
    store = ResultsStore(tmp_path / "unit")
    config.setdefault("wait_for_policy", False)  # no policy in these tests (eval_node waits)
    return EvalSession(parse_plan(PLAN), store, SessionConfig(**config))


def kinds(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def run_to_running(s, now):
    """Sim: poll until the reset request, answer it, return the actions."""
    actions = s.poll(now)
    (reset,) = kinds(actions, ev.ResetSim)
    return reset, s.on_reset_done(True, "reset", now + 0.1)


def test_sim_trials_auto_labelled_time_limit_and_success(tmp_path):
    s = make(tmp_path, mode="sim", operator="ann")
    reset, actions = run_to_running(s, 100.0)
    assert (reset.task, reset.seed) == ("pick_red_cube", 5)
    assert s.current.state is TrialState.RUNNING
    assert kinds(actions, ev.SendInstruction)[0].text == "pick up the red cube"
    assert s.poll(109.0) == []  # 8.9 s in: still running
    actions = s.poll(110.2)  # time limit: auto failure
    assert kinds(actions, ev.SendInstruction)[0].text == ""  # policy stopped
    (done,) = kinds(actions, ev.TrialFinished)
    rec = done.record
    assert (rec["outcome"], rec["label_source"], rec["end_reason"], rec["trial"]) == (
        "failure", "auto", "time limit", 1)
    assert rec["duration"] == pytest.approx(10.1) and rec["operator"] == "ann"
    assert rec["seed"] == 5 and rec["progress"] == 0.0 and rec["policy"] == "p"
    # trial 2: a success status from before the reset is stale and ignored
    reset, _ = run_to_running(s, 120.0)
    assert reset.seed == 6 and s.current.number == 2
    assert s.on_task_success(121.0, elapsed=7.0) == []
    actions = s.on_task_success(123.0, elapsed=2.8)
    rec = kinds(actions, ev.TrialFinished)[0].record
    assert (rec["outcome"], rec["progress"], rec["end_reason"]) == (
        "success", 1.0, "sim success check")
    lines = load_records(tmp_path / "unit" / "results.jsonl")
    assert [r["outcome"] for r in lines] == ["failure", "success"]


def test_label_requests_are_checked(tmp_path):
    s = make(tmp_path, mode="sim", auto_label=False)
    ok, msg, _ = s.label(-1, 2, 0.0, "", 1.0)
    assert not ok and "no trial awaits a label (no trial started yet)" in msg
    run_to_running(s, 100.0)
    for args, text in [((7, 1, 1.0), "trial_index: 7 is unknown"),
                       ((0, 1, 1.0), "trial_index: 0 is unknown"),
                       ((2, 1, 1.0), "trial_index: 2 is not the trial awaiting a label"),
                       ((1, 9, 1.0), "outcome: 9 is not one of"),
                       ((1, 2, 1.5), "progress: 1.5 is outside [0, 1]"),
                       ((1, 2, float("nan")), "progress: nan")]:
        ok, msg, actions = s.label(*args, "", 101.0)
        assert not ok and text in msg and actions == []
    assert s.current.state is TrialState.RUNNING
    # no auto label: the time limit stops the policy and waits for the technician
    actions = s.poll(110.5)
    assert s.current.state is TrialState.AWAITING_LABEL
    assert kinds(actions, ev.SendInstruction)[0].text == "" and not kinds(actions, ev.Estop)
    assert "label_trial" in kinds(actions, ev.Prompt)[0].text
    ok, msg, actions = s.label(1, 2, 0.5, "dropped it", 115.0)
    assert ok, msg
    rec = kinds(actions, ev.TrialFinished)[0].record
    assert (rec["outcome"], rec["progress"], rec["notes"], rec["label_source"]) == (
        "failure", 0.5, "dropped it", "manual")
    assert rec["duration"] == pytest.approx(10.4)  # ends at the time limit, not at the label
    ok, msg, _ = s.label(1, 1, 1.0, "", 116.0)  # already labelled, no trial awaiting
    assert not ok and "no trial awaits a label" in msg


def test_estop_aborts_and_the_trial_is_repeated(tmp_path):
    s = make(tmp_path, mode="sim")
    run_to_running(s, 100.0)
    actions = s.on_estop(True, 103.0)
    rec = kinds(actions, ev.TrialFinished)[0].record
    assert (rec["outcome"], rec["notes"], rec["attempt"], rec["trial"]) == (
        "aborted", "e-stop", 1, 1)
    assert kinds(actions, ev.SendInstruction)[0].text == ""
    assert s.current is None
    # while the e-stop is engaged the same trial waits, then repeats with the same seed
    assert not kinds(s.poll(104.0), ev.ResetSim)
    assert s.current.number == 1 and s.current.step == "estop"
    s.on_estop(False, 105.0)
    reset, _ = run_to_running(s, 106.0)
    assert reset.seed == 5 and s.current.attempt == 2 and s.current.number == 1
    rec = kinds(s.poll(116.2), ev.TrialFinished)[0].record
    assert (rec["outcome"], rec["attempt"], rec["task_trial"]) == ("failure", 2, 0)
    assert s.counts() == {"total": 3, "counted": 1, "successes": 0, "aborted": 1}
    # an "aborted" label also repeats the trial
    run_to_running(s, 120.0)
    ok, _, _ = s.label(2, 3, 0.0, "cube fell off the table", 121.0)
    assert ok and s.next_slot().number == 2


def test_real_mode_prompts_start_trial_and_stops_the_robot(tmp_path):
    s = make(tmp_path, mode="real", go_home=True)
    ok, msg, _ = s.start(1.0)
    assert not ok and "no trial" in msg
    actions = s.poll(10.0)
    assert kinds(actions, ev.GoHome) and s.current.state is TrialState.RESETTING
    assert "Trial 1/3" in kinds(actions, ev.Prompt)[0].text
    assert s.on_home_done(True, "going home in 2.0 s", 10.1, wait=2.0) == []
    ok, msg, _ = s.start(10.5)  # still homing
    assert not ok and "(home)" in msg
    actions = s.poll(12.2)
    prompt = kinds(actions, ev.Prompt)[0].text
    assert "Trial 1/3: 'pick up the red cube'" in prompt
    assert "Reset the scene, then call /eval_node/start_trial" in prompt
    assert not kinds(actions, ev.ResetSim)  # nothing is reset for the technician
    ok, msg, actions = s.start(20.0)
    assert ok and kinds(actions, ev.SendInstruction)[0].text == "pick up the red cube"
    assert s.on_task_success(21.0, 0.5) == []  # real mode: only the technician says success
    actions = s.poll(30.1)  # time is up: instruction cleared + e-stop engaged, wait for label
    assert kinds(actions, ev.SendInstruction)[0].text == ""
    assert kinds(actions, ev.Estop) == [ev.Estop(True)]
    assert s.current.state is TrialState.AWAITING_LABEL
    assert s.on_estop(True, 30.2) == [ev.Prompt("e-stop engaged", "warn")]  # no abort now
    s.on_estop(False, 30.3)
    ok, msg, actions = s.label(-1, 1, 0.0, "clean grasp", 45.0)
    assert ok and "progress set to 1.0" in msg
    assert kinds(actions, ev.Estop) == [ev.Estop(False)]  # released after the label
    rec = kinds(actions, ev.TrialFinished)[0].record
    assert (rec["outcome"], rec["progress"], rec["seed"], rec["duration"]) == (
        "success", 1.0, None, pytest.approx(10.1))
    assert kinds(s.poll(46.0), ev.GoHome)  # next trial
    ok, msg, _ = s.label(-1, 1, 1.0, "", 46.5)
    assert not ok and "trial 2 is resetting" in msg


def test_external_estop_is_never_released_by_the_session(tmp_path):
    s = make(tmp_path, mode="real")
    s.poll(0.0)
    s.start(1.0)
    s.poll(11.5)  # time up: own e-stop
    s.on_estop(True, 12.0)  # someone else presses it too (not an echo: the node filters those)
    ok, _, actions = s.label(-1, 2, 0.0, "", 13.0)
    assert ok and not kinds(actions, ev.Estop)


def test_resume_after_a_crash(tmp_path):
    s = make(tmp_path, mode="sim")
    run_to_running(s, 0.0)
    s.poll(10.5)  # trial 1 counted (failure)
    run_to_running(s, 11.0)
    s.on_estop(True, 12.0)  # trial 2 attempt 1 aborted
    s.on_estop(False, 12.5)
    run_to_running(s, 13.0)  # trial 2 attempt 2 running ... and the process dies here
    path = tmp_path / "unit" / "results.jsonl"
    before = path.read_text()
    assert len(before.splitlines()) == 2 and not list((tmp_path / "unit").glob(".results.*"))
    s2 = make(tmp_path, mode="sim")
    assert "resuming 'unit'" in s2.resume_message() and "next: trial 2" in s2.resume_message()
    reset, _ = run_to_running(s2, 100.0)
    assert (s2.current.number, s2.current.attempt, reset.seed) == (2, 2, 6)
    s2.on_task_success(101.0, 0.5)
    reset, _ = run_to_running(s2, 102.0)
    assert reset.task == "push_green_block_left" and reset.seed == 0
    actions = s2.poll(112.5)
    assert kinds(actions, ev.TrialFinished)
    actions = s2.poll(113.0)
    assert kinds(actions, ev.EvaluationFinished) and s2.finished
    records = load_records(path)
    assert path.read_text().startswith(before)  # nothing already stored was lost or changed
    assert [(r["trial"], r["outcome"]) for r in records] == [
        (1, "failure"), (2, "aborted"), (2, "success"), (3, "failure")]
    # a third start has nothing left to run
    s3 = make(tmp_path, mode="sim")
    assert kinds(s3.poll(200.0), ev.EvaluationFinished)


def test_damaged_results_are_reported_by_line(tmp_path):
    d = tmp_path / "unit"
    d.mkdir()
    good = {"task": "pick_red_cube", "instruction": "x", "trial": 1, "task_trial": 0,
            "outcome": "success", "progress": 1.0}
    (d / "results.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good)[:20])
    assert len(load_records(d / "results.jsonl")) == 1  # cut-short last line dropped
    (d / "results.jsonl").write_text("{bad\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        ResultsStore(d)
    (d / "results.jsonl").write_text(json.dumps(dict(good, progress=2)) + "\n")
    with pytest.raises(ValueError, match="line 1: progress 2 outside"):
        ResultsStore(d)
