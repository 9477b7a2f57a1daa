"""``roboalign``: one command line for users with or without the ros2 CLI.

    roboalign demo                       the simulated closed loop (sim + policy + executor)
    roboalign sim [--task T --seed S]    the MuJoCo arm node alone (like `ros2 run ... sim_node`)
    roboalign node NAME [--ros-args ...] any node of the package (like `ros2 run`)
    roboalign record sim --task T --episodes N     expert demos recorded through the ROS graph
    roboalign record bulk --tasks T1,T2 --episodes N --out DIR   the same, headless, in sim time
    roboalign data from-bag BAG... --map M --out DIR   rosbag2 (MCAP / sqlite3) -> dataset
    roboalign train {sft,rationale,align,head} --config C [--set k=v ...]
    roboalign eval ...                   evaluation trials (see `roboalign eval -h`)
    roboalign eval sim --model DIR --task T --seeds A-B   the same, headless, in sim time
    roboalign explain --model M --dataset D --episode E --frame F   attention maps (PNG)
    roboalign repro mini                 record -> train (4 stages) -> evaluate -> report
    roboalign bench {policy,serving,executor,sim,closed-loop}
    roboalign model tiny OUT_DIR         write a tiny random policy checkpoint

Nothing here imports rclpy or torch until a subcommand needs it, so training machines without
ROS can use the training, model and bench commands.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

NODES = ("camera_node", "eval_node", "executor_node", "policy_node", "recorder_node",
         "sim_node", "teleop_node")

# subcommand -> (module, function taking argv) for commands implemented elsewhere
DELEGATES = {
    ("record", "sim"): ("roboalign_ros.apps.record_sim", "main"),
    ("record", "bulk"): ("roboalign_ros.recording.bulk", "main"),
    ("data", "from-bag"): ("roboalign_ros.recording.from_bag", "main"),
    ("train", "ground"): ("roboalign_ros.training.ground", "main"),
    ("train", "sft"): ("roboalign_ros.training.sft", "main"),
    ("train", "rationale"): ("roboalign_ros.training.rationale", "main"),
    ("train", "align"): ("roboalign_ros.training.align", "main"),
    ("train", "head"): ("roboalign_ros.training.head", "main"),
    ("bench", "policy"): ("roboalign_ros.model.bench", "main"),
    ("bench", "closed-loop"): ("roboalign_ros.apps.demo", "bench_main"),
    ("model", "tiny"): ("roboalign_ros.model.tiny", "main"),
    ("eval", None): ("roboalign_ros.apps.evaluate", "main"),
    ("demo", None): ("roboalign_ros.apps.demo", "main"),
    ("explain", None): ("roboalign_ros.apps.explain", "main"),
    ("repro", None): ("roboalign_ros.apps.repro", "main"),
}
SCRIPTS = {("bench", "executor"): "bench_executor.py", ("bench", "sim"): "bench_sim.py",
           ("bench", "serving"): "bench_serving.py"}


def _run_node(name: str, argv: list[str]) -> int:
    if name not in NODES:
        print(f"roboalign node: unknown node {name!r}; one of {', '.join(NODES)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"roboalign_ros.nodes.{name}")
    return module.main(["roboalign", *argv])


def _run_script(script: str, argv: list[str]) -> int:
    import runpy

    from roboalign_ros.robot import package_path

    path = package_path("scripts", script)
    if not path.exists():
        print(f"{script} is part of the source checkout ({path} not found)", file=sys.stderr)
        return 2
    sys.argv = [str(path), *argv]
    runpy.run_path(str(path), run_name="__main__")
    return 0


def _let_workers_import_this_module() -> None:
    """Make processes spawned by this command import ``roboalign_ros.cli``, not re-run the script.

    The ``roboalign`` script that colcon writes calls :func:`main` with no ``if __name__ ==
    "__main__"`` guard, and a spawned process (the workers of ``record bulk`` and ``eval sim``)
    runs the parent's main script again: every worker would start the whole command anew.
    With a module spec on ``__main__``, multiprocessing imports this module instead.
    """
    script = sys.modules.get("__main__")
    if script is not None and getattr(script, "__spec__", None) is None \
            and getattr(script, "main", None) is main:
        script.__spec__ = importlib.util.find_spec(__name__)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``roboalign <command> [<sub>] ...``."""
    _let_workers_import_this_module()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "sim":
        return _run_node("sim_node", _sim_args(rest))
    if command == "node":
        if not rest:
            print(f"roboalign node NAME: one of {', '.join(NODES)}", file=sys.stderr)
            return 2
        return _run_node(rest[0], rest[1:])
    sub = rest[0] if rest and not rest[0].startswith("-") else None
    for key in ((command, sub), (command, None)):
        if key in SCRIPTS:
            return _run_script(SCRIPTS[key], rest[1:])
        if key in DELEGATES:
            module, function = DELEGATES[key]
            args = rest[1:] if key[1] is not None else rest
            result = getattr(importlib.import_module(module), function)(args)
            return result if isinstance(result, int) else 0  # some mains return their results
    known = sorted({c if s is None else f"{c} {s}" for c, s in [*DELEGATES, *SCRIPTS]} |
                   {"sim", "node"})
    print(f"roboalign: unknown command {' '.join(argv[:2])!r}; known: {', '.join(known)}",
          file=sys.stderr)
    return 2


def _sim_args(argv: list[str]) -> list[str]:
    """``roboalign sim --task T --seed S --camera-rate R`` -> sim_node --ros-args."""
    parser = argparse.ArgumentParser(prog="roboalign sim",
                                     description="Run the MuJoCo arm node (no ros2 CLI needed).")
    parser.add_argument("--task", default=None, help="task name or instruction")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--camera-rate", type=float, default=None, help="Hz")
    parser.add_argument("--camera-size", type=int, nargs=2, metavar=("W", "H"), default=None)
    args, ros_args = parser.parse_known_args(argv)
    from roboalign_ros.robot import package_path

    out = ["--ros-args", "--params-file", str(package_path("config", "sim.yaml"))]
    if args.task is not None:
        out += ["-p", f"task:={args.task}"]
    if args.seed is not None:
        out += ["-p", f"seed:={args.seed}"]
    if args.camera_rate is not None:
        out += ["-p", f"camera.rate:={args.camera_rate}"]
    if args.camera_size is not None:
        out += ["-p", f"camera.width:={args.camera_size[0]}",
                "-p", f"camera.height:={args.camera_size[1]}"]
    return out + [a for a in ros_args if a != "--ros-args"]


if __name__ == "__main__":
    raise SystemExit(main())
