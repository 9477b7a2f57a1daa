"""What the launch files wire: executables exist, parameter files exist and set only declared
parameters, launch arguments feed real parameters.

`launch` / `launch_ros` are not installable here (ENVIRONMENT.md), so each launch file runs
against recording stand-ins of their classes: every action it builds is captured with its
arguments and checked against the package (CMakeLists.txt nodes, config/ files, each node's
PARAMETERS). The real launch system was run on these files separately (README, "verified").
"""

import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


class Recorded:
    """An instance of any launch class: remembers how it was built."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class PackageNotFoundError(KeyError):
    pass


def _classes(module_name, names):
    module = types.ModuleType(module_name)
    for name in names:
        setattr(module, name, type(name, (Recorded,), {}))
    return module


def _share(package):
    if package == "roboalign_ros":
        return str(ROOT)
    if package in ("realsense2_camera", "robot_state_publisher"):  # optional: checked below
        raise PackageNotFoundError(package)
    return f"/opt/ros/share/{package}"  # other packages of a full ROS install


@pytest.fixture
def fake_launch(monkeypatch):
    """Install recording stand-ins for launch, launch_ros and ament_index_python."""
    modules = {
        "launch": _classes("launch", ["LaunchDescription"]),
        "launch.actions": _classes("launch.actions", [
            "DeclareLaunchArgument", "IncludeLaunchDescription", "OpaqueFunction",
            "RegisterEventHandler", "GroupAction", "TimerAction", "LogInfo"]),
        "launch.conditions": _classes("launch.conditions", [
            "IfCondition", "UnlessCondition", "LaunchConfigurationEquals"]),
        "launch.substitutions": _classes("launch.substitutions", [
            "Command", "FindExecutable", "LaunchConfiguration", "PythonExpression",
            "PathJoinSubstitution", "TextSubstitution"]),
        "launch.launch_description_sources": _classes(
            "launch.launch_description_sources", ["PythonLaunchDescriptionSource"]),
        "launch.event_handlers": _classes("launch.event_handlers", ["OnProcessExit"]),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": _classes("launch_ros.actions", ["Node"]),
        "launch_ros.parameter_descriptions": _classes("launch_ros.parameter_descriptions",
                                                      ["ParameterValue"]),
        "ament_index_python": types.ModuleType("ament_index_python"),
        "ament_index_python.packages": types.ModuleType("ament_index_python.packages"),
    }
    modules["ament_index_python.packages"].get_package_share_directory = _share
    modules["ament_index_python.packages"].PackageNotFoundError = PackageNotFoundError
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


def load_description(path):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def walk(entity, context):
    """All Recorded actions reachable from ``entity`` (expanding OpaqueFunctions)."""
    if isinstance(entity, (list, tuple)):
        for item in entity:
            yield from walk(item, context)
        return
    if not isinstance(entity, Recorded):
        return
    yield entity
    if type(entity).__name__ == "OpaqueFunction" and context is not None:
        function = entity.kwargs["function"]
        yield from walk(function(context, *entity.kwargs.get("args", [])), context)
    for value in [*entity.args, *entity.kwargs.values()]:
        yield from walk(value, context)


class Context:
    """Launch context in which every LaunchConfiguration takes a chosen value."""

    def __init__(self, values):
        self.values = values


def _perform(self, context):
    return context.values[self.args[0]]


def installed_nodes():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    return set(re.search(r"set\(ROBOALIGN_NODES\s+([^)]*)\)", cmake).group(1).split())


def flatten(mapping, prefix=""):
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, name + ".")
        else:
            yield name


def check_node(node, arguments):
    kw = node.kwargs
    if kw["package"] != "roboalign_ros":
        return None
    executable = kw["executable"]
    assert executable in installed_nodes(), f"{executable} is not installed by CMakeLists.txt"
    module = importlib.import_module(f"roboalign_ros.nodes.{executable}")
    declared = set(module.PARAMETERS)
    node_name = kw.get("name", executable)
    for entry in kw.get("parameters", []):
        if isinstance(entry, str):
            path = Path(entry)
            assert path.is_file(), f"{executable}: parameter file {path} missing"
            doc = yaml.safe_load(path.read_text())
            assert node_name in doc, f"{path.name} has no section for node {node_name!r}"
            keys = set(flatten(doc[node_name]["ros__parameters"]))
        else:
            keys = set(entry)
            for value in entry.values():  # launch arguments feeding parameters must exist
                source = value.args[0] if type(value).__name__ == "ParameterValue" else value
                if type(source).__name__ == "LaunchConfiguration":
                    assert source.args[0] in arguments, f"undeclared argument {source.args[0]}"
        undeclared = keys - declared
        assert not undeclared, f"{executable} does not declare {sorted(undeclared)}"
    return executable


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=[p.name for p in LAUNCH_FILES])
def test_launch_file_wiring(path, fake_launch, monkeypatch):
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    description = load_description(path)
    declared = {a.args[0]: a.kwargs.get("default_value") for a in walk(description.args, None)
                if type(a).__name__ == "DeclareLaunchArgument"}
    for name, default in declared.items():
        assert isinstance(default, str), f"{path.name}: argument {name} needs a string default"
    choices = [dict(declared)]
    if "camera" in declared:  # every camera choice must wire up
        choices = [dict(declared, camera=c) for c in ("camera_node", "none")]
    started = set()
    for values in choices:
        for action in walk(description.args, Context(values)):
            if type(action).__name__ == "Node":
                started.add(check_node(action, declared))
    if path.name == "sim.launch.py":
        assert {"sim_node", "policy_node", "executor_node"} <= started
    if path.name == "bringup.launch.py":
        assert {"camera_node", "policy_node", "executor_node"} <= started


def test_bringup_refuses_unknown_camera_and_explains_missing_realsense(fake_launch, monkeypatch):
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    description = load_description(ROOT / "launch" / "bringup.launch.py")
    opaque = [a for a in walk(description.args, None) if type(a).__name__ == "OpaqueFunction"]
    function, args = opaque[0].kwargs["function"], opaque[0].kwargs["args"]
    with pytest.raises(RuntimeError, match="realsense2_camera package"):
        function(Context({"camera": "realsense2_camera"}), *args)
    with pytest.raises(RuntimeError, match="not one of"):
        function(Context({"camera": "webcam"}), *args)


def test_sim_launch_without_robot_state_publisher(fake_launch, monkeypatch):
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    description = load_description(ROOT / "launch" / "sim.launch.py")
    opaque = [a for a in walk(description.args, None) if type(a).__name__ == "OpaqueFunction"]
    function, args = opaque[0].kwargs["function"], opaque[0].kwargs["args"]
    assert function(Context({"robot_state_publisher": "false"}), *args) == []
    info = function(Context({"robot_state_publisher": "auto"}), *args)
    assert type(info[0]).__name__ == "LogInfo" and "not installed" in info[0].kwargs["msg"]
    with pytest.raises(RuntimeError, match="robot_state_publisher package"):
        function(Context({"robot_state_publisher": "true"}), *args)
