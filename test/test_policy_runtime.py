"""Observation gating and the policy worker, without ROS."""

import threading
import time

import numpy as np
import pytest

from roboalign_ros.policy_runtime import (
    GateLimits,
    ObservationGate,
    PolicyWorker,
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
