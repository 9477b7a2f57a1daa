"""The `roboalign` command line: dispatch and argument translation (no ROS needed)."""

from pathlib import Path

from roboalign_ros import cli


def test_sim_arguments_become_sim_node_ros_args():
    args = cli._sim_args(["--task", "push_green_block_left", "--seed", "3",
                          "--camera-rate", "5", "--camera-size", "320", "240"])
    assert args[:2] == ["--ros-args", "--params-file"]
    assert Path(args[2]).name == "sim.yaml" and Path(args[2]).is_file()
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "-p"]
    assert pairs == ["task:=push_green_block_left", "seed:=3", "camera.rate:=5.0",
                     "camera.width:=320", "camera.height:=240"]


def test_unknown_commands_are_refused_with_the_known_ones(capsys):
    assert cli.main(["fly"]) == 2
    err = capsys.readouterr().err
    assert "unknown command" in err and "train sft" in err and "demo" in err
    assert cli.main(["node", "no_such_node"]) == 2


def test_every_delegate_exists():
    import importlib

    for (command, sub), (module, function) in cli.DELEGATES.items():
        assert callable(getattr(importlib.import_module(module), function)), (command, sub)
    for script in cli.SCRIPTS.values():
        assert (Path(cli.__file__).resolve().parents[1] / "scripts" / script).is_file()


def test_workers_spawned_from_the_console_script_do_not_rerun_the_command(tmp_path):
    """colcon's `roboalign` script has no __main__ guard; spawned workers must not re-run it."""
    import os
    import subprocess
    import sys

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
    import json

    assert json.loads((out / "meta" / "info.json").read_text())["total_episodes"] == 2
