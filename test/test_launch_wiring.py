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

from roboalign_ros.parameters import load_spec

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


# packages _share does not find: optional ones, checked below (tests may change the set)
MISSING = {"realsense2_camera", "robot_state_publisher", "rviz2"}


def _share(package):
    if package == "roboalign_ros":
        return str(ROOT)
    if package in MISSING or "*" in MISSING:
        raise PackageNotFoundError(package)
    return f"/opt/ros/share/{package}"  # other packages of a full ROS install


@pytest.fixture
def fake_launch(monkeypatch):
    """Install recording stand-ins for launch, launch_ros and ament_index_python."""
    modules = {
        "launch": _classes("launch", ["LaunchDescription"]),
        "launch.actions": _classes("launch.actions", [
            "DeclareLaunchArgument", "IncludeLaunchDescription", "OpaqueFunction",
            "RegisterEventHandler", "GroupAction", "TimerAction", "LogInfo", "EmitEvent"]),
        "launch.events": _classes("launch.events", ["Shutdown", "matches_action"]),
        "launch.conditions": _classes("launch.conditions", [
            "IfCondition", "UnlessCondition", "LaunchConfigurationEquals"]),
        "launch.substitutions": _classes("launch.substitutions", [
            "Command", "FindExecutable", "LaunchConfiguration", "PythonExpression",
            "PathJoinSubstitution", "TextSubstitution"]),
        "launch.launch_description_sources": _classes(
            "launch.launch_description_sources", ["PythonLaunchDescriptionSource"]),
        "launch.event_handlers": _classes("launch.event_handlers", ["OnProcessExit"]),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": _classes("launch_ros.actions", ["Node", "LifecycleNode"]),
        "launch_ros.event_handlers": _classes("launch_ros.event_handlers",
                                              ["OnStateTransition"]),
        "launch_ros.events": types.ModuleType("launch_ros.events"),
        "launch_ros.events.lifecycle": _classes("launch_ros.events.lifecycle", ["ChangeState"]),
        "launch_ros.parameter_descriptions": _classes("launch_ros.parameter_descriptions",
                                                      ["ParameterValue"]),
        "launch_ros.substitutions": _classes("launch_ros.substitutions", ["FindPackageShare"]),
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
    declared = set(load_spec(executable).parameters)
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


def opaque(description, name):
    """The OpaqueFunction of ``description`` that calls ``name``: (function, args)."""
    found = [a for a in walk(description.args, None) if type(a).__name__ == "OpaqueFunction"
             and a.kwargs["function"].__name__ == name]
    assert found, f"no OpaqueFunction {name}"
    return found[0].kwargs["function"], found[0].kwargs.get("args", [])


def declared_defaults(description):
    return {a.args[0]: a.kwargs.get("default_value") for a in walk(description.args, None)
            if type(a).__name__ == "DeclareLaunchArgument"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=[p.name for p in LAUNCH_FILES])
def test_launch_file_wiring(path, fake_launch, monkeypatch):
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    if path.name == "gazebo.launch.py":  # it needs the Gazebo stack: a full install has it
        monkeypatch.setattr(sys.modules[__name__], "MISSING", set())
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
            if type(action).__name__ in ("Node", "LifecycleNode"):
                started.add(check_node(action, declared))
    if path.name == "sim.launch.py":
        assert {"sim_node", "policy_node", "executor_node"} <= started
    if path.name == "bringup.launch.py":
        assert {"camera_node", "policy_node", "executor_node"} <= started


@pytest.mark.parametrize("name", ["sim.launch.py", "bringup.launch.py"])
def test_policy_and_executor_are_lifecycle_nodes_configured_then_activated(name, fake_launch,
                                                                          monkeypatch):
    """Issue 14: both start with autostart false; the launch emits configure for each, and
    activate when it reaches inactive from configuring (once: a later manual deactivate is
    not undone), only with autostart:=true."""
    from lifecycle_msgs.msg import Transition

    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "MISSING", set())
    description = load_description(ROOT / "launch" / name)
    defaults = declared_defaults(description)
    assert defaults["autostart"] == "true"
    top = list(description.args[0])
    for node in ("policy_node", "executor_node"):
        assert load_spec(node).defaults["autostart"] is True   # ros2 run / the apps: unchanged
        (action,) = [a for a in top if type(a).__name__ == "LifecycleNode"
                     and a.kwargs["executable"] == node]
        assert action.kwargs["name"] == node and "namespace" in action.kwargs
        overrides = [e for e in action.kwargs["parameters"] if isinstance(e, dict)]
        assert overrides and overrides[-1]["autostart"] is False   # last: wins over the file

        def change_events(entities, node_action):
            return [e.kwargs["event"] for e in entities if type(e).__name__ == "EmitEvent"
                    and type(e.kwargs["event"]).__name__ == "ChangeState"
                    and e.kwargs["event"].kwargs["lifecycle_node_matcher"].args == (node_action,)]

        (configure,) = change_events(top, action)
        assert configure.kwargs["transition_id"] == Transition.TRANSITION_CONFIGURE
        assert top.index(action) < top.index(next(e for e in top if type(e).__name__ ==
                                                  "EmitEvent" and e.kwargs["event"] is configure))
        handlers = [r.args[0] for r in top if type(r).__name__ == "RegisterEventHandler"
                    and r.args[0].kwargs.get("target_lifecycle_node") is action]
        (handler,) = handlers
        assert type(handler).__name__ == "OnStateTransition"
        kw = handler.kwargs
        assert (kw["start_state"], kw["goal_state"], kw.get("handle_once")) == \
            ("configuring", "inactive", True)
        (activate,) = change_events(kw["entities"], action)
        assert activate.kwargs["transition_id"] == Transition.TRANSITION_ACTIVATE
        (emit,) = kw["entities"]
        condition = emit.kwargs["condition"]
        assert type(condition).__name__ == "IfCondition"
        assert condition.args[0].args[0] == "autostart"
    assert not [a for a in walk(description.args, Context(defaults)) if type(a).__name__ == "Node"
                and a.kwargs["executable"] in ("policy_node", "executor_node")]


def test_bringup_refuses_unknown_camera_and_explains_missing_realsense(fake_launch, monkeypatch):
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    description = load_description(ROOT / "launch" / "bringup.launch.py")
    function, args = opaque(description, "camera_driver")
    with pytest.raises(RuntimeError, match="realsense2_camera package"):
        function(Context({"camera": "realsense2_camera"}), *args)
    with pytest.raises(RuntimeError, match="not one of"):
        function(Context({"camera": "webcam"}), *args)


def test_sim_launch_without_robot_state_publisher(fake_launch, monkeypatch):
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    description = load_description(ROOT / "launch" / "sim.launch.py")
    function, args = opaque(description, "state_publisher")
    assert function(Context({"robot_state_publisher": "false"}), *args) == []
    info = function(Context({"robot_state_publisher": "auto"}), *args)
    assert type(info[0]).__name__ == "LogInfo" and "not installed" in info[0].kwargs["msg"]
    with pytest.raises(RuntimeError, match="robot_state_publisher package"):
        function(Context({"robot_state_publisher": "true"}), *args)


def test_sim_launch_opens_rviz_with_the_package_config_when_asked(fake_launch, monkeypatch):
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    description = load_description(ROOT / "launch" / "sim.launch.py")
    function, args = opaque(description, "rviz")
    assert function(Context({"rviz": "false"}), *args) == []
    with pytest.raises(RuntimeError, match="rviz2 package"):
        function(Context({"rviz": "true"}), *args)
    monkeypatch.setattr(sys.modules[__name__], "MISSING", set())   # a full ROS install
    (node,) = function(Context({"rviz": "true"}), *args)
    config = node.kwargs["arguments"][1]
    assert node.kwargs["executable"] == "rviz2" and Path(config).is_file()
    text = Path(config).read_text()
    for topic in ("/executor_node/planned_path", "/camera/camera/color/image_raw",
                  "/robot_description"):
        assert topic in text, topic


# ---------------------------------------------------------------- issue 10 (hostile probe)

def test_gazebo_lists_its_arguments_without_the_gazebo_packages(fake_launch, monkeypatch):
    """`ros2 launch ... gazebo.launch.py --show-args` failed without ros_gz_sim installed."""
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "MISSING", {"*"})  # only roboalign_ros
    description = load_description(ROOT / "launch" / "gazebo.launch.py")
    defaults = declared_defaults(description)
    assert defaults == {"world": "empty.sdf", "wrist_camera": "false",
                        "gazebo": defaults["gazebo"]}
    assert defaults["gazebo"] in ("gz", "ign")    # by ROS_DISTRO (test_gazebo_launch.py)
    # found when the launch runs: a substitution, not a path computed while building
    share = [a for a in walk(description.args, None) if type(a).__name__ == "FindPackageShare"]
    assert [a.args[0] for a in share] == ["ros_gz_sim"]
    check, args = opaque(description, "check_setup")
    with pytest.raises(RuntimeError, match=r"needs the ROS packages \['ros_gz_sim'.*'xacro'\]"):
        check(Context(defaults), *args)


BAD_VALUES = [
    ("sim.launch.py", "seed", "abc", "not an integer"),
    ("sim.launch.py", "seed", "-1", "must be >= 0"),
    ("sim.launch.py", "camera_rate", "0", "must be in (0, 60]"),
    ("sim.launch.py", "camera_rate", "nan", "must be in (0, 60]"),
    ("sim.launch.py", "reasoning_every", "often", "not an integer"),
    ("sim.launch.py", "torch_threads", "1.5", "not an integer"),
    ("sim.launch.py", "publish_instruction", "maybe", "not a boolean"),
    ("sim.launch.py", "device", "gpu", "not a device"),
    ("sim.launch.py", "robot_state_publisher", "sometimes", "not one of true, false, auto"),
    ("sim.launch.py", "model_path", "", "must not be empty"),
    ("sim.launch.py", "autostart", "later", "not a boolean"),
    ("bringup.launch.py", "autostart", "2", "not a boolean"),
    ("bringup.launch.py", "backend", "moveit_py", "not one of joint_trajectory, position, servo"),
    ("bringup.launch.py", "moveit", "yes please", "not one of true, false"),
    ("eval.launch.py", "mode", "fake", "not one of sim, real"),
    ("eval.launch.py", "go_home", "2", "not a boolean"),
    ("eval.launch.py", "operator", "ana\x1b[2J", "contains control characters"),
    ("gazebo.launch.py", "wrist_camera", "maybe", "not a boolean"),
    ("gazebo.launch.py", "gazebo", "classic", "not one of gz, ign"),
]


@pytest.mark.parametrize("name, argument, value, why", BAD_VALUES,
                         ids=[f"{n}-{a}" for n, a, _, _ in BAD_VALUES])
def test_bad_argument_values_stop_the_launch_naming_the_argument(name, argument, value, why,
                                                                 fake_launch, monkeypatch):
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "MISSING", set())
    description = load_description(ROOT / "launch" / name)
    check = [a for a in walk(description.args, None) if type(a).__name__ == "OpaqueFunction"
             and a.kwargs["function"].__name__ in ("check_arguments", "check_setup")]
    assert len(check) == 1, f"{name} does not check its argument values"
    function = check[0].kwargs["function"]
    values = declared_defaults(description)
    assert function(Context(values)) == []  # the defaults are valid
    values[argument] = value
    with pytest.raises(ValueError) as error:
        function(Context(values))
    assert f"{argument}:={value!r}: {why}" in str(error.value)


def test_eval_launch_exits_non_zero_when_eval_node_fails(fake_launch, monkeypatch):
    """launch returns 0 when a process fails; eval.launch.py raises so that it does not."""
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    description = load_description(ROOT / "launch" / "eval.launch.py")
    nodes = [a for a in walk(description.args, None) if type(a).__name__ == "Node"]
    handlers = [a for a in walk(description.args, None) if type(a).__name__ == "OnProcessExit"]
    assert len(handlers) == 1 and handlers[0].kwargs["target_action"] is nodes[0]
    on_exit = handlers[0].kwargs["on_exit"]

    class Event:
        def __init__(self, returncode):
            self.returncode = returncode

    class LaunchContext:
        def __init__(self, is_shutdown):
            self.is_shutdown = is_shutdown

    with pytest.raises(RuntimeError, match="eval_node exited with code 1"):
        on_exit(Event(1), LaunchContext(False))
    for returncode, shutting_down in ((0, False), (-2, True)):  # done, or stopped by Ctrl-C
        actions = on_exit(Event(returncode), LaunchContext(shutting_down))
        assert [type(a).__name__ for a in actions] == ["EmitEvent"]
        assert type(actions[0].kwargs["event"]).__name__ == "Shutdown"


@pytest.mark.parametrize("check, good, bad", [
    ("boolean", ["true", "False", "yes", "off"], ["2", "maybe", ""]),
    ("DEVICE", ["auto", "cpu", "cuda", "cuda:1"], ["gpu", "cuda:", "cuda:x", " cpu"]),
])
def test_launch_argument_checks(check, good, bad):
    from roboalign_ros import launch_arguments

    function = getattr(launch_arguments, check)
    assert all(function(v) is None for v in good)
    assert all(function(v) for v in bad)
