"""The executor as executor_node builds it: parameters -> ChunkExecutor with its safety envelope.

One construction for the node and for in-process users (the headless evaluator), so both run
the same limits from config/executor.yaml and the robot config.

    params = executor_parameters()            # defaults <- config/executor.yaml
    executor = build_executor(params, robot)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from roboalign_ros.control.blending import BLEND_MODES
from roboalign_ros.control.executor import ChunkExecutor, ExecutorConfig
from roboalign_ros.control.safety import SafetyEnvelope

# executor_node's declared parameters and their defaults (config/executor.yaml sets most).
EXECUTOR_PARAMETERS: dict[str, Any] = {
    "robot": "sim_arm",
    "action_space": "joint_position",
    "backend": "joint_trajectory",
    "home_backend": "joint_trajectory",
    "planning_group": "",  # "" = the one config/moveit/<robot>.yaml names
    "rate": 100.0,
    "lead_time": 0.02,
    "duration_margin": 0.8,
    "state_timeout": 0.5,
    "blend": "temporal_ensemble",
    "rtc_blend": 0.2,
    "ensemble_k": 0.0,
    "watchdog_timeout": 0.5,
    "max_chunk_age": 1.0,
    "home_speed": 0.3,
    "servo.manage": True,  # backend servo: switch MoveIt Servo to twists on activate
    "chunk_topic": "/roboalign/action_chunk",
    "estop_topic": "/roboalign/estop",
    "estop_process": True,  # joint_trajectory: the e-stop's stop comes from its own process
    "instruction_topic": "/roboalign/instruction",
    "scene_reset_topic": "/roboalign/scene_reset",  # std_msgs/Empty: the world was reset
    "path_topic": "~/planned_path",  # MarkerArray of each accepted chunk's tool path; "" = off
    "safety.velocity_scale": 0.5,
    "safety.max_step": 0.05,
    "safety.acc_max": 8.0,
    "safety.margin": 0.02,
    "safety.workspace": True,
    "safety.workspace_mode": "hold",
    "autostart": True,  # the node configures + activates itself at startup (lifecycle)
}

SPACE_BACKEND = {"joint_position": "joint_trajectory", "ee_delta": "servo"}
TWIST_NAMES = ("vx", "vy", "vz", "wx", "wy", "wz")


def executor_parameters(overrides: Mapping[str, Any] | None = None,
                        file: str | os.PathLike | None = "executor.yaml") -> dict[str, Any]:
    """executor_node's parameters: its defaults, then ``file``, then ``overrides``."""
    from roboalign_ros.parameters import node_parameters

    return node_parameters(EXECUTOR_PARAMETERS, file, overrides)


def build_executor(params: Mapping[str, Any], robot=None, kinematics=None) -> ChunkExecutor:
    """The :class:`ChunkExecutor` executor_node runs for ``params`` (:data:`EXECUTOR_PARAMETERS`).

    ``robot``: the loaded robot spec (default: ``params['robot']``); ``kinematics``: its
    :class:`~roboalign_ros.control.kinematics.Kinematics` when the caller has one (it builds
    the URDF model). ``safety.workspace: false`` drops the tool box (the node warns about it).
    """
    from roboalign_ros.control.kinematics import Kinematics
    from roboalign_ros.robot import load_robot_config

    p = params
    if p["blend"] not in BLEND_MODES:  # named here as the parameter (the blender says "mode")
        raise ValueError(f"blend: {p['blend']!r} is not one of {', '.join(BLEND_MODES)}")
    if not p["rate"] > 0:
        raise ValueError(f"rate: must be > 0 Hz, got {p['rate']}")
    robot = robot if robot is not None else load_robot_config(p["robot"])
    space = p["action_space"]
    if SPACE_BACKEND.get(space) != p["backend"]:
        raise ValueError(f"backend: action_space {space!r} is executed by "
                         f"{SPACE_BACKEND.get(space, 'no backend')!r}, not {p['backend']!r}")
    names = (tuple(robot.arm_joints) if space == "joint_position" else TWIST_NAMES) + ("gripper",)
    config = ExecutorConfig(dimension_names=names, action_space=space, rate_hz=p["rate"],
                            blend=p["blend"], ensemble_k=p["ensemble_k"],
                            rtc_blend_s=p["rtc_blend"], watchdog_timeout=p["watchdog_timeout"],
                            max_age=p["max_chunk_age"], lead_time=p["lead_time"],
                            duration_margin=p["duration_margin"],
                            state_timeout=p["state_timeout"])
    limits = {"velocity_scale": p["safety.velocity_scale"], "max_step": p["safety.max_step"],
              "margin": p["safety.margin"], "acc_max": p["safety.acc_max"],
              "workspace_mode": p["safety.workspace_mode"]}
    if not p["safety.workspace"]:
        limits.update(workspace_min=None, workspace_max=None)
    kinematics = kinematics or Kinematics(robot)
    envelope = SafetyEnvelope.from_robot(robot, config.period, limits, fk=kinematics.fk_position)
    return ChunkExecutor(config, envelope)
