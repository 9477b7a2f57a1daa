"""The `roboalign` command line: one argparse tree, current help, one stage registry (no ROS)."""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from roboalign_ros import cli
from roboalign_ros.training import stages

# every command users had before the tree (issue 24): none may go missing
KNOWN = {"demo", "sim", "node", "record sim", "record bulk", "data from-bag", "eval", "eval run",
         "eval report", "eval sim", "explain", "repro", "bench policy", "bench serving",
         "bench executor", "bench sim", "bench closed-loop", "model tiny",
         *(f"train {name}" for name in stages.STAGES)}


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    """name -> parser of ``parser``'s subcommands (its options filled from their modules)."""
    parser.format_help()
    return next((a.choices for a in parser._actions
                 if isinstance(a, argparse._SubParsersAction)), {})


def _commands(parser=None, prefix=()) -> list[tuple[str, ...]]:
    """Every command and subcommand of the tree, depth first."""
    out = []
    for name, sub in _subcommands(parser or cli.build_parser()).items():
        out += [(*prefix, name), *_commands(sub, (*prefix, name))]
    return out


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_command_and_subcommand_has_its_own_current_help(capsys):
    commands = _commands()
    assert KNOWN <= {" ".join(c) for c in commands}
    for command in commands:
        out = _help(capsys, *command)
        assert out.startswith(f"usage: roboalign {' '.join(command)} "), command
    # a leaf's options are its module's: record bulk has the flag bulk.py defines today
    assert "--lerobot-depth" in _help(capsys, "record", "bulk")
    assert "--max-rate" in _help(capsys, "eval", "sim")


def test_the_help_lists_every_command_and_every_training_stage(capsys):
    top = _help(capsys)
    for name in cli.COMMANDS:
        assert f"\n    {name} " in top, name
    assert "train" in top and all(name in top for name in stages.STAGES)
    train = " ".join(_help(capsys, "train").split())
    for name, stage in stages.STAGES.items():
        assert f"{name} {stage.summary}" in train
    assert cli.main([]) == 0 and capsys.readouterr().out == top   # no arguments: the help


def test_help_imports_neither_torch_nor_rclpy():
    code = ("import sys, contextlib, io\nfrom roboalign_ros.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['train', 'sft', '--help']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        main(argv)\n"
            "print(sorted(m for m in ('torch', 'rclpy') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_one_stage_registry_for_the_cli_repro_and_the_training_package():
    from roboalign_ros import training
    from roboalign_ros.apps import repro, repro_plan
    from roboalign_ros.robot import package_path

    names = list(stages.STAGES)
    assert training.STAGES is stages.STAGES and "ground" in names
    assert list(_subcommands(_subcommands(cli.build_parser())["train"])) == names
    # repro runs every stage, in the registry's order, each on its own config field
    ran = [repro_plan.TRAINS[s] for s in repro.STAGES if s in repro_plan.TRAINS]
    assert list(dict.fromkeys(ran)) == names
    defaults = repro.ReproConfig()
    for name, stage in stages.STAGES.items():
        assert getattr(defaults, name) == stage.mini
        assert stage.configs and all(package_path(*c.split("/")).is_file()
                                     for c in stage.configs), stage.configs
        source = Path(importlib.util.find_spec(stage.module).origin).read_text()
        assert f"def run_{name}(" in source and f'stages.main("{name}", argv)' in source


def test_train_runs_the_registered_stage(monkeypatch, capsys):
    seen = []

    def run(stage, config, overrides=()):
        seen.append((stage.name, config, list(overrides)))
        return {"frames": 3}

    monkeypatch.setattr(stages.Stage, "run", run)
    assert cli.main(["train", "ground", "--config", "g.yaml", "--set", "run.seed=1"]) == 0
    assert seen == [("ground", "g.yaml", ["run.seed=1"])]
    assert json.loads(capsys.readouterr().out) == {"frames": 3}
    from roboalign_ros.training import main as train_main

    assert train_main(["nope"]) == 2 and train_main(["rationale", "--config", "r.yaml"]) == 0
    assert seen[-1] == ("rationale", "r.yaml", [])


def test_a_command_runs_its_modules_handler_with_its_exit_status(tmp_path):
    # from_bag's handler: 2 for a bag that is not there, as `from_bag.main` says
    assert cli.main(["data", "from-bag", str(tmp_path / "nothing"), "--out",
                     str(tmp_path / "y"), "--quiet"]) == 2


def test_sim_arguments_become_sim_node_ros_args():
    args = cli.build_parser().parse_args([
        "sim", "--task", "push_green_block_left", "--seed", "3", "--camera-rate", "5",
        "--camera-size", "320", "240", "--ros-args", "-p", "camera.depth:=true"])
    ros = cli._sim_ros_args(args)
    assert ros[:2] == ["--ros-args", "--params-file"]
    assert Path(ros[2]).name == "sim.yaml" and Path(ros[2]).is_file()
    pairs = [ros[i + 1] for i, a in enumerate(ros) if a == "-p"]
    assert pairs == ["task:=push_green_block_left", "seed:=3", "camera.rate:=5.0",
                     "camera.width:=320", "camera.height:=240", "camera.depth:=true"]
    node = cli.build_parser().parse_args(["node", "policy_node", "--ros-args", "-p", "a:=1"])
    assert (node.name, node.ros_args) == ("policy_node", ["-p", "a:=1"])


def test_a_nodes_help_lists_its_parameters_from_its_spec(capsys):
    from roboalign_ros.parameters import load_spec

    with pytest.raises(SystemExit):
        cli.main(["node", "executor_node", "--help"])
    out = capsys.readouterr().out
    for p in load_spec("executor_node"):
        assert f"  {p.name} ({p.type}, default {p.default!r}" in out
    assert "safety.velocity_scale (double, default 0.5; in [0.01, 1.0])" in out


@pytest.mark.parametrize("argv, names", [
    (["fly"], ["invalid choice", "demo", "train"]),
    (["node", "no_such_node"], ["invalid choice", "sim_node"]),
    (["train", "nap"], ["invalid choice", *stages.STAGES]),
    (["record"], ["required"]),
])
def test_unknown_commands_are_refused_with_the_known_ones(capsys, argv, names):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert all(n in err for n in names), err


def test_workers_spawned_from_the_console_script_do_not_rerun_the_command(tmp_path):
    """colcon's `roboalign` script has no __main__ guard; spawned workers must not re-run it."""
    import os

    script = tmp_path / "roboalign"   # the three lines colcon writes
    script.write_text("import sys\nfrom roboalign_ros.cli import main\nsys.exit(main())\n")
    out = tmp_path / "dataset"
    proc = subprocess.run(
        [sys.executable, str(script), "record", "bulk", "--tasks", "pick_red_cube",
         "--episodes", "2", "--width", "64", "--height", "48", "--workers", "2", "--quiet",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bootstrapping phase" not in proc.stderr
    assert json.loads((out / "meta" / "info.json").read_text())["total_episodes"] == 2
