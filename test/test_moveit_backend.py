"""MoveItPyBackend against a fake ``moveit`` package that follows moveit_py's bindings.

moveit_py is not installable here (ENVIRONMENT.md). The fake keeps the signatures and
behaviour of github.com/moveit/moveit2, moveit_py/src/moveit/:
- moveit_ros/moveit_cpp/moveit_cpp.cpp: MoveItPy(node_name, name_space, launch_params_filepaths,
  config_dict, provide_planning_service, remappings); ``execute`` is
  (group_name, robot_trajectory, blocking=True) on humble (no GIL release; blocking=False
  -> MoveItCpp::execute's pushAndExecute, returns RUNNING) and (robot_trajectory, controllers)
  on jazzy/main (blocking). pybind11 docstrings carry those signatures.
- moveit_core/controller_manager/controller_manager.cpp: ExecutionStatus(.status, bool()).
- moveit_ros/trajectory_execution_manager/trajectory_execution_manager.cpp:
  wait_for_execution(), stop_execution(auto_clear=True) (C++ stopExecution: no effect unless
  an execution runs; a stopped execution ends PREEMPTED), get_last_execution_status().
- moveit_ros/moveit_cpp/planning_component.cpp: set_start_state_to_current_state(),
  set_goal_state(robot_state=...), plan() -> a response with bool(), trajectory, error_code.
"""

import sys
import threading
import time
import types
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest
import yaml

from roboalign_ros.nodes import moveit_backend
from roboalign_ros.nodes.moveit_backend import (
    MoveItPyBackend,
    execute_flavour,
    load_moveit_config,
)
from roboalign_ros.robot import load_robot_config, package_path, parse_urdf_joints

ARM = [f"joint{i}" for i in range(1, 7)]
HOME = [0.0, 0.048, 0.273, 0.0, 1.25, 0.0]


class ExecutionStatus:
    """moveit_controller_manager::ExecutionStatus as bound: .status string, bool() = SUCCEEDED."""

    def __init__(self, status):
        self.status = status

    def __bool__(self):
        return self.status == "SUCCEEDED"


class TrajectoryExecutionManager:
    """Runs a trajectory for ``duration`` s on a thread; ends with ``outcome`` unless stopped.

    ``start_delay``: time between execute() and the execution really running (the continuous
    execution thread picking it up); a stop_execution() before then does nothing, as in C++.
    """

    def __init__(self, log):
        self.log, self.duration, self.outcome, self.start_delay = log, 0.3, "SUCCEEDED", 0.0
        self.last = ExecutionStatus("SUCCEEDED")   # a previous run's status
        self._done = threading.Event()
        self._done.set()
        self._running = False
        self._lock = threading.Lock()
        self.progress = 0.0                         # fraction of the trajectory executed

    def start(self):
        self._done.clear()
        threading.Thread(target=self._execute, daemon=True).start()

    def _execute(self):
        time.sleep(self.start_delay)
        with self._lock:
            if self._done.is_set():
                return
            self._running = True
        t0 = time.monotonic()
        while not self._done.is_set():
            self.progress = min(1.0, (time.monotonic() - t0) / self.duration)
            if self.progress >= 1.0:
                with self._lock:
                    if not self._done.is_set():
                        self.last = ExecutionStatus(self.outcome)
                        self._running = False
                        self._done.set()
                return
            time.sleep(0.005)

    def wait_for_execution(self):
        self.log.append(("wait_for_execution",))
        self._done.wait()
        return self.last

    def stop_execution(self, auto_clear=True):
        self.log.append(("stop_execution", auto_clear))
        with self._lock:
            if self._running:            # TrajectoryExecutionManager::stopExecution
                self._running = False
                self.last = ExecutionStatus("PREEMPTED")
                self._done.set()

    def get_last_execution_status(self):
        return self.last


def fake_moveit(monkeypatch, flavour="jazzy", plan_ok=True, plan_seconds=0.0,
                execute_status=None):
    """Install a fake ``moveit`` package; returns a namespace to inspect and steer it."""
    world = SimpleNamespace(log=[], instances=[], plan_ok=plan_ok, plan_seconds=plan_seconds)

    class Plan:
        """MotionPlanResponse: truthy only on success."""

        def __init__(self, ok):
            self.ok, self.trajectory = ok, "trajectory" if ok else None
            self.error_code = SimpleNamespace(val=1 if ok else -1)

        def __bool__(self):
            return self.ok

    class RobotState:
        def __init__(self, robot_model):
            self.robot_model, self.joint_positions, self.updated = robot_model, {}, False

        def update(self, force=False):
            self.updated = True

    class PlanningComponent:
        def __init__(self, name, moveit):
            self.name = name

        def set_start_state_to_current_state(self):
            world.log.append(("set_start_state_to_current_state",))

        def set_goal_state(self, configuration_name=None, robot_state=None, **_):
            world.log.append(("set_goal_state", dict(robot_state.joint_positions)))

        def plan(self, *args, **kwargs):
            time.sleep(world.plan_seconds)
            world.log.append(("plan",))
            return Plan(world.plan_ok)

    class MoveItPyBase:
        def __init__(self, node_name="moveit_py", name_space="", launch_params_filepaths=None,
                     config_dict=None, provide_planning_service=True, remappings=None):
            self.node_name, self.config_dict = node_name, config_dict
            self.tem = TrajectoryExecutionManager(world.log)
            world.tem = self.tem
            world.instances.append(self)

        def get_planning_component(self, planning_component_name):
            return PlanningComponent(planning_component_name, self)

        def get_robot_model(self):
            return "robot_model"

        def get_trajectory_execution_manager(self):
            return self.tem

    if flavour == "humble":
        class MoveItPy(MoveItPyBase):
            def execute(self, group_name, robot_trajectory, blocking=True):
                """execute(self: moveit.planning.MoveItPy, group_name: str, robot_trajectory: moveit.core.robot_trajectory.RobotTrajectory, blocking: bool = True) -> moveit.core.controller_manager.ExecutionStatus"""  # noqa: E501
                world.log.append(("execute", group_name, robot_trajectory, blocking))
                if execute_status is not None:
                    return ExecutionStatus(execute_status)
                self.tem.start()
                if blocking:
                    return self.tem.wait_for_execution()
                return ExecutionStatus("RUNNING")
    else:
        class MoveItPy(MoveItPyBase):
            def execute(self, robot_trajectory, controllers):
                """execute(self: moveit.planning.MoveItPy, robot_trajectory: moveit.core.robot_trajectory.RobotTrajectory, controllers: list[str]) -> moveit.core.controller_manager.ExecutionStatus"""  # noqa: E501
                world.log.append(("execute", robot_trajectory, controllers))
                if execute_status is not None:
                    return ExecutionStatus(execute_status)
                self.tem.start()
                return self.tem.wait_for_execution()

    moveit = types.ModuleType("moveit")
    planning = types.ModuleType("moveit.planning")
    core = types.ModuleType("moveit.core")
    robot_state = types.ModuleType("moveit.core.robot_state")
    planning.MoveItPy, robot_state.RobotState = MoveItPy, RobotState
    moveit.planning, moveit.core, core.robot_state = planning, core, robot_state
    for name, module in (("moveit", moveit), ("moveit.planning", planning),
                         ("moveit.core", core), ("moveit.core.robot_state", robot_state)):
        monkeypatch.setitem(sys.modules, name, module)
    world.MoveItPy = MoveItPy
    return world


class Node:
    def __init__(self):
        self.lines = []

    def get_name(self):
        return "executor_node"

    def get_logger(self):
        lines = self.lines

        class Logger:
            def __getattr__(self, level):
                return lambda text, **_: lines.append((level, text))

        return Logger()


@pytest.fixture(scope="module")
def robot():
    return load_robot_config("sim_arm")


@pytest.fixture
def defaults(tmp_path, monkeypatch):
    """moveit_configs_utils' default_configs as jazzy ships them (ompl_planning.yaml)."""
    (tmp_path / "ompl_planning.yaml").write_text(yaml.safe_dump({
        "planning_plugins": ["ompl_interface/OMPLPlanner"],
        "request_adapters": ["default_planning_request_adapters/CheckStartStateBounds"],
        "response_adapters": ["default_planning_response_adapters/AddTimeOptimalParameterization"],
    }))
    (tmp_path / "ompl_defaults.yaml").write_text(yaml.safe_dump(
        {"planner_configs": {"RRTConnectkConfigDefault": {"type": "geometric::RRTConnect"}}}))
    monkeypatch.setattr(moveit_backend, "_moveit_configs_utils_defaults", lambda: tmp_path)
    return tmp_path


def backend_for(monkeypatch, robot, defaults, **fake):
    world = fake_moveit(monkeypatch, **fake)
    node = Node()
    backend = MoveItPyBackend(node, robot, "arm")
    return backend, world, node


def test_planning_group_comes_from_the_moveit_config_unless_given(monkeypatch, robot, defaults):
    fake_moveit(monkeypatch)
    node = Node()
    assert MoveItPyBackend(node, robot).group == "arm"          # config/moveit/sim_arm.yaml
    assert MoveItPyBackend(node, robot, "").group == "arm"
    assert MoveItPyBackend(node, robot, "manipulator").group == "manipulator"
    assert any("is not the one the MoveIt config" in text for _, text in node.lines)


def calls(world, name):
    return [c for c in world.log if c[0] == name]


# ---------------------------------------------------------------- signatures and results

def test_humble_signature_executes_without_blocking_and_waits_with_the_gil_released(
        monkeypatch, robot, defaults):
    backend, world, _ = backend_for(monkeypatch, robot, defaults, flavour="humble")
    assert backend.flavour == "humble"
    result = backend.move_to_async(HOME).result(5.0)
    assert result.success and result.status == "SUCCEEDED"
    (execute,) = calls(world, "execute")
    assert execute == ("execute", "arm", "trajectory", False)   # never blocking=True (GIL)
    assert calls(world, "wait_for_execution")
    (goal,) = calls(world, "set_goal_state")
    assert goal[1] == dict(zip(ARM, HOME))
    (instance,) = world.instances
    assert instance.node_name == "executor_node_moveit_py"
    assert instance.config_dict is backend.config and "robot_description" in instance.config_dict


def test_jazzy_signature_executes_with_controllers(monkeypatch, robot, defaults):
    backend, world, _ = backend_for(monkeypatch, robot, defaults, flavour="jazzy")
    assert backend.flavour == "jazzy"
    assert backend.move_to(HOME, timeout=5.0) is True
    (execute,) = calls(world, "execute")
    assert execute == ("execute", "trajectory", [])


def test_the_signature_falls_back_when_the_docstring_misleads(monkeypatch, robot, defaults):
    world = fake_moveit(monkeypatch, flavour="jazzy")
    world.MoveItPy.execute.__doc__ = ""
    monkeypatch.setenv("ROS_DISTRO", "humble")
    assert execute_flavour(world.MoveItPy) == "humble"
    node = Node()
    backend = MoveItPyBackend(node, robot, "arm")
    assert backend.move_to_async(HOME).result(5.0).success
    assert backend.flavour == "jazzy"
    assert any("using the jazzy one" in text for _, text in node.lines)


@pytest.mark.parametrize("flavour", ["humble", "jazzy"])
def test_failed_execution_is_reported(monkeypatch, robot, defaults, flavour):
    backend, world, node = backend_for(monkeypatch, robot, defaults, flavour=flavour)
    world.tem.outcome = "ABORTED"
    done = []
    result = backend.move_to_async(HOME, done.append).result(5.0)
    assert not result.success and result.status == "ABORTED"
    assert "ABORTED" in result.message and done == [result]
    assert any(level == "error" and "ABORTED" in text for level, text in node.lines)


def test_humble_execute_that_fails_at_once_is_not_waited_for(monkeypatch, robot, defaults):
    """MoveItCpp::execute returns ABORTED before pushAndExecute (no active controller): the
    manager's last status is a previous run's SUCCEEDED, and must not be taken."""
    backend, world, _ = backend_for(monkeypatch, robot, defaults, flavour="humble",
                                    execute_status="ABORTED")
    result = backend.move_to_async(HOME).result(5.0)
    assert result.status == "ABORTED" and not calls(world, "wait_for_execution")


def test_planning_failure_is_reported_and_nothing_executes(monkeypatch, robot, defaults):
    backend, world, _ = backend_for(monkeypatch, robot, defaults, plan_ok=False)
    result = backend.move_to_async(HOME).result(5.0)
    assert result.status == "PLANNING_FAILED" and not result.success
    assert not calls(world, "execute")


# ---------------------------------------------------------------- cancel

@pytest.mark.parametrize("flavour", ["humble", "jazzy"])
def test_cancel_during_a_move_stops_the_execution(monkeypatch, robot, defaults, flavour):
    backend, world, _ = backend_for(monkeypatch, robot, defaults, flavour=flavour)
    world.tem.duration = 5.0
    future = backend.move_to_async(HOME)
    assert _wait(lambda: world.tem.progress > 0.02)
    t0 = time.monotonic()
    assert backend.cancel() is True                 # returns at once
    assert time.monotonic() - t0 < 0.05
    result = future.result(2.0)
    assert time.monotonic() - t0 < 0.5
    assert not result.success and result.status == "PREEMPTED"
    assert "cancelled during execution" in result.message
    assert calls(world, "stop_execution") and world.tem.progress < 0.5
    assert not backend.busy and backend.cancel() is False


def test_cancel_while_the_execution_is_being_handed_over_still_stops_it(monkeypatch, robot,
                                                                        defaults):
    """stop_execution before the execution really runs does nothing (C++ stopExecution):
    the backend repeats it until the move ends."""
    backend, world, _ = backend_for(monkeypatch, robot, defaults, flavour="humble")
    world.tem.duration, world.tem.start_delay = 5.0, 0.15
    future = backend.move_to_async(HOME)
    assert _wait(lambda: calls(world, "execute"))
    backend.cancel()
    result = future.result(2.0)
    assert result.status == "PREEMPTED" and world.tem.progress < 0.5
    assert len(calls(world, "stop_execution")) >= 2


def test_cancel_during_planning_executes_nothing(monkeypatch, robot, defaults):
    backend, world, _ = backend_for(monkeypatch, robot, defaults, plan_seconds=0.3)
    future = backend.move_to_async(HOME)
    time.sleep(0.05)
    assert backend.busy and backend.cancel()
    result = future.result(2.0)
    assert result.status == "CANCELLED" and "not executed" in result.message
    assert not calls(world, "execute")


def test_a_second_move_while_one_runs_is_refused(monkeypatch, robot, defaults):
    backend, world, _ = backend_for(monkeypatch, robot, defaults)
    world.tem.duration = 1.0
    first = backend.move_to_async(HOME)
    second = backend.move_to_async(HOME).result(0.1)
    assert second.status == "BUSY" and not second.success
    backend.close()
    assert first.result(2.0).status in ("CANCELLED", "PREEMPTED") and not backend.busy


def test_without_moveit_py_the_error_names_the_package(monkeypatch, robot):
    monkeypatch.setitem(sys.modules, "moveit", None)
    monkeypatch.setitem(sys.modules, "moveit.planning", None)
    with pytest.raises(RuntimeError, match="moveit_py"):
        MoveItPyBackend(Node(), robot, "arm")


def _wait(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# ---------------------------------------------------------------- configuration

def test_sim_arm_moveit_config_gives_moveit_py_what_it_reads(robot, defaults):
    config = load_moveit_config(robot)
    assert config["robot_description"] == robot.urdf_xml
    assert config["planning_pipelines"] == {"pipeline_names": ["ompl"]}
    assert config["ompl"]["planning_plugins"] == ["ompl_interface/OMPLPlanner"]
    assert "RRTConnectkConfigDefault" in config["ompl"]["planner_configs"]
    assert config["plan_request_params"]["planning_pipeline"] == "ompl"
    assert config["plan_request_params"]["planning_time"] <= 1.0
    assert config["planning_scene_monitor_options"]["joint_state_topic"] == robot.topics[
        "joint_states"]
    assert config["robot_description_kinematics"]["arm"]["kinematics_solver"].startswith("kdl")
    limits = config["robot_description_planning"]["joint_limits"]
    assert sorted(limits) == ARM and all(v["has_acceleration_limits"] for v in limits.values())
    controllers = config["moveit_simple_controller_manager"]
    assert controllers["controller_names"] == ["arm_controller"]
    assert controllers["arm_controller"]["joints"] == list(robot.arm_joints)
    assert controllers["arm_controller"]["type"] == "FollowJointTrajectory"
    # the ros2_control controller MoveIt sends its goals to exists in our controller config
    ros2_control = yaml.safe_load(package_path("config", "sim_arm_controllers.yaml").read_text())
    assert "arm_controller" in yaml.safe_dump(ros2_control)
    assert config["moveit_controller_manager"].startswith("moveit_simple_controller_manager/")
    # MoveItPy writes the dict to a params file: it must be plain YAML
    yaml.safe_load(yaml.safe_dump({"node": {"ros__parameters": config}}))


def test_sim_arm_srdf_names_only_what_the_urdf_has(robot):
    joints, links = parse_urdf_joints(robot.urdf_xml)
    srdf = ET.parse(package_path("config", "moveit", "sim_arm.srdf")).getroot()
    assert srdf.get("name") == ET.fromstring(robot.urdf_xml).get("name")
    (arm,) = [g for g in srdf.findall("group") if g.get("name") == "arm"]
    chain = arm.find("chain")
    assert chain.get("base_link") in links and chain.get("tip_link") == robot.tool_frame
    for pair in srdf.findall("disable_collisions"):
        assert pair.get("link1") in links and pair.get("link2") in links
    for joint in srdf.iter("joint"):
        assert joint.get("name") in joints
    (home,) = [s for s in srdf.findall("group_state") if s.get("name") == "home"]
    values = [float(j.get("value")) for j in home.findall("joint")]
    assert values == pytest.approx(list(robot.home))
    disabled = {frozenset((p.get("link1"), p.get("link2"))) for p in
                srdf.findall("disable_collisions")}
    assert frozenset(("link2", "link4")) not in disabled   # they can collide: stay checked


def test_moveit_config_formats(robot, defaults, tmp_path, monkeypatch):
    # a complete ROS params file is taken as is (robot_description filled in)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "robot_description_semantic": "<robot/>", "planning_pipelines": {
            "pipeline_names": ["ompl"]}}}}))
    config = load_moveit_config(robot, str(params))
    assert config["robot_description"] == robot.urdf_xml
    assert config["robot_description_semantic"] == "<robot/>"
    # by_distro and a params-layout file whose key is unwrapped (ur_moveit_config humble)
    (tmp_path / "kin.yaml").write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "robot_description_kinematics": {"arm": {"kinematics_solver": "x/Y"}}}}}))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({
        "robot_description_semantic": "<robot/>", "planning_pipelines": ["ompl"],
        "robot_description_kinematics": "kin.yaml",
        "by_distro": {"humble": {"pipeline_configs": {"ompl": "ompl_humble.yaml"}}}}))
    (tmp_path / "ompl_humble.yaml").write_text(yaml.safe_dump(
        {"planning_plugin": "ompl_interface/OMPLPlanner"}))
    monkeypatch.setenv("ROS_DISTRO", "humble")
    config = load_moveit_config(robot, str(tmp_path / "mine.yaml"))
    assert config["robot_description_kinematics"] == {"arm": {"kinematics_solver": "x/Y"}}
    assert config["ompl"] == {"planning_plugin": "ompl_interface/OMPLPlanner"}
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    config = load_moveit_config(robot, str(tmp_path / "mine.yaml"))
    assert config["ompl"]["planning_plugins"] == ["ompl_interface/OMPLPlanner"]
    with pytest.raises(RuntimeError, match="needs a MoveIt configuration for sim_arm"):
        load_moveit_config(robot, str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("name, group", [("fr3", "fr3_arm"), ("ur5e", "ur_manipulator")])
def test_vendor_moveit_configs_name_vendor_files(name, group):
    """fr3/ur5e use their vendors' MoveIt packages (not installable here): the files parse,
    name the vendor's planning group and only package:// or local files."""
    doc = yaml.safe_load(package_path("config", "moveit", f"{name}.yaml").read_text())
    assert doc["planning_group"] == group and doc["planning_pipelines"] == ["ompl"]
    assert "moveit_cpp.yaml" in doc["include"]
    assert doc["robot_description_semantic"]["file"].startswith("package://")
