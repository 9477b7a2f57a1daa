"""eval_node over DDS: sim mode against a real sim_node, real mode with start/label services."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import spin_until, wait_matched

pytestmark = pytest.mark.ros


def start(module, params, log_path):
    args = [sys.executable, "-m", f"roboalign_ros.nodes.{module}", "--ros-args"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    log = open(log_path, "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()), log


def stop(procs):
    for proc, _ in procs:
        proc.terminate()
    for proc, log in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class Probe:
    """Test-side node: instruction / e-stop / eval status recorders and service callers."""

    def __init__(self, context):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import Bool, String
        from std_srvs.srv import Trigger

        from roboalign_ros.msg import TaskStatus
        from roboalign_ros.nodes.common import COMMAND_QOS, LATCHED_QOS
        from roboalign_ros.srv import LabelTrial

        self.node = Node("eval_probe", context=context)
        self.instructions, self.estops, self.status = [], [], []
        self.subs = [
            self.node.create_subscription(String, "/roboalign/instruction",
                                          lambda m: self.instructions.append(m.data),
                                          LATCHED_QOS),
            self.node.create_subscription(TaskStatus, "/roboalign/eval_status",
                                          self.status.append, 10)]
        self.estop_sub = self.node.create_subscription(
            Bool, "/roboalign/estop", lambda m: self.estops.append(m.data), COMMAND_QOS)
        self.estop_pub = self.node.create_publisher(Bool, "/roboalign/estop", COMMAND_QOS)
        self.label_client = self.node.create_client(LabelTrial, "/eval_node/label_trial")
        self.start_client = self.node.create_client(Trigger, "/eval_node/start_trial")
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.LabelTrial, self.Trigger, self.Bool = LabelTrial, Trigger, Bool

    def matched(self, estop=False):
        """Wait until eval_node is matched on every topic and service the test uses; with
        ``estop``, also both ways on /roboalign/estop (eval_node and this probe each publish
        and subscribe there, so 2 each): the node engages it once, at the time limit."""
        wait_matched(self.executor, *self.subs, self.label_client, self.start_client)
        if estop:
            wait_matched(self.executor, self.estop_pub, self.estop_sub, at_least=2,
                         peers=("eval_node",))

    def call(self, client, request):
        wait_matched(self.executor, client)
        future = client.call_async(request)
        assert spin_until(self.executor, future.done, 10)
        return future.result()

    def label(self, trial_index=-1, outcome=2, progress=0.0, notes=""):
        return self.call(self.label_client, self.LabelTrial.Request(
            trial_index=trial_index, outcome=outcome, progress=progress, notes=notes))

    def start_trial(self):
        return self.call(self.start_client, self.Trigger.Request())

    def until(self, predicate, timeout):
        return spin_until(self.executor, predicate, timeout)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


def write_plan(tmp_path, trials, time_limit):
    plan = {"name": "dds", "policy": "none (no policy running)",
            "tasks": [{"task": "pick_red_cube", "trials": trials, "time_limit": time_limit,
                       "seeds": list(range(3, 3 + trials))}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_sim_mode_labels_from_the_service_and_auto_labels(rclpy_context, tmp_path):
    plan = write_plan(tmp_path, trials=2, time_limit=4.0)
    procs = [start("sim_node", {"camera.width": 96, "camera.height": 72, "camera.rate": 2.0,
                                "publish_instruction": False}, tmp_path / "sim.log"),
             start("eval_node", {"plan": str(plan), "mode": "sim",
                                 "results_dir": str(tmp_path / "results"), "operator": "tester",
                                 "wait_for_policy": False, "auto_label": True},
                   tmp_path / "eval.log")]
    probe = Probe(rclpy_context)
    results = tmp_path / "results" / "dds" / "results.jsonl"
    try:
        probe.matched()
        assert probe.until(lambda: "pick up the red cube" in probe.instructions, 60), \
            (tmp_path / "eval.log").read_text()
        for kwargs, text in [({"trial_index": 9}, "trial_index: 9 is unknown"),
                             ({"trial_index": 2}, "not the trial awaiting a label"),
                             ({"outcome": 7}, "outcome: 7 is not one of"),
                             ({"progress": 1.5}, "progress: 1.5 is outside [0, 1]")]:
            response = probe.label(**kwargs)
            assert not response.success and text in response.message, response.message
        response = probe.label(trial_index=1, outcome=2, progress=0.25, notes="missed the cube")
        assert response.success, response.message
        assert probe.until(lambda: results.exists(), 5)
        # trial 2 ends by itself at the 4 s time limit (auto failure), then the plan is done
        assert probe.until(lambda: (tmp_path / "results" / "dds" / "summary.json").exists(), 30), \
            (tmp_path / "eval.log").read_text()
        response = probe.label()
        assert not response.success and "evaluation is finished" in response.message
        records = [json.loads(line) for line in results.read_text().splitlines()]
        assert [(r["trial"], r["outcome"], r["label_source"]) for r in records] == [
            (1, "failure", "manual"), (2, "failure", "auto")]
        first, second = records
        assert first["progress"] == 0.25 and first["notes"] == "missed the cube"
        assert first["operator"] == "tester" and first["seed"] == 3 and second["seed"] == 4
        assert second["end_reason"] == "time limit" and 3.9 < second["duration"] < 8.0
        assert (tmp_path / "results" / "dds" / "report.png").exists()
        assert probe.status and probe.status[-1].task == "pick_red_cube"
        assert probe.instructions[-1] == ""  # the policy is left without an instruction
        log = (tmp_path / "eval.log").read_text()
        assert "Trial 1/2" in log and "label_trial refused" in log
        sim_log = (tmp_path / "sim.log").read_text()
        assert "(seed 3)" in sim_log and "(seed 4)" in sim_log
    finally:
        probe.close()
        stop(procs)


def test_real_mode_start_stop_label_and_estop_repeat(rclpy_context, tmp_path):
    plan = write_plan(tmp_path, trials=2, time_limit=1.5)
    procs = [start("eval_node", {"plan": str(plan), "mode": "real",
                                 "results_dir": str(tmp_path / "results"),
                                 "wait_for_policy": False}, tmp_path / "eval.log")]
    probe = Probe(rclpy_context)
    log = tmp_path / "eval.log"
    results = tmp_path / "results" / "dds" / "results.jsonl"
    try:
        assert probe.until(lambda: "Reset the scene, then call /eval_node/start_trial"
                           in log.read_text(), 30), log.read_text()
        probe.matched(estop=True)
        assert probe.start_trial().success
        assert probe.until(lambda: probe.instructions[-1:] == ["pick up the red cube"], 5)
        # time is up: instruction cleared and the e-stop engaged; the node waits for a label
        assert probe.until(lambda: probe.estops == [True], 5), log.read_text()
        assert probe.instructions[-1] == ""
        assert not probe.start_trial().success  # nothing to start while awaiting a label
        response = probe.label(outcome=1, notes="ok")
        assert response.success, response.message
        assert probe.until(lambda: probe.estops == [True, False], 5)  # released after label
        # its own e-stop echo did not count as someone else's: trial 2 can start right away
        assert probe.until(lambda: log.read_text().count("Reset the scene") >= 2, 5)
        assert probe.start_trial().success, log.read_text()
        probe.estop_pub.publish(probe.Bool(data=True))  # the technician hits the e-stop
        assert probe.until(lambda: len(results.read_text().splitlines()) == 2, 5)
        assert probe.until(lambda: "E-STOP, trial aborted" in log.read_text(), 5)
        response = probe.start_trial()
        assert not response.success  # waits for the e-stop release
        probe.estop_pub.publish(probe.Bool(data=False))
        assert probe.until(lambda: "attempt 2" in log.read_text()
                           and log.read_text().count("Reset the scene") >= 3, 5)
        assert probe.start_trial().success
        assert probe.until(lambda: probe.estops[-1:] == [True] and len(probe.estops) == 5, 5)
        assert probe.label(trial_index=2, outcome=2, progress=0.5).success
        records = [json.loads(line) for line in results.read_text().splitlines()]
        assert [(r["trial"], r["attempt"], r["outcome"]) for r in records] == [
            (1, 1, "success"), (2, 1, "aborted"), (2, 2, "failure")]
        assert records[0]["seed"] is None and records[0]["label_source"] == "manual"
        assert probe.until(lambda: (tmp_path / "results" / "dds" / "summary.json").exists(), 5)
    finally:
        probe.close()
        stop(procs)
