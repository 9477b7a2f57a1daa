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
