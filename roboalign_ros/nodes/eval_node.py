"""eval_node: evaluation trials for lab technicians, on the real arm or in the sim.

Wiring: a timer at ``tick_rate`` -> EvalSession.poll; /roboalign/task_status (sim success),
/roboalign/estop (abort) and /roboalign/status (policy ready) -> session events; services
``~/start_trial`` (std_srvs/Trigger: the technician has reset the scene, real mode) and
``~/label_trial`` (LabelTrial) -> session; the session's actions -> /roboalign/instruction
(latched; "" clears it: the policy blocks and the executor flushes and holds),
/roboalign/estop (real mode: engaged when time runs out, released after the label),
``/executor_node/go_home`` and ``/sim_node/reset_task`` calls, prompts in the log. Status:
/roboalign/eval_status (TaskStatus) and /diagnostics. Plans, state machine, results (JSONL)
and the report live in roboalign_ros.evaluation.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from rclpy.node import Node
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from roboalign_ros.evaluation import session as ev
from roboalign_ros.evaluation.plan import load_plan
from roboalign_ros.evaluation.report import write_report
from roboalign_ros.evaluation.results import ResultsStore
from roboalign_ros.msg import PolicyStatus, TaskStatus
from roboalign_ros.nodes.common import (
    COMMAND_QOS,
    LATCHED_QOS,
    OK,
    WARN,
    Diagnostics,
    declare_parameters,
    now_seconds,
    run_node,
)
from roboalign_ros.robot import package_path
from roboalign_ros.srv import LabelTrial, ResetTask

_NOT_READY = (PolicyStatus.STATE_UNCONFIGURED, PolicyStatus.STATE_LOADING,
              PolicyStatus.STATE_ERROR)


def resolve_plan(path: str) -> Path:
    """A plan path as given, else relative to the package (``config/eval/...``)."""
    p = Path(path).expanduser()
    if p.is_file() or p.is_absolute():
        return p
    return package_path(*p.parts)


class EvalNode(Node):
    """Wires :class:`~roboalign_ros.evaluation.session.EvalSession` to topics and services."""

    def __init__(self, **overrides):
        super().__init__("eval_node", **overrides)
        p = declare_parameters(self, "eval_node")
        self.p = p
        plan = load_plan(resolve_plan(p["plan"]))
        store = ResultsStore(Path(p["results_dir"]).expanduser() / plan.name)
        config = ev.SessionConfig(mode=p["mode"], operator=p["operator"], go_home=p["go_home"],
                                  auto_label=p["auto_label"],
                                  wait_for_policy=p["wait_for_policy"],
                                  time_limit=p["time_limit"])
        self.session = ev.EvalSession(plan, store, config)
        self.instruction_pub = self.create_publisher(String, p["instruction_topic"], LATCHED_QOS)
        self.estop_pub = self.create_publisher(Bool, p["estop_topic"], COMMAND_QOS)
        self.status_pub = self.create_publisher(TaskStatus, p["eval_status_topic"], 10)
        self.create_subscription(Bool, p["estop_topic"], self.on_estop, COMMAND_QOS)
        self.create_subscription(TaskStatus, p["task_status_topic"], self.on_task_status, 10)
        self.create_subscription(PolicyStatus, p["policy_status_topic"], self.on_policy_status,
                                 10)
        self.reset_client = self.create_client(ResetTask, p["reset_service"])
        self.home_client = self.create_client(Trigger, p["home_service"])
        self.create_service(Trigger, "~/start_trial", self.on_start_trial)
        self.create_service(LabelTrial, "~/label_trial", self.on_label_trial)
        self.diagnostics = Diagnostics(self, "eval_node: trials")
        self._pending_calls: list = []  # (client, request, callback) waiting for a service
        self._own_estop_gids: set[bytes] = set()
        self.create_timer(1.0 / p["tick_rate"], self.tick)
        self.create_timer(1.0 / p["status_rate"], self.publish_status)
        for warning in self.session.warnings:
            self.get_logger().warning(warning)
        self.get_logger().info(f"{self.session.resume_message()} (mode {p['mode']}, plan "
                               f"{plan.source})")

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Clock the state machine; issue service calls whose server has appeared."""
        self.apply(self.session.poll(now_seconds(self)))
        waiting = []
        for client, request, callback in self._pending_calls:
            if client.service_is_ready():
                client.call_async(request).add_done_callback(callback)
            else:
                self.get_logger().warning(f"waiting for service {client.srv_name}",
                                       throttle_duration_sec=5.0)
                waiting.append((client, request, callback))
        self._pending_calls = waiting

    def on_estop(self, msg: Bool, info: dict) -> None:
        """Someone else's e-stop aborts the running trial (this node's own echoes are dropped)."""
        if self._is_own(info):
            return
        self.apply(self.session.on_estop(bool(msg.data), now_seconds(self)))

    def on_task_status(self, msg: TaskStatus) -> None:
        """Sim success check -> the running trial ends (auto label in sim)."""
        if msg.success:
            self.apply(self.session.on_task_success(now_seconds(self), msg.elapsed))

    def on_policy_status(self, msg: PolicyStatus) -> None:
        """Trials wait until the policy has a model loaded and is active (publishes chunks)."""
        active = msg.lifecycle_state in ("", "active")   # "": a policy that is not managed
        self.session.on_policy_status(msg.state not in _NOT_READY and active, msg.message)

    def on_start_trial(self, request, response):
        """The technician has reset the scene: start the trial (real mode)."""
        ok, message, actions = self.session.start(now_seconds(self))
        response.success, response.message = ok, message
        if not ok:
            self.get_logger().warning(f"start_trial refused: {message}")
        self.apply(actions)
        return response

    def on_label_trial(self, request, response):
        """A technician's label; bad requests get success=false and say why."""
        ok, message, actions = self.session.label(
            request.trial_index, request.outcome, float(request.progress), request.notes,
            now_seconds(self))
        response.success, response.message = ok, message
        if not ok:
            self.get_logger().warning(f"label_trial refused: {message}")
        self.apply(actions)
        return response

    # ------------------------------------------------------------------ outputs

    def apply(self, actions: list) -> None:
        """Carry out the session's actions."""
        log = self.get_logger()
        for a in actions:
            if isinstance(a, ev.Prompt):
                if a.level == "error":  # one call site per severity (rclpy requires it)
                    log.error(a.text)
                elif a.level == "warn":
                    log.warning(a.text)
                else:
                    log.info(a.text)
            elif isinstance(a, ev.SendInstruction):
                self.instruction_pub.publish(String(data=a.text))
            elif isinstance(a, ev.Estop):
                self.estop_pub.publish(Bool(data=a.engage))
            elif isinstance(a, ev.ResetSim):
                self._call(self.reset_client, ResetTask.Request(task=a.task, seed=a.seed),
                           self._on_reset_response)
            elif isinstance(a, ev.GoHome):
                self._call(self.home_client, Trigger.Request(), self._on_home_response)
            elif isinstance(a, ev.TrialFinished):
                self.publish_status()
            elif isinstance(a, ev.EvaluationFinished):
                self._report(a.results_dir)

    def _call(self, client, request, callback) -> None:
        self._pending_calls.append((client, request, callback))

    def _on_reset_response(self, future) -> None:
        r = future.result()
        ok, message = (r.success, r.message) if r is not None else (False, "no response")
        self.apply(self.session.on_reset_done(ok, message, now_seconds(self)))

    def _on_home_response(self, future) -> None:
        r = future.result()
        ok, message = (r.success, r.message) if r is not None else (False, "no response")
        match = re.search(r"in ([0-9.]+) s", message)  # executor: "going home in 2.3 s"
        wait = float(match.group(1)) + 0.5 if match else 0.0
        self.apply(self.session.on_home_done(ok, message, now_seconds(self), wait))

    def _report(self, results_dir: str) -> None:
        from rich.console import Console

        buffer = io.StringIO()
        try:
            write_report(results_dir, console=Console(file=buffer, width=110))
        except (ValueError, OSError) as exc:
            self.get_logger().error(f"report failed: {exc}")
            return
        self.get_logger().info(f"report written to {results_dir} (summary.json, report.png)\n"
                               f"{buffer.getvalue()}")

    def publish_status(self) -> None:
        """TaskStatus of the current (or last) trial on eval_status, and diagnostics."""
        s = self.session.status(now_seconds(self))
        msg = TaskStatus(task=s["task"], instruction=s["instruction"], seed=int(s["seed"]),
                         elapsed=float(s["elapsed"]), success=bool(s["success"]))
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = f"trial {s['trial']}/{s['total']} {s['state']}"
        self.status_pub.publish(msg)
        level = WARN if s["estop"] or s["state"] == "awaiting_label" else OK
        self.diagnostics.publish(level, f"{s['state']} {s['step']}".strip(), {
            "plan": s["plan"], "mode": s["mode"], "trial": f"{s['trial']}/{s['total']}",
            "counted": s["counted"], "successes": s["successes"], "aborted": s["aborted"],
            "task": s["task"], "elapsed": float(s["elapsed"]), "estop": s["estop"]})

    # ------------------------------------------------------------------ helpers

    def _is_own(self, info) -> bool:
        """Whether an e-stop message came from this node's publisher (by publisher GID)."""
        gid = (info or {}).get("publisher_gid") if isinstance(info, dict) else None
        if gid is None:
            return False
        data = bytes(gid.get("data", b"")) if isinstance(gid, dict) else bytes(gid)
        if not self._own_estop_gids:
            for endpoint in self.get_publishers_info_by_topic(self.p["estop_topic"]):
                if (endpoint.node_name == self.get_name()
                        and endpoint.node_namespace == self.get_namespace()):
                    self._own_estop_gids.add(bytes(endpoint.endpoint_gid))
        return any(data[:len(own)] == own or own[:len(data)] == data
                   for own in self._own_estop_gids if own and data)

    def close(self) -> None:
        """Leave the policy without an instruction (robot holds) when the node stops."""
        if self.session.current is not None:
            try:
                self.instruction_pub.publish(String(data=""))
            except Exception:  # noqa: BLE001 - the context may already be shut down
                pass


def main(args=None) -> int:
    """Entry point of ``ros2 run roboalign_ros eval_node``."""
    return run_node(EvalNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
