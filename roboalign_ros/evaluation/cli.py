"""``roboalign eval``: run a simulated evaluation end to end, or report on results.

    roboalign eval run --plan config/eval/sim_smoke.yaml [--model tiny] [--duration-per-trial S]
    roboalign eval report RESULTS_DIR [--out DIR]

``run`` starts sim_node, policy_node and executor_node as processes (like ``roboalign demo``)
and drives eval_node in this process until every trial of the plan is counted, then prints
the report. Results go to ``<results-dir>/<plan name>/``; running the same plan again resumes
where it stopped (``--fresh`` starts over in a new directory instead). Real-robot evaluations
run ``eval_node`` with ``mode:=real`` next to the robot's own bringup.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from roboalign_ros.node_processes import NodeProcesses


def run(a: argparse.Namespace) -> int:
    """Sim + policy + executor processes, eval_node in-process, report at the end."""
    from roboalign_ros.evaluation.plan import PlanError, load_plan
    from roboalign_ros.evaluation.report import write_report
    from roboalign_ros.nodes.eval_node import resolve_plan

    try:
        plan = load_plan(resolve_plan(a.plan))
        plan.check_mode("sim")
    except PlanError as exc:
        print(f"roboalign eval run: {exc}", file=sys.stderr)
        return 2
    results_root = Path(a.results_dir).expanduser()
    if a.fresh:
        results_root = results_root / time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    limit = a.duration_per_trial or max(t.time_limit for t in plan.tasks)
    budget = a.startup_timeout + plan.total * (limit + 15.0)
    nodes = NodeProcesses(log_dir)
    nodes.start("sim_node", "sim.yaml", {"task": plan.tasks[0].task, "publish_instruction": False,
                                         "camera.width": a.camera_size[0],
                                         "camera.height": a.camera_size[1],
                                         "camera.rate": a.camera_rate})
    nodes.start("executor_node", "executor.yaml")
    nodes.start("policy_node", "policy.yaml",
                {"model_path": a.model, "device": a.device, "reasoning_every": a.reasoning_every,
                 "torch_threads": 1 if a.device == "cpu" else 0})
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from roboalign_ros.nodes.eval_node import EvalNode

    rclpy.init()
    node = executor = None
    code = 1
    try:
        overrides = {"plan": str(resolve_plan(a.plan)), "mode": "sim",
                     "results_dir": str(results_root), "operator": a.operator,
                     "time_limit": float(a.duration_per_trial or 0.0),
                     "wait_for_policy": True, "auto_label": True}
        node = EvalNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        print(f"roboalign eval: plan '{plan.name}' ({plan.total} trials), model {a.model}; "
              f"node logs in {log_dir}; results in {results_root / plan.name}")
        deadline = time.monotonic() + budget
        while not node.session.finished:
            executor.spin_once(timeout_sec=0.05)
            dead = nodes.exited()
            if dead:
                print(f"node exited early: {dead} (see {log_dir})", file=sys.stderr)
                break
            if time.monotonic() > deadline:
                print(f"stopped after {budget:.0f} s; run again to resume", file=sys.stderr)
                break
        code = 0 if node.session.finished else 1
    except KeyboardInterrupt:
        print("interrupted: finished trials are saved; run again to resume", file=sys.stderr)
    finally:
        if node is not None:
            node.close()
        nodes.stop()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    results = results_root / plan.name
    if (results / "results.jsonl").exists():
        if code != 0:  # finished runs were reported (table in the log above) by eval_node
            print("partial results so far:")
            write_report(results)
        print(f"results: {results / 'results.jsonl'}\nreport: {results / 'report.png'}, "
              f"{results / 'summary.json'}")
    return code


def report(a: argparse.Namespace) -> int:
    """Print the table, write summary.json and report.png."""
    from roboalign_ros.evaluation.report import write_report

    try:
        write_report(a.results_dir, a.out)
    except ValueError as exc:
        print(f"roboalign eval report: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out or a.results_dir)
    print(f"wrote {out / 'summary.json'} and {out / 'report.png'}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``roboalign eval`` argument parser."""
    p = argparse.ArgumentParser(prog="roboalign eval", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a plan in the sim (sim + policy + executor + eval)")
    r.add_argument("--plan", default="config/eval/sim_smoke.yaml")
    r.add_argument("--model", default="tiny", help="checkpoint dir or 'tiny' (random policy)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--duration-per-trial", type=float, default=0.0,
                   help="s; overrides the plan's time limits (0: the plan's)")
    r.add_argument("--results-dir", default=os.path.expanduser("~/roboalign_eval"))
    r.add_argument("--fresh", action="store_true", help="new timestamped results dir")
    r.add_argument("--operator", default=os.environ.get("USER", ""))
    r.add_argument("--camera-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    r.add_argument("--camera-rate", type=float, default=10.0)
    r.add_argument("--reasoning-every", type=int, default=5)
    r.add_argument("--startup-timeout", type=float, default=180.0,
                   help="s allowed for the nodes and the model to come up")
    r.add_argument("--log-dir", default="log/eval")
    r.set_defaults(func=run)
    rep = sub.add_parser("report", help="table + plot + summary.json from results")
    rep.add_argument("results_dir", help="directory with results.jsonl (or the file)")
    rep.add_argument("--out", default=None, help="output directory (default: next to results)")
    rep.set_defaults(func=report)
    return p


def main(argv: list[str] | None = None) -> int:
    """``roboalign eval ...``."""
    a = parser().parse_args(argv)
    return int(a.func(a) or 0)
