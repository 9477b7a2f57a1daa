"""``roboalign eval``: run a simulated evaluation end to end, or report on results.

    roboalign eval run --plan config/eval/sim_smoke.yaml [--model tiny] [--duration-per-trial S]
    roboalign eval report RESULTS_DIR [--out DIR]
    roboalign eval sim --model DIR --task T[,T2] --seeds A-B [--out DIR]   headless, in sim time

``run`` starts sim_node, policy_node and executor_node as processes (like ``roboalign demo``)
and drives eval_node in this process until every trial of the plan is counted, then prints
the report. Results go to ``<results-dir>/<plan name>/``; running the same plan again resumes
where it stopped (``--fresh`` starts over in a new directory instead). Real-robot evaluations
run ``eval_node`` with ``mode:=real`` next to the robot's own bringup. ``sim`` runs the same
sim, policy and executor in this process without ROS, faster than real time
(:mod:`roboalign_ros.evaluation.headless`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from roboalign_ros.apps.node_processes import NodeProcesses


def run(a: argparse.Namespace) -> int:
    """Sim + policy + executor processes, eval_node in-process, report at the end."""
    from roboalign_ros.evaluation.headless import parse_executor_overrides
    from roboalign_ros.evaluation.plan import PlanError, load_plan
    from roboalign_ros.evaluation.report import write_report
    from roboalign_ros.nodes.eval_node import resolve_plan

    try:
        plan = load_plan(resolve_plan(a.plan))
        plan.check_mode("sim")
        executor = parse_executor_overrides(a.executor)
    except (PlanError, ValueError) as exc:
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
    nodes.start("executor_node", "executor.yaml", {"servo.manage": False, **executor})  # sim
    nodes.start("policy_node", "policy.yaml",
                {"model_path": a.model, "device": a.device, "reasoning_every": a.reasoning_every,
                 "max_rate": a.max_rate,
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


def sim(a: argparse.Namespace) -> int:
    """Headless evaluation: per-task success with Wilson intervals, results in --out."""
    from roboalign_ros.evaluation import headless as hl

    model = f"{hl.REMOTE}{a.server}" if a.server else a.model
    out = Path(a.out) if a.out else hl.default_out(model)
    try:
        seeds = hl.parse_seeds(a.seeds) if a.seeds else \
            hl.eval_seeds(a.episodes_per_task or hl.DEFAULT_EPISODES)
        config = hl.SimEvalConfig(
            robot=a.robot, device=a.device, action_source=a.action_source,
            reasoning_every=a.reasoning_every, latency_scale=a.latency_scale,
            fixed_latency=a.fixed_latency, episode_seconds=a.episode_seconds,
            camera_rate=a.camera_rate, max_rate=a.max_rate,
            image_size=tuple(a.image_size) if a.image_size else None,
            torch_threads=a.torch_threads, workers=a.workers, token_file=a.token_file,
            executor=hl.parse_executor_overrides(a.executor), progress=not a.quiet)
        result = hl.evaluate(model, a.task, seeds, out, config)
    except KeyboardInterrupt:
        print(f"interrupted: finished episodes are saved in {out}; run again to resume",
              file=sys.stderr)
        return 130
    except hl.PolicyCrashed as exc:
        print(f"roboalign eval sim: {exc} (finished episodes are saved in {out})",
              file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"roboalign eval sim: {exc}", file=sys.stderr)
        return 2
    print(f"{result.ran} episodes in {result.wall_seconds:.1f} s: "
          f"{result.episodes_per_minute:.1f} episodes/min, {result.realtime_factor:.1f}x real "
          f"time\nresults: {out / 'results.jsonl'}\nreport: {out / 'report.png'}, "
          f"{out / 'summary.json'}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``roboalign eval`` argument parser."""
    p = argparse.ArgumentParser(prog="roboalign eval", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The subcommands of ``roboalign eval`` (run, report, sim), each setting ``func``."""
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
    r.add_argument("--max-rate", type=float, default=0.0,
                   help="Hz cap on policy_node's chunks (0: as fast as the model goes)")
    r.add_argument("--startup-timeout", type=float, default=180.0,
                   help="s allowed for the nodes and the model to come up")
    r.add_argument("--log-dir", default="log/eval")
    r.add_argument("--executor", action="append", default=[], metavar="KEY=VALUE",
                   help="executor_node parameter, e.g. blend=temporal_ensemble (repeatable)")
    r.set_defaults(func=run)
    rep = sub.add_parser("report", help="table + plot + summary.json from results")
    rep.add_argument("results_dir", help="directory with results.jsonl (or the file)")
    rep.add_argument("--out", default=None, help="output directory (default: next to results)")
    rep.set_defaults(func=report)
    s = sub.add_parser("sim", help="headless in-process evaluation in sim time (no ROS graph)")
    model = s.add_mutually_exclusive_group(required=True)
    model.add_argument("--model",
                       help="checkpoint dir, 'tiny' (random policy) or 'expert' (the scripted "
                            "expert's plan replayed through the loop: its ceiling)")
    model.add_argument("--server", metavar="HOST:PORT",
                       help="the policy a `roboalign serve` serves, as policy_node's inference "
                            "remote uses it")
    s.add_argument("--token-file", default="", help="the server's token (--server)")
    s.add_argument("--task", required=True, help="task names, comma-separated, or 'all'")
    seeds = s.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", help="e.g. 100000-100049 or 1,2,5-7")
    seeds.add_argument("--episodes-per-task", type=int, default=None,
                       help="the first N held-out evaluation seeds (default 10)")
    s.add_argument("--out", default=None,
                   help="results dir (default runs/eval_sim/<model name>); resumed if it exists")
    s.add_argument("--action-source", choices=("head", "tokens"), default=None,
                   help="override the policy's: tokens = the MLLM's own action tokens")
    s.add_argument("--reasoning-every", type=int, default=-1,
                   help="-1: the checkpoint's, 0: off, N: every N chunks")
    s.add_argument("--latency-scale", type=float, default=1.0,
                   help="sim seconds of delay per wall second of inference")
    s.add_argument("--fixed-latency", type=float, default=None, metavar="S",
                   help="s of inference delay instead of the measured one")
    s.add_argument("--episode-seconds", type=float, default=None,
                   help="s per episode (default: each task's)")
    s.add_argument("--camera-rate", type=float, default=None, help="Hz (default: sim.yaml)")
    s.add_argument("--max-rate", type=float, default=0.0,
                   help="Hz cap on the policy's decisions, as policy_node's max_rate (0: none)")
    s.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="camera image size (default: the policy's)")
    s.add_argument("--device", default="auto")
    s.add_argument("--torch-threads", type=int, default=1, help="CPU threads, 0: torch's")
    s.add_argument("--robot", default="sim_arm")
    s.add_argument("--workers", type=int, default=1,
                   help="processes running episodes (each loads the model; one per core)")
    s.add_argument("--executor", action="append", default=[], metavar="KEY=VALUE",
                   help="executor_node parameter for these episodes, e.g. "
                        "blend=temporal_ensemble (repeatable)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=sim)


def main(argv: list[str] | None = None) -> int:
    """``roboalign eval ...``."""
    a = parser().parse_args(argv)
    return int(a.func(a) or 0)
