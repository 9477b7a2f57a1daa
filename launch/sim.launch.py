"""The simulated closed loop: MuJoCo arm + VLA policy + executor (CPU is enough).

    ros2 launch roboalign_ros sim.launch.py [model_path:=tiny] [device:=cpu] \
        [task:=pick_red_cube] [seed:=0] [reasoning_every:=5] [robot_state_publisher:=auto] \
        [rviz:=false] [autostart:=true]

policy_node and executor_node are lifecycle nodes: the launch configures them, then activates
them (autostart:=false leaves them configured, inactive: `ros2 lifecycle set /policy_node
activate`). Parameters come from config/sim.yaml, config/policy.yaml and config/executor.yaml; the
arguments below override those keys (edit the files for everything else). `roboalign demo`
starts the same three nodes without the ros2 CLI.
"""

import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    LogInfo,
    OpaqueFunction,
)
from launch.substitutions import Command, FindExecutable, LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

from roboalign_ros.launch_arguments import DEVICE, boolean, choice, integer, number, text, validate
from roboalign_ros.launch_lifecycle import managed

ARGUMENTS = {  # name: (default, description, check of the value)
    "model_path": ("tiny", "policy checkpoint directory, or 'tiny' for a random demo policy",
                   text(required=True)),
    "device": ("cpu", "policy device: cpu, cuda, cuda:N or auto", DEVICE),
    "task": ("pick_red_cube", "sim task name or instruction", text(required=True)),
    "seed": ("0", "seed of the task's object layout", integer(minimum=0)),
    "camera_rate": ("10.0", "Hz of the simulated camera", number(0.0, 60.0)),
    "reasoning_every": ("5", "reason every N chunks (0 = off, -1 = the checkpoint's setting)",
                        integer(minimum=-1)),
    "torch_threads": ("1", "CPU inference threads (0 = torch default)", integer(minimum=0)),
    "publish_instruction": ("true", "the sim publishes its task's instruction (false when "
                            "eval.launch.py or a person sends instructions)", boolean),
    "robot_state_publisher": ("auto", "publish TF from /joint_states and the URDF: true, "
                              "false or auto (when the package is installed)",
                              choice("true", "false", "auto")),
    "rviz": ("false", "open RViz with config/roboalign.rviz: the robot, the camera, the "
             "planned tool path", boolean),
    "autostart": ("true", "activate policy_node and executor_node once configured (false: "
                  "they wait, inactive, for `ros2 lifecycle set /<node> activate`)", boolean),
}


def check_arguments(context):
    """Stop the launch on a bad argument value, naming it, before any node starts."""
    validate({name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS},
             {name: spec[2] for name, spec in ARGUMENTS.items()})
    return []


def state_publisher(context, share):
    """robot_state_publisher, resolved before any node starts (it is not on PyPI)."""
    wanted = LaunchConfiguration("robot_state_publisher").perform(context).strip().lower()
    if wanted == "false":
        return []
    try:
        get_package_share_directory("robot_state_publisher")
    except PackageNotFoundError:
        if wanted == "auto":
            return [LogInfo(msg="robot_state_publisher is not installed: no TF from the URDF "
                                "(robot_state_publisher:=false hides this message)")]
        raise RuntimeError(
            "robot_state_publisher:=true needs the robot_state_publisher package "
            "(apt install ros-$ROS_DISTRO-robot-state-publisher); use "
            "robot_state_publisher:=false or auto without it") from None
    robot_description = ParameterValue(
        Command([FindExecutable(name="xacro"), " ",
                 os.path.join(share, "urdf", "sim_arm.urdf.xacro"), " hardware:=mock"]),
        value_type=str)
    return [Node(package="robot_state_publisher", executable="robot_state_publisher",
                 output="screen", parameters=[{"robot_description": robot_description}])]


def rviz(context, share):
    """rviz2 with the package's config when rviz:=true (rviz2 is not on PyPI)."""
    if LaunchConfiguration("rviz").perform(context).strip().lower() != "true":
        return []
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        raise RuntimeError("rviz:=true needs the rviz2 package (apt install "
                           "ros-$ROS_DISTRO-rviz2); use rviz:=false without it") from None
    return [Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                 arguments=["-d", os.path.join(share, "config", "roboalign.rviz")])]


def generate_launch_description():
    """sim_node + policy_node + executor_node (+ robot_state_publisher)."""
    share = get_package_share_directory("roboalign_ros")
    config = os.path.join(share, "config")
    arg = LaunchConfiguration
    policy = LifecycleNode(
        package="roboalign_ros", executable="policy_node", name="policy_node", namespace="",
        output="screen", sigterm_timeout="15",  # a CPU inference can outlast the 5 s
        parameters=[os.path.join(config, "policy.yaml"),
                    {"autostart": False,  # the launch drives its transitions (managed())
                     "model_path": arg("model_path"), "device": arg("device"),
                     "reasoning_every": ParameterValue(arg("reasoning_every"), value_type=int),
                     "torch_threads": ParameterValue(arg("torch_threads"), value_type=int)}])
    executor = LifecycleNode(
        package="roboalign_ros", executable="executor_node", name="executor_node", namespace="",
        output="screen", parameters=[os.path.join(config, "executor.yaml"),
                                     # sim_node's Servo stand-in has no Servo services
                                     {"autostart": False, "servo.manage": False}])
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description, _) in ARGUMENTS.items()],
        OpaqueFunction(function=check_arguments),
        OpaqueFunction(function=state_publisher, args=[share]),
        OpaqueFunction(function=rviz, args=[share]),
        Node(package="roboalign_ros", executable="sim_node", name="sim_node", output="screen",
             parameters=[os.path.join(config, "sim.yaml"),
                         {"task": arg("task"),
                          "publish_instruction": ParameterValue(arg("publish_instruction"),
                                                                value_type=bool),
                          "seed": ParameterValue(arg("seed"), value_type=int),
                          "camera.rate": ParameterValue(arg("camera_rate"), value_type=float)}]),
        *managed(policy),
        *managed(executor),
    ])
