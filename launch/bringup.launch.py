"""A real arm: camera + VLA policy + executor (+ MoveIt for homing), one robot config each.

    ros2 launch roboalign_ros bringup.launch.py robot:=fr3 model_path:=/models/roboalign \
        [device:=cuda] [backend:=joint_trajectory] [camera:=realsense2_camera|camera_node|none] \
        [moveit:=false] [autostart:=true]

The arm's own bringup (ros2_control with a joint_trajectory_controller, or MoveIt Servo for
backend:=servo, with `moveit_servo.command_in_type: speed_units`) runs separately, as the robot
vendor ships it; config/robots/<robot>.yaml names its controller topics, joints and limits.
Safety limits are on (config/executor.yaml).
moveit:=true homes with MoveItPy, configured from config/moveit/<robot>.yaml (checked here
before anything starts: moveit_py, moveit_configs_utils and that file must exist).
camera:=realsense2_camera asks the camera for the robot config's camera profile (640x480 at
config/camera.yaml's fps, the checkpoint's aspect ratio; roboalign_ros/camera/profile.py)
instead of the device default 1280x720, with depth aligned to colour.
policy_node and executor_node are lifecycle nodes: configured by the launch, then activated
(autostart:=false leaves them inactive until `ros2 lifecycle set /executor_node activate` and
`ros2 lifecycle set /policy_node activate`; `deactivate` holds the arm where it is).
"""

import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode, Node

from roboalign_ros.launch_arguments import DEVICE, boolean, choice, text, validate
from roboalign_ros.launch_lifecycle import managed
from roboalign_ros.nodes.backends import registered_backends

ARGUMENTS = {  # name: (default, description, check of the value)
    "robot": ("sim_arm", "robot config in config/robots/ (sim_arm, fr3, ur5e) or a YAML path",
              text(required=True)),
    "model_path": ("", "policy checkpoint directory (save_pretrained layout)", text()),
    "device": ("cuda", "policy device: cuda, cuda:N, cpu or auto", DEVICE),
    "backend": ("joint_trajectory", "output backend (roboalign_ros/nodes/backends.py registry): "
                "joint_trajectory (ros2_control JTC), servo (MoveIt Servo), position "
                "(JointGroupPositionController), ...",
                choice(*sorted(n for n, b in registered_backends().items() if b.action_spaces))),
    "action_space": ("joint_position", "joint_position (with joint_trajectory) or ee_delta",
                     choice("joint_position", "ee_delta")),
    "camera": ("realsense2_camera", "realsense2_camera, camera_node (pyrealsense2) or none",
               choice("realsense2_camera", "camera_node", "none")),
    "moveit": ("false", "use MoveItPy (moveit_py) for ~/go_home", choice("true", "false")),
    "autostart": ("true", "activate policy_node and executor_node once configured (false: "
                  "they wait, inactive, for `ros2 lifecycle set /<node> activate`)", boolean),
}


def check_arguments(context):
    """Stop the launch on a bad argument value, naming it, before any node starts.

    moveit:=true also needs moveit_py, moveit_configs_utils (its planning pipeline defaults)
    and config/moveit/<robot>.yaml, which MoveItPyBackend turns into MoveItPy's config_dict.
    """
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    validate(values, {name: spec[2] for name, spec in ARGUMENTS.items()})
    if values["moveit"] == "true":
        check_moveit(values["robot"])
    return []


def check_moveit(robot):
    """Raise, naming what is missing, unless MoveItPy can be configured for ``robot``."""
    from roboalign_ros.nodes.moveit_backend import moveit_config_path
    from roboalign_ros.robot import _extract_robot, _robot_yaml_path

    missing = []
    for package in ("moveit_py", "moveit_configs_utils"):
        try:
            get_package_share_directory(package)
        except PackageNotFoundError:
            missing.append(package)
    if missing:
        raise RuntimeError(f"moveit:=true needs the ROS packages {missing} (apt install "
                           "ros-$ROS_DISTRO-moveit-py ros-$ROS_DISTRO-moveit-configs-utils)")
    import yaml

    source = _robot_yaml_path(robot)
    name = _extract_robot(yaml.safe_load(source.read_text()), str(source))["name"]
    moveit_config_path(name)   # raises, naming the file, when the robot has no MoveIt config


def camera_driver(context, config):
    """The camera chosen by camera:=..., resolved at launch time (realsense2_camera is optional).

    realsense2_camera gets the robot config's camera profile (roboalign_ros.camera.profile),
    not the device default, and aligned depth.
    """
    choice = LaunchConfiguration("camera").perform(context)
    if choice == "none":
        return []
    if choice == "camera_node":
        return [Node(package="roboalign_ros", executable="camera_node", name="camera_node",
                     output="screen", parameters=[os.path.join(config, "camera.yaml")])]
    if choice == "realsense2_camera":
        try:
            share = get_package_share_directory("realsense2_camera")
        except PackageNotFoundError:
            raise RuntimeError(
                "camera:=realsense2_camera needs the realsense2_camera package "
                "(apt install ros-$ROS_DISTRO-realsense2-camera); camera:=camera_node uses "
                "pyrealsense2 instead") from None
        from roboalign_ros.camera.profile import camera_profile

        profile = camera_profile(LaunchConfiguration("robot").perform(context),
                                 LaunchConfiguration("model_path").perform(context),
                                 os.path.join(config, "camera.yaml"))
        return [IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "rs_launch.py")),
            launch_arguments=profile.realsense_arguments().items())]
    raise RuntimeError(f"camera:={choice} is not one of realsense2_camera, camera_node, none")


def generate_launch_description():
    """Camera driver + policy_node + executor_node for one robot."""
    share = get_package_share_directory("roboalign_ros")
    config = os.path.join(share, "config")
    arg = LaunchConfiguration
    home_backend = PythonExpression(
        ["'moveit_py' if '", arg("moveit"), "' == 'true' else 'joint_trajectory'"])

    actions = [DeclareLaunchArgument(name, default_value=default, description=description)
               for name, (default, description, _) in ARGUMENTS.items()]
    actions.append(OpaqueFunction(function=check_arguments))
    actions.append(OpaqueFunction(function=camera_driver, args=[config]))
    policy = LifecycleNode(
        package="roboalign_ros", executable="policy_node", name="policy_node", namespace="",
        output="screen", sigterm_timeout="15",  # let a running inference finish
        parameters=[os.path.join(config, "policy.yaml"),
                    {"autostart": False,  # the launch drives its transitions (managed())
                     "robot": arg("robot"), "model_path": arg("model_path"),
                     "device": arg("device")}])
    executor = LifecycleNode(
        package="roboalign_ros", executable="executor_node", name="executor_node", namespace="",
        output="screen",
        parameters=[os.path.join(config, "executor.yaml"),
                    {"autostart": False, "robot": arg("robot"), "backend": arg("backend"),
                     "action_space": arg("action_space"), "home_backend": home_backend}])
    actions += [*managed(policy), *managed(executor)]
    return LaunchDescription(actions)
