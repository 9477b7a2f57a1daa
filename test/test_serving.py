"""Observation gating and the policy worker, without ROS."""

import threading
import time

import numpy as np
import pytest

from roboalign_ros.serving import (
    GateLimits,
    ObservationGate,
    PolicyWorker,
    ReasoningWorker,
    Snapshot,
    load_policy,
)

IMAGE = np.zeros((4, 4, 3), np.uint8)
STATE = np.zeros(7, np.float32)


def gate():
    return ObservationGate(GateLimits(max_image_age=0.5, max_state_skew=0.1))


def test_fresh_consistent_observation_passes():
    snap = Snapshot(IMAGE, 10.0, STATE, 10.02, "pick up the red cube")
    assert gate().check(snap, now=10.1) is None


@pytest.mark.parametrize("snap, now, reason", [
    (Snapshot(IMAGE, 10.0, STATE, 10.0, ""), 10.1, "no instruction"),
    (Snapshot(None, None, STATE, 10.0, "go"), 10.1, "no image"),
    (Snapshot(IMAGE, 10.0, STATE, 10.0, "go"), 10.8, "image 0.80 s old > max_image_age"),
    (Snapshot(IMAGE, 10.0, None, None, "go"), 10.1, "no joint state"),
    (Snapshot(IMAGE, 10.0, STATE, 9.7, "go"), 10.1, "skew 0.300 s > max_state_skew"),
    (Snapshot(IMAGE, 12.0, STATE, 12.0, "go"), 10.0, "in the future"),
])
def test_stale_or_inconsistent_observations_are_refused_with_the_reason(snap, now, reason):
    assert reason in gate().check(snap, now)


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_image_age"):
        GateLimits(max_image_age=0.0)


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def make_worker(predict, clock, decisions):
    return PolicyWorker(predict, lambda snap: snap, gate(), decisions.append, clock)


def test_image_is_paired_with_the_joint_state_nearest_its_stamp():
    clock, decisions = Clock(10.3), []
    worker = make_worker(lambda obs: obs.state_stamp, clock, decisions)
    for k in range(30):  # 100 Hz joint states from 10.0 to 10.29
        worker.update_state(np.full(7, k, np.float32), 10.0 + 0.01 * k)
    worker.set_instruction("go")
    worker.update_image(IMAGE, 10.113)  # the image is older than the newest state
    decision = worker.step()
    assert decision.blocked is None and decision.output == pytest.approx(10.11)
    assert decision.snapshot.state[0] == 11
    assert decision.observation_age == pytest.approx(10.3 - 10.113)


def test_model_errors_are_reported_not_raised():
    def broken(obs):
        raise RuntimeError("CUDA out of memory")

    worker = make_worker(broken, Clock(1.0), [])
    worker.update_state(STATE, 1.0)
    worker.set_instruction("go")
    worker.update_image(IMAGE, 1.0)
    decision = worker.step()
    assert decision.output is None and "CUDA out of memory" in decision.error


def test_worker_thread_acts_once_per_new_image_and_instruction_change_takes_effect():
    clock, decisions = Clock(5.0), []
    done = threading.Event()
    worker = make_worker(lambda obs: obs.instruction, clock, decisions)
    worker.update_state(STATE, 5.0)
    worker.set_instruction("pick up the red cube")
    worker.start()
    try:
        worker.update_image(IMAGE, 5.0)
        deadline = time.monotonic() + 5
        while not decisions and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.set_instruction("push the green block to the left")
        worker.update_image(IMAGE, 5.0)
        while len(decisions) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        done.set()
    finally:
        worker.stop()
    outputs = [d.output for d in decisions if d.output is not None]
    assert outputs[:2] == ["pick up the red cube", "push the green block to the left"]


def test_empty_model_path_is_a_clear_error():
    with pytest.raises(ValueError, match="model_path"):
        load_policy("", robot=None)


# ---------------------------------------------------------------- input bounds (issue 10)

def test_instruction_is_bounded_by_characters_before_tokens():
    from roboalign_ros.serving import InputLimits, instruction_problem

    counted = []

    def count(text):
        counted.append(len(text))
        return len(text.split())

    limits = InputLimits(max_instruction_chars=1000, max_instruction_tokens=5)
    assert "100000 characters > max_instruction_chars 1000" in instruction_problem(
        "x" * 100_000, limits, count)
    assert counted == [], "the tokenizer saw a text the character bound refuses"
    assert "6 tokens > max_instruction_tokens 5" in instruction_problem(
        "a b c d e f", limits, count)
    assert instruction_problem("pick up the red cube", limits, count) is None


def test_images_are_refused_by_their_header():
    from roboalign_ros.serving import InputLimits, image_problem

    limits = InputLimits()
    assert image_problem(640, 480, "rgb8", 640 * 480 * 3, limits) is None
    assert image_problem(1920, 1080, "rgba8", 1920 * 1080 * 4, limits) is None
    assert "8000x8000 exceeds max_image_width x max_image_height 1920x1080" in image_problem(
        8000, 8000, "rgb8", 192_000_000, limits)
    assert "encoding 'yuv422' not supported" in image_problem(640, 480, "yuv422", 0, limits)
    assert "bytes > max_image_bytes" in image_problem(640, 480, "rgb8", 10**9, limits)


def test_bad_input_limits_are_refused():
    from roboalign_ros.serving import InputLimits

    with pytest.raises(ValueError, match="max_image_width"):
        InputLimits(max_image_width=0)


def bounded_worker(predict, clock, **kw):
    from roboalign_ros.serving import InputLimits

    worker = PolicyWorker(predict, lambda snap: snap, gate(), [].append, clock,
                          limits=InputLimits(max_instruction_chars=50, max_instruction_tokens=4),
                          count_tokens=lambda text: len(text.split()), **kw)
    worker.update_state(STATE, clock())
    worker.update_image(IMAGE, clock())
    return worker


def test_refused_instruction_blocks_with_its_reason_and_never_reaches_the_model():
    calls, clock = [], Clock(1.0)
    worker = bounded_worker(calls.append, clock)
    assert "characters > max_instruction_chars 50" in worker.set_instruction("x" * 10_000)
    assert "max_instruction_chars" in worker.step().blocked
    assert worker.set_instruction("one two three four five") is None  # chars fine...
    assert "5 tokens > max_instruction_tokens 4" in worker.step().blocked  # ...tokens not
    assert calls == []
    worker.set_instruction("pick up the cube")
    assert worker.step().blocked is None and len(calls) == 1


def test_refused_image_or_joint_state_is_named_instead_of_its_symptom():
    from roboalign_ros.serving import IMAGE, JOINT_STATE

    clock = Clock(1.0)
    worker = bounded_worker(lambda obs: "chunk", clock)
    worker.set_instruction("go")
    worker.refuse(IMAGE, "image refused: 8000x8000 exceeds max 1920x1080")
    clock.t = 2.0  # the stored image is stale by now too: the refusal is the real reason
    assert worker.step().blocked == "image refused: 8000x8000 exceeds max 1920x1080"
    worker.update_image(IMAGE, 2.0)
    worker.update_state(STATE, 2.0)
    assert worker.step().blocked is None
    worker.refuse(JOINT_STATE, "joint state refused: name: joint_states lacks ['joint3']")
    clock.t = 2.3
    worker.update_image(IMAGE, 2.3)
    assert "joint state refused" in worker.step().blocked  # not "skew 0.300 s"


def test_chunk_is_dropped_when_the_observation_went_stale_during_inference():
    clock = Clock(1.0)

    def slow(obs):
        clock.t += 0.8  # inference outlasts max_image_age (0.5 s)
        return "chunk"

    worker = bounded_worker(slow, clock)
    worker.set_instruction("go")
    decision = worker.step()
    assert decision.dropped and decision.output is None
    assert decision.late_output == "chunk"      # kept for its reasoning, never as a chunk
    assert "chunk dropped: observation 0.80 s old after inference > max_image_age" in \
        decision.blocked


def test_chunk_is_dropped_when_the_instruction_changed_during_inference():
    clock = Clock(1.0)
    worker = None

    def predict(obs):
        worker.set_instruction("push the green block")
        return "chunk"

    worker = bounded_worker(predict, clock)
    worker.set_instruction("pick up the cube")
    decision = worker.step()
    assert decision.dropped and "instruction changed" in decision.blocked
    assert decision.late_output is None         # reasoning about the old instruction: gone


def test_a_running_inference_is_visible_while_it_runs():
    release, started = threading.Event(), threading.Event()

    def stuck(obs):
        started.set()
        release.wait(5)
        return "chunk"

    worker = bounded_worker(stuck, Clock(1.0))
    worker.set_instruction("go")
    assert worker.busy_for() == 0.0
    thread = threading.Thread(target=worker.step)
    thread.start()
    try:
        assert started.wait(5)
        time.sleep(0.05)
        assert worker.busy_for() >= 0.05  # what /diagnostics reports as a stuck inference
    finally:
        release.set()
        thread.join(5)
    assert worker.busy_for() == 0.0


# ---------------------------------------------------------------- dual rate: reasoning apart


def dual_rate(reason, period=0.0):
    """An action worker whose predict returns (instruction, reasoning) and its reasoner."""
    results, decisions = [], []
    reasoner = ReasoningWorker(reason, lambda snap: snap, results.append, period=period)
    worker = PolicyWorker(lambda obs, reasoning: (obs.instruction, reasoning),
                          lambda snap: snap, gate(), decisions.append, Clock(1.0),
                          reasoner=reasoner)
    worker.update_state(STATE, 1.0)
    worker.update_image(IMAGE, 1.0)
    worker.set_instruction("pick up the red cube")
    return worker, reasoner, results


def test_the_action_path_never_waits_for_a_reasoning_in_progress():
    release, started = threading.Event(), threading.Event()

    def slow_reason(obs):
        started.set()
        release.wait(10)
        return f"thought about {obs.instruction}"

    worker, reasoner, results = dual_rate(slow_reason)
    thinking = threading.Thread(target=lambda: worker.step() and reasoner.step())
    thinking.start()
    try:
        assert started.wait(5)
        t0 = time.monotonic()
        decisions = [worker.step() for _ in range(20)]   # while the generation is stuck
        assert time.monotonic() - t0 < 1.0
        assert reasoner.busy_for() > 0
        assert all(d.output == ("pick up the red cube", None) for d in decisions)
        assert all(d.reasoning is None for d in decisions)
    finally:
        release.set()
        thinking.join(5)
    assert [r.sequence for r in results] == [1] and results[0].stamp == 1.0
    decision = worker.step()   # now conditioned on the finished reasoning, and says which
    assert decision.output == ("pick up the red cube", "thought about pick up the red cube")
    assert decision.reasoning.sequence == 1


def test_a_new_instruction_is_reasoned_at_once_and_old_reasoning_is_not_used_for_it():
    worker, reasoner, results = dual_rate(lambda obs: f"about {obs.instruction}", period=60.0)
    worker.step()
    assert reasoner.step().sequence == 1
    worker.step()
    assert reasoner.step() is None          # the period has not passed: nothing due
    worker.set_instruction("push the green block to the left")
    decision = worker.step()
    assert decision.output == ("push the green block to the left", None)  # not the old task's
    result = reasoner.step()                # due at once despite the 60 s period
    assert result.sequence == 2 and result.reasoning == "about push the green block to the left"
    assert worker.step().reasoning.sequence == 2


def test_a_failing_generation_is_reported_and_keeps_the_last_good_one():
    calls = []

    def flaky(obs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return f"thought {len(calls)}"

    worker, reasoner, results = dual_rate(flaky)
    for _ in range(3):
        worker.step()
        reasoner.step()
    assert [r.error for r in results] == [None, "RuntimeError: out of memory", None]
    assert worker.step().reasoning.reasoning == "thought 3"
    with pytest.raises(ValueError, match="period"):
        ReasoningWorker(flaky, lambda s: s, period=-1)


def test_the_reasoning_thread_runs_at_its_own_rate_next_to_a_fast_action_path():
    def reason(obs):
        time.sleep(0.3)
        return "slow thought"

    worker, reasoner, results = dual_rate(reason, period=0.0)
    reasoner.start()
    try:
        t0, decisions = time.monotonic(), []
        while time.monotonic() - t0 < 1.5:
            decisions.append(worker.step())
            time.sleep(0.01)
    finally:
        reasoner.stop()
    assert len(decisions) > 50                     # the action path ran at its own rate
    assert 2 <= len(results) <= 6                  # the reasoning at ~1 / 0.3 s
    used = {d.reasoning.sequence for d in decisions if d.reasoning is not None}
    assert used and used <= {r.sequence for r in results}


# ---------------------------------------------------------------- several cameras


def test_every_camera_is_paired_by_stamp_and_a_missing_or_stopped_one_is_named():
    clock, decisions = Clock(10.0), []
    worker = PolicyWorker(lambda obs: sorted(obs.images), lambda snap: snap, gate(),
                          decisions.append, clock, cameras=("scene", "wrist"))
    worker.set_instruction("go")
    worker.update_state(STATE, 10.0)
    worker.update_image(IMAGE, 10.0)                       # the first camera
    assert worker.step().blocked == "no image yet from camera 'wrist'"
    wrist = [np.full((4, 4, 3), k, np.uint8) for k in range(3)]
    for k, t in enumerate((9.90, 9.98, 10.05)):
        worker.update_image(wrist[k], t, "wrist")
    d = worker.step()
    assert d.output == ["scene", "wrist"]
    assert d.snapshot.image_stamps["wrist"] == 9.98        # the frame nearest 10.0
    assert d.snapshot.images["wrist"] is wrist[1]
    # the wrist camera stops: its newest frame ages past max_image_age, and says so
    clock.t = 10.7
    worker.update_state(STATE, 10.7)
    worker.update_image(IMAGE, 10.7)
    assert worker.step().blocked == "camera 'wrist': image 0.65 s old > max_image_age 0.50 s"
    # out of sync, though fresh
    clock.t, lim = 10.75, GateLimits(max_image_age=0.5, max_camera_skew=0.02)
    worker.gate = ObservationGate(lim)
    worker.update_image(wrist[0], 10.60, "wrist")
    worker.update_image(IMAGE, 10.75)
    worker.update_state(STATE, 10.75)
    assert "camera 'wrist' out of sync with 'scene': 0.150 s > max_camera_skew" in \
        worker.step().blocked
    # a refused wrist frame is the reason until a good one arrives
    worker.refuse_image("wrist", "camera 'wrist': image refused: encoding mono8")
    assert worker.step().blocked == "camera 'wrist': image refused: encoding mono8"
    with pytest.raises(ValueError, match="not one of"):
        worker.update_image(IMAGE, 11.0, "thermal")
    with pytest.raises(ValueError, match="distinct"):
        PolicyWorker(None, None, gate(), None, clock, cameras=("scene", "scene"))
