"""``roboalign``: one command line for users with or without the ros2 CLI.

Every command is a leaf of one argparse tree, :data:`COMMANDS`, so ``roboalign ... --help`` is
always current. A leaf's options come from the module that implements it: its
``add_arguments(parser)`` adds them and sets ``func``, the handler (parsed options -> exit
status); the module's own ``main(argv)`` builds the same parser alone. A leaf's module is
imported only when that command is parsed: ``roboalign --help`` and ``roboalign train --help``
import neither rclpy nor torch, and training machines without ROS can use the training, model
and bench commands. The training stages come from :mod:`roboalign_ros.training.stages`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import sys

from roboalign_ros.training import stages

NODES = ("camera_node", "eval_node", "executor_node", "policy_node", "recorder_node",
         "sim_node", "teleop_node")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that gets its options from ``fill(parser)`` when first used."""

    def __init__(self, *args, fill=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._fill = fill

    def _filled(self) -> None:
        fill, self._fill = self._fill, None
        if fill is not None:
            fill(self)

    def parse_known_args(self, args=None, namespace=None):
        self._filled()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._filled()
        return super().format_help()


def _from(module: str, function: str = "add_arguments"):
    """``module.function(parser)``, the module imported when the command is parsed."""
    return lambda parser: getattr(importlib.import_module(module), function)(parser)


def _script(name: str):
    """``add_arguments`` of ``scripts/<name>``, a benchmark of the source checkout."""
    def add(parser: argparse.ArgumentParser) -> None:
        from roboalign_ros.robot import package_path

        path = package_path("scripts", name)
        if not path.is_file():
            parser.error(f"{name} is part of the source checkout ({path} not found)")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module          # dataclasses look their module up there
        spec.loader.exec_module(module)
        module.add_arguments(parser)
    return add


def _add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=None, help="task name or instruction")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--camera-rate", type=float, default=None, help="Hz")
    parser.add_argument("--camera-size", type=int, nargs=2, metavar=("W", "H"), default=None)
    parser.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], metavar="ARG",
                        help="the rest goes to the node, e.g. --ros-args -p camera.depth:=true")
    parser.set_defaults(func=lambda args: _run_node("sim_node", _sim_ros_args(args)))


def _node_command(name: str):
    """``roboalign node <name>``: its ``--help`` lists the node's parameters, from its spec."""
    def add(parser: argparse.ArgumentParser) -> None:
        from roboalign_ros.parameters import load_spec

        spec = load_spec(name)
        lines = [f"  {p.name} ({p.type}, default {p.default!r}"
                 f"{'; ' + p.rules() if p.rules() else ''}): {p.description}" for p in spec]
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = (f"parameters (--ros-args -p NAME:=VALUE; config/parameters/{name}.yaml, "
                         "docs/parameters.md):\n" + "\n".join(lines))
        parser.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], metavar="ARG",
                            help="the node's ROS arguments, e.g. --ros-args -p rate:=10")
        parser.set_defaults(func=lambda args: _run_node(name, ["--ros-args", *args.ros_args]),
                            name=name)
    return add


# command -> (one-line help, what it is): a function adding a leaf's options, or subcommands
COMMANDS = {
    "demo": ("the simulated closed loop (sim + policy + executor), what happens printed",
             _from("roboalign_ros.apps.demo")),
    "sim": ("the MuJoCo arm node alone (like `ros2 run roboalign_ros sim_node`)",
            _add_sim_arguments),
    "node": ("any node of the package (like `ros2 run`)", {
        name: (f"{name} (its parameters: --help)", _node_command(name)) for name in NODES}),
    "record": ("expert demos of the sim tasks", {
        "sim": ("through the ROS graph (sim_node + recorder_node), in real time",
                _from("roboalign_ros.apps.record_sim")),
        "bulk": ("headless, in sim time, in parallel processes",
                 _from("roboalign_ros.recording.bulk")),
    }),
    "data": ("datasets from elsewhere", {
        "from-bag": ("rosbag2 (MCAP / sqlite3) -> dataset",
                     _from("roboalign_ros.recording.from_bag")),
    }),
    "train": ("one training stage (in pipeline order)", {
        name: (stage.summary, functools.partial(stages.add_arguments, stage=name))
        for name, stage in stages.STAGES.items()}),
    "eval": ("evaluation trials: through the ROS graph (run), headless in sim time (sim), report",
             _from("roboalign_ros.apps.evaluate")),
    "explain": ("where a policy looks: attention maps (PNG)", _from("roboalign_ros.apps.explain")),
    "serve": ("a policy as a network service for policy_nodes elsewhere (no ROS)",
              _from("roboalign_ros.apps.serve")),
    "repro": ("RoboAlign's comparison in miniature: record -> train -> evaluate -> report",
              _from("roboalign_ros.apps.repro")),
    "bench": ("benchmarks", {
        "policy": ("VLA policy latency (no ROS)", _from("roboalign_ros.model.bench")),
        "serving": ("action-chunk inter-arrival while reasoning runs (no ROS)",
                    _script("bench_serving.py")),
        "executor": ("the executor core's control loop (no ROS)", _script("bench_executor.py")),
        "sim": ("MuJoCo physics real-time factor and render rate", _script("bench_sim.py")),
        "closed-loop": ("chunk rate and latency of the closed loop on this machine",
                        _from("roboalign_ros.apps.demo", "add_bench_arguments")),
    }),
    "model": ("checkpoints", {
        "tiny": ("write a tiny random policy checkpoint (or a random backbone)",
                 _from("roboalign_ros.model.tiny")),
    }),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``roboalign`` parser: every command of :data:`COMMANDS`, each leaf filled when used."""
    parser = _Parser(prog="roboalign",
                     description="One command line for users with or without the ros2 CLI.",
                     epilog="`roboalign COMMAND [SUBCOMMAND] --help` shows a command's options. "
                            "Nothing imports rclpy or torch until a command runs.")
    _add_commands(parser, COMMANDS)
    return parser


def _add_commands(parser: argparse.ArgumentParser, commands: dict) -> None:
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, (help_, body) in commands.items():
        if isinstance(body, dict):
            _add_commands(sub.add_parser(name, help=f"{help_}: {', '.join(body)}",
                                         description=help_), body)
        else:
            sub.add_parser(name, help=help_, description=help_, fill=body)


def _run_node(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"roboalign_ros.nodes.{name}")
    return module.main(["roboalign", *argv])


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
    """Parse ``roboalign <command> [<sub>] ...`` and run the command (``--help``: exit 0)."""
    _let_workers_import_this_module()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    result = args.func(args)
    return result if isinstance(result, int) else 0  # some commands return their results


def _sim_ros_args(args: argparse.Namespace) -> list[str]:
    """``roboalign sim`` options -> sim_node's ``--ros-args``."""
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
    return out + [a for a in args.ros_args if a != "--ros-args"]


if __name__ == "__main__":
    raise SystemExit(main())
