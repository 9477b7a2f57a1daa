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

# the default backend of each action space (the headless evaluator names it); which backends
# stream which space is executor_node's backend registry (nodes/backends.py), which checks it
SPACE_BACKEND = {"joint_position": "joint_trajectory", "ee_delta": "servo"}
TWIST_NAMES = ("vx", "vy", "vz", "wx", "wy", "wz")


def executor_parameters(overrides: Mapping[str, Any] | None = None,
                        file: str | os.PathLike | None = "executor.yaml") -> dict[str, Any]:
    """executor_node's parameters: its spec's defaults, then ``file``, then ``overrides``.

    The spec: config/parameters/executor_node.yaml.
    """
    from roboalign_ros.parameters import node_parameters

    return node_parameters("executor_node", file, overrides)


def build_executor(params: Mapping[str, Any], robot=None, kinematics=None) -> ChunkExecutor:
    """The :class:`ChunkExecutor` executor_node runs for ``params`` (:func:`executor_parameters`).

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
