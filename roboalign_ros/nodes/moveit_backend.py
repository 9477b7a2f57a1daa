"""MoveItPy output: plan and execute whole motions (homing, resets); imports MoveIt lazily.

Follows moveit2's Python bindings (github.com/moveit/moveit2, ``moveit_py/src/moveit/...``):

* **Configuration.** ``MoveItPy(node_name=..., config_dict=...)`` (``moveit_ros/moveit_cpp/
  moveit_cpp.cpp``, humble/jazzy/main): the dict is written to a params file for MoveItPy's own
  rclcpp node (``moveit.utils.create_params_file_from_dict``). Without it MoveItPy reads the
  process's ``--params-file`` arguments, which belong to executor_node, so
  :func:`load_moveit_config` always builds the dict: from ``config/moveit/<robot>.yaml``
  (or a path / ROS params file given as ``moveit_config``), with ``robot_description`` taken
  from the robot config's URDF.
* **Execution signature.** humble (MoveItPy backported in moveit2 #3487):
  ``execute(group_name, robot_trajectory, blocking=True)``, bound *without* releasing the GIL;
  jazzy/main: ``execute(robot_trajectory, controllers)``, blocking, with
  ``py::call_guard<py::gil_scoped_release>``. Both return a ``moveit.core.controller_manager.
  ExecutionStatus`` (``.status`` string, ``bool()`` true only for SUCCEEDED;
  ``moveit_core/controller_manager``). On humble a blocking execute would hold the GIL for the
  whole motion and freeze every Python thread (the executor's e-stop included), so the humble
  path executes with ``blocking=False`` (``MoveItCpp::execute`` -> ``pushAndExecute``, returns
  RUNNING) and waits in ``TrajectoryExecutionManager.wait_for_execution()``, which releases
  the GIL (``moveit_ros/trajectory_execution_manager/trajectory_execution_manager.cpp``).
* **Cancel.** ``TrajectoryExecutionManager.stop_execution(auto_clear=True)`` (same file, GIL
  released; C++ ``TrajectoryExecutionManager::stopExecution`` cancels every active controller
  handle, i.e. the FollowJointTrajectory goal, and sets the status to PREEMPTED).
* **Planning holds the GIL.** ``PlanningComponent.plan`` is bound without a GIL release on
  every branch (``moveit_ros/moveit_cpp/planning_component.cpp``): while MoveIt plans, the
  node's Python callbacks wait (nothing moves then). Keep ``plan_request_params.planning_time``
  short (config/moveit/moveit_cpp.yaml: 1 s); a cancel that arrives during planning prevents
  the execution.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from roboalign_ros.robot import _resolve_package_url, expand_xacro, package_path


@dataclass(frozen=True)
class MoveResult:
    """How a MoveItPy move ended.

    ``status``: MoveIt's ExecutionStatus name (SUCCEEDED, PREEMPTED, ABORTED, ...) or one of
    PLANNING_FAILED, CANCELLED (before execution), BUSY, ERROR.
    """

    success: bool
    status: str
    message: str


# ---------------------------------------------------------------- configuration

def _load_file(ref: str | Mapping, base: Path, key: str | None = None) -> Any:
    """``package://pkg/file`` or a path (relative to ``base``); ``{file, xacro_args}`` too.

    YAML files give their content, anything else (SRDF, URDF, xacro) its text, xacro expanded.
    A YAML file in ROS params layout (``/**: {ros__parameters: ...}``, as ur_moveit_config's
    humble kinematics.yaml) gives its parameters, or the value of ``key`` among them.
    """
    args = {}
    if isinstance(ref, Mapping):
        args = dict(ref.get("xacro_args") or {})
        ref = ref["file"]
    path = _resolve_package_url(ref) if ref.startswith("package://") else base / ref
    if not Path(path).is_file():
        raise ValueError(f"moveit_config: file not found: {ref} ({path})")
    if Path(path).suffix in (".yaml", ".yml"):
        doc = yaml.safe_load(Path(path).read_text()) or {}
        params = [v["ros__parameters"] for v in doc.values()
                  if isinstance(v, Mapping) and "ros__parameters" in v]
        if len(params) == 1:
            doc = params[0]
            if key is not None and key in doc:
                doc = doc[key]
        return doc
    if Path(path).suffix == ".xacro":
        return expand_xacro(path, args)
    return Path(path).read_text()


def _is_file_ref(value: Any) -> bool:
    if isinstance(value, Mapping):
        return set(value) <= {"file", "xacro_args"} and "file" in value
    return isinstance(value, str) and (value.startswith("package://") or
                                       re.search(r"\.(ya?ml|srdf|urdf|xacro)$", value) is not None)


def _merge(into: dict, other: Mapping) -> dict:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def default_pipeline_config(name: str) -> dict:
    """The planning pipeline ``name``'s parameters as moveit_configs_utils ships them.

    Mirrors ``MoveItConfigsBuilder.planning_pipelines`` (moveit_configs_utils/
    moveit_configs_builder.py): ``default_configs/<name>_planning.yaml`` plus, for ompl,
    ``ompl_defaults.yaml``. These files differ per distro (humble: ``planning_plugin`` and a
    request_adapters string; jazzy+: ``planning_plugins`` / ``request_adapters`` /
    ``response_adapters`` lists), which is why they are read from the installed MoveIt.
    """
    folder = _moveit_configs_utils_defaults()
    config = yaml.safe_load((folder / f"{name}_planning.yaml").read_text()) or {}
    if name == "ompl" and "planner_configs" not in config:
        config.update(yaml.safe_load((folder / "ompl_defaults.yaml").read_text()) or {})
    return config


def _moveit_configs_utils_defaults() -> Path:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("moveit_configs_utils")) / "default_configs"
    except Exception as exc:  # noqa: BLE001 - not installed / no ament index
        raise RuntimeError(
            "moveit_config: the planning pipeline defaults come from the ROS package "
            "moveit_configs_utils (apt install ros-$ROS_DISTRO-moveit-configs-utils), or name "
            f"each pipeline's file under pipeline_configs; not found: {exc}") from exc


def moveit_config_path(robot_name: str, source: str | None = None) -> Path:
    """The MoveIt config file: ``source`` (a path or package:// URL) or config/moveit/<robot>."""
    if source:
        path = _resolve_package_url(source) if source.startswith("package://") else Path(source)
    else:
        path = package_path("config", "moveit", f"{robot_name}.yaml")
    if not path.is_file():
        raise RuntimeError(
            f"moveit_py needs a MoveIt configuration for {robot_name}: {path} not found "
            "(see config/moveit/sim_arm.yaml for the format, or give a ROS params file)")
    return path


def load_moveit_config(robot, source: str | Mapping | None = None) -> dict:
    """The ``config_dict`` for ``MoveItPy``: MoveIt parameters for ``robot``.

    ``source``: a dict (used as is), a ROS params file (``node: {ros__parameters: ...}``),
    or a file in the format of config/moveit/<robot>.yaml, where each key is a MoveIt
    parameter and a value naming a file (``package://...``, a relative path, or
    ``{file, xacro_args}``) is replaced by the file's content; ``include`` lists YAML files
    merged at the top; ``by_distro: {<ROS_DISTRO>: {...}}`` replaces keys on that distro;
    ``planning_pipelines: [ompl, ...]`` becomes ``pipeline_names`` plus each
    pipeline's parameters (``pipeline_configs`` or the installed moveit_configs_utils
    defaults). ``robot_description`` is always the robot config's URDF (one source of truth).
    """
    if isinstance(source, Mapping):
        config = dict(source)
    else:
        path = moveit_config_path(robot.name, source)
        doc = yaml.safe_load(path.read_text()) or {}
        params = [v["ros__parameters"] for v in doc.values()
                  if isinstance(v, Mapping) and "ros__parameters" in v]
        config = dict(params[0]) if len(params) == 1 else _expand(doc, path.parent)
    config.setdefault("robot_description", robot.urdf_xml)
    if config["robot_description"] is None:
        config["robot_description"] = robot.urdf_xml
    for key in ("robot_description_semantic", "planning_pipelines"):
        if key not in config:
            raise ValueError(f"moveit_config for {robot.name}: no {key}")
    return config


def moveit_planning_group(robot_name: str, source: str | None = None) -> str | None:
    """The ``planning_group`` that config/moveit/<robot>.yaml (or ``source``) names, if any."""
    try:
        doc = yaml.safe_load(moveit_config_path(robot_name, source).read_text()) or {}
    except RuntimeError:
        return None
    group = doc.get("planning_group") if isinstance(doc, Mapping) else None
    return str(group) if group else None


def _expand(doc: Mapping, base: Path) -> dict:
    doc = dict(doc)
    distro = os.environ.get("ROS_DISTRO", "")
    overrides = (doc.pop("by_distro", None) or {}).get(distro) or {}
    doc.update(overrides)      # a vendor's files moved between distros (ur_moveit_config)
    config: dict = {}
    for ref in doc.pop("include", []) or []:
        _merge(config, _load_file(ref, base))
    pipeline_files = doc.pop("pipeline_configs", {}) or {}
    doc.pop("planning_group", None)   # documentation: executor_node's planning_group
    for key, value in doc.items():
        if key == "planning_pipelines" and isinstance(value, list):
            config["planning_pipelines"] = {"pipeline_names": list(value)}
            for name in value:
                config[name] = (_load_file(pipeline_files[name], base) if name in pipeline_files
                                else default_pipeline_config(name))
        elif _is_file_ref(value):
            loaded = _load_file(value, base, key)
            if isinstance(loaded, Mapping) and isinstance(config.get(key), dict):
                _merge(config[key], loaded)
            else:
                config[key] = loaded
        elif isinstance(value, Mapping) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value
    return config


# ---------------------------------------------------------------- the backend

def execute_flavour(moveit_py_class) -> str:
    """``"humble"`` or ``"jazzy"``: which ``MoveItPy.execute`` signature this MoveIt binds.

    pybind11 puts the bound signature in the docstring: humble's names ``group_name`` and
    ``blocking``, jazzy/main's ``robot_trajectory`` and ``controllers``. ROS_DISTRO decides
    when the docstring says neither.
    """
    doc = getattr(getattr(moveit_py_class, "execute", None), "__doc__", None) or ""
    if "group_name" in doc:
        return "humble"
    if "controllers" in doc:
        return "jazzy"
    return "humble" if os.environ.get("ROS_DISTRO") == "humble" else "jazzy"


class MoveItPyBackend:
    """Plan and execute with MoveItPy: used for going home and resets, not for streaming.

    :meth:`move_to_async` plans and executes on a worker thread and returns at once;
    :meth:`cancel` stops it (an e-stop or deactivate during a home move). The node's
    callbacks keep running during the motion (MoveIt waits with the GIL released), but not
    while MoveIt plans (see the module docstring).
    """

    name = "moveit_py"
    stop_retry = 0.02   # s between stop_execution calls while a cancelled execution runs

    def __init__(self, node, robot, planning_group: str | None = None,
                 moveit_config: str | Mapping | None = None):
        """``planning_group``: None or "" takes the MoveIt config's ``planning_group``.

        ``moveit_config``: see :func:`load_moveit_config` (None: config/moveit/<robot>.yaml).
        """
        try:
            from moveit.planning import MoveItPy
        except ImportError as exc:
            raise RuntimeError(
                "backend 'moveit_py' needs MoveIt 2 with moveit_py (ROS package `moveit_py`, "
                "e.g. `apt install ros-$ROS_DISTRO-moveit-py`) and a MoveIt configuration "
                f"for {robot.name}; not found: {exc}") from exc
        self._log = node.get_logger()
        self.config = load_moveit_config(robot, moveit_config)
        named = (moveit_planning_group(robot.name, moveit_config)
                 if not isinstance(moveit_config, Mapping) else None)
        if not planning_group:
            if named is None:
                raise RuntimeError(f"moveit_py: no planning_group given and the MoveIt config "
                                   f"for {robot.name} names none")
            planning_group = named
        elif named is not None and named != planning_group:
            self._log.warning(f"planning_group {planning_group!r} is not the one the MoveIt "
                              f"config for {robot.name} names ({named!r}): using "
                              f"{planning_group!r}")
        self.robot, self.group = robot, planning_group
        self._moveit = MoveItPy(node_name=f"{node.get_name()}_moveit_py",
                                config_dict=self.config)
        self._arm = self._moveit.get_planning_component(planning_group)
        self._tem = self._moveit.get_trajectory_execution_manager()
        self.flavour = execute_flavour(MoveItPy)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._cancelled = threading.Event()
        self._executing = False
        self._busy = False

    # ------------------------------------------------------------------ API

    @property
    def busy(self) -> bool:
        """True while a move is planned or executed (false once its result is out)."""
        return self._busy

    def move_to_async(self, joint_positions,
                      done_callback: Callable[[MoveResult], None] | None = None
                      ) -> concurrent.futures.Future:
        """Plan to joint positions (arm joints in config order) and execute, on a thread.

        Returns a Future of :class:`MoveResult`; ``done_callback(result)``, if given, runs on
        the worker thread when the move ends (hand it to the node's thread before touching
        node state). A move already running: the result is BUSY at once.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        positions = [float(q) for q in joint_positions]
        with self._lock:
            if self.busy:
                result = MoveResult(False, "BUSY", "a MoveItPy move is already running")
                future.set_result(result)
                if done_callback is not None:
                    done_callback(result)
                return future
            self._cancelled.clear()
            self._busy = True
            self._worker = threading.Thread(
                target=self._run, args=(positions, future, done_callback),
                name="moveit_py_move", daemon=True)
            self._worker.start()
        return future

    def move_to(self, joint_positions, timeout: float | None = None) -> bool:
        """Blocking :meth:`move_to_async`: True on success.

        Blocks the caller: never from a callback that an e-stop must be able to interrupt.
        """
        return self.move_to_async(joint_positions).result(timeout).success

    def cancel(self) -> bool:
        """Stop the running move, if any, without waiting: True if one was running.

        Before execution starts the move simply ends (CANCELLED); during execution
        ``stop_execution`` is called (and repeated every :attr:`stop_retry` s until the
        worker ends, so an execution that was just being handed to the controllers is
        stopped too).
        """
        with self._lock:
            worker = self._worker
            if not self._busy or worker is None:
                return False
            self._cancelled.set()
        threading.Thread(target=self._stop_until_done, args=(worker,),
                         name="moveit_py_cancel", daemon=True).start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running move to end; True if none runs any more."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.busy

    def close(self, timeout: float = 5.0) -> None:
        """Cancel a running move and wait (bounded) for it to end."""
        if self.cancel():
            self.wait(timeout)

    def send(self, command) -> None:  # pragma: no cover - guarded by the node
        """Not supported: MoveItPy plans whole motions."""
        raise RuntimeError("moveit_py plans and executes; it does not stream chunk commands")

    def stop(self) -> None:
        """Stop a running MoveItPy move (same as :meth:`cancel`)."""
        self.cancel()

    # ------------------------------------------------------------------ worker

    def _stop_until_done(self, worker: threading.Thread) -> None:
        deadline = time.monotonic() + 30.0
        while worker.is_alive() and time.monotonic() < deadline:
            if self._executing:
                try:
                    self._tem.stop_execution(True)
                except Exception as exc:  # noqa: BLE001 - report, keep trying
                    self._log.error(f"MoveItPy stop_execution failed: {exc}")
            worker.join(self.stop_retry)
        if worker.is_alive():
            self._log.error("MoveItPy move still running 30 s after cancel")

    def _run(self, positions, future, done_callback) -> None:
        try:
            result = self._plan_and_execute(positions)
        except Exception as exc:  # noqa: BLE001 - a MoveIt error ends the move, reported
            result = MoveResult(False, "ERROR", f"MoveItPy raised {type(exc).__name__}: {exc}")
        finally:
            self._executing = False
            self._busy = False
        (self._log.info if result.success else self._log.error)(
            f"MoveItPy move: {result.status}: {result.message}")
        future.set_result(result)
        if done_callback is not None:
            try:
                done_callback(result)
            except Exception as exc:  # noqa: BLE001
                self._log.error(f"MoveItPy done_callback raised: {exc}")

    def _plan_and_execute(self, positions) -> MoveResult:
        from moveit.core.robot_state import RobotState

        if self._cancelled.is_set():
            return MoveResult(False, "CANCELLED", "cancelled before planning")
        state = RobotState(self._moveit.get_robot_model())
        state.joint_positions = dict(zip(self.robot.arm_joints, positions))
        state.update()
        self._arm.set_start_state_to_current_state()
        self._arm.set_goal_state(robot_state=state)
        plan = self._arm.plan()          # holds the GIL (moveit_py binds plan without release)
        if not plan:
            code = getattr(getattr(plan, "error_code", None), "val", None)
            return MoveResult(False, "PLANNING_FAILED",
                              f"planning to {self.group} goal failed (MoveItErrorCode {code})")
        with self._lock:
            if self._cancelled.is_set():
                return MoveResult(False, "CANCELLED", "cancelled after planning: not executed")
            self._executing = True
        status = self._execute(plan.trajectory)
        name = str(getattr(status, "status", status))
        if bool(status):
            return MoveResult(True, name, "executed")
        if self._cancelled.is_set():
            return MoveResult(False, name, f"cancelled during execution ({name})")
        return MoveResult(False, name, f"execution ended {name}")

    def _execute(self, trajectory):
        """Run ``trajectory`` to its end (or a stop) and return MoveIt's ExecutionStatus.

        A TypeError (pybind11: incompatible arguments, raised before anything runs) means
        the other signature: switch once and retry.
        """
        try:
            return self._execute_as(self.flavour, trajectory)
        except TypeError:
            other = "jazzy" if self.flavour == "humble" else "humble"
            self._log.warning(f"MoveItPy.execute rejected the {self.flavour} signature; "
                              f"using the {other} one")
            self.flavour = other
            return self._execute_as(other, trajectory)

    def _execute_as(self, flavour: str, trajectory):
        if flavour == "humble":
            # MoveItCpp::execute(group_name, trajectory, blocking=false): pushAndExecute, RUNNING
            status = self._moveit.execute(self.group, trajectory, blocking=False)
            if getattr(status, "status", None) != "RUNNING":
                return status    # e.g. ABORTED: no active controller for the group
            return self._tem.wait_for_execution()
        return self._moveit.execute(trajectory, controllers=[])
