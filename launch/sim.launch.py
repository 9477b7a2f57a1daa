"""The simulated closed loop: MuJoCo arm + VLA policy + executor (CPU is enough).

    ros2 launch roboalign_ros sim.launch.py [model_path:=tiny] [device:=cpu] \
        [task:=pick_red_cube] [seed:=0] [robot_state_publisher:=true]

Parameters come from config/sim.yaml, config/policy.yaml and config/executor.yaml; the
arguments only override a few of them. `roboalign demo` starts the same three nodes without
the ros2 CLI.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import Command, FindExecutable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

ARGUMENTS = {
    "model_path": ("tiny", "policy checkpoint directory, or 'tiny' for a random demo policy"),
    "device": ("cpu", "policy device: cpu, cuda, cuda:N or auto"),
    "task": ("pick_red_cube", "sim task name or instruction"),
    "seed": ("0", "seed of the task's object layout"),
    "camera_rate": ("10.0", "Hz of the simulated camera"),
    "robot_state_publisher": ("true", "publish TF from /joint_states and the URDF"),
}


def generate_launch_description():
    """sim_node + policy_node + executor_node (+ robot_state_publisher)."""
    share = get_package_share_directory("roboalign_ros")
    config = os.path.join(share, "config")
    arg = LaunchConfiguration
    robot_description = ParameterValue(
        Command([FindExecutable(name="xacro"), " ",
                 os.path.join(share, "urdf", "sim_arm.urdf.xacro"), " hardware:=mock"]),
        value_type=str)
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=text)
          for name, (default, text) in ARGUMENTS.items()],
        Node(package="roboalign_ros", executable="sim_node", name="sim_node", output="screen",
             parameters=[os.path.join(config, "sim.yaml"),
                         {"task": arg("task"),
                          "seed": ParameterValue(arg("seed"), value_type=int),
                          "camera.rate": ParameterValue(arg("camera_rate"), value_type=float)}]),
        Node(package="roboalign_ros", executable="policy_node", name="policy_node",
             output="screen",
             parameters=[os.path.join(config, "policy.yaml"),
                         {"model_path": arg("model_path"), "device": arg("device")}]),
        Node(package="roboalign_ros", executable="executor_node", name="executor_node",
             output="screen", parameters=[os.path.join(config, "executor.yaml")]),
        Node(package="robot_state_publisher", executable="robot_state_publisher",
             output="screen", condition=IfCondition(arg("robot_state_publisher")),
             parameters=[{"robot_description": robot_description}]),
    ])
