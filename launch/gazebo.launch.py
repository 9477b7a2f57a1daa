"""Bring up sim_arm in Gazebo (gz sim) with gz_ros2_control, from the same xacro as MuJoCo.

Needs a full ROS 2 install with ros_gz_sim, gz_ros2_control, robot_state_publisher and
controller_manager (none of which exist on PyPI):

    ros2 launch roboalign_ros gazebo.launch.py [world:=empty.sdf] [wrist_camera:=false]

Wiring: xacro (hardware:=gazebo, controllers_file:=config/sim_arm_controllers.yaml) ->
robot_state_publisher (/robot_description) -> ros_gz_sim create -> spawners for
joint_state_broadcaster, arm_controller (JTC) and gripper_controller (forward position).
The Gazebo packages are looked up when the launch runs, not when the description is built, so
`--show-args` works without them and a launch without them says which ones are missing.
"""

import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import Command, FindExecutable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from roboalign_ros.launch_arguments import boolean, text, validate

ARGUMENTS = {  # name: (default, description, check of the value)
    'world': ('empty.sdf', 'Gazebo world file', text(required=True)),
    'wrist_camera': ('false', 'add the wrist camera frame to the URDF', boolean),
}
REQUIRED = ('ros_gz_sim', 'ros_gz_bridge', 'gz_ros2_control', 'robot_state_publisher',
            'controller_manager', 'xacro')


def check_setup(context):
    """Stop the launch on a bad argument value or a missing package, naming them."""
    validate({name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS},
             {name: spec[2] for name, spec in ARGUMENTS.items()})
    missing = []
    for package in REQUIRED:
        try:
            get_package_share_directory(package)
        except PackageNotFoundError:
            missing.append(package)
    if missing:
        raise RuntimeError(f"gazebo.launch.py needs the ROS packages {missing} "
                           "(apt install ros-$ROS_DISTRO-ros-gz ros-$ROS_DISTRO-gz-ros2-control "
                           "ros-$ROS_DISTRO-robot-state-publisher ros-$ROS_DISTRO-xacro)")
    return []


def generate_launch_description():
    """Gazebo + robot_state_publisher + spawn + controller spawners."""
    share = get_package_share_directory('roboalign_ros')
    xacro_file = os.path.join(share, 'urdf', 'sim_arm.urdf.xacro')
    controllers = os.path.join(share, 'config', 'sim_arm_controllers.yaml')

    world = LaunchConfiguration('world')
    wrist_camera = LaunchConfiguration('wrist_camera')
    robot_description = ParameterValue(
        Command([FindExecutable(name='xacro'), ' ', xacro_file, ' hardware:=gazebo',
                 ' controllers_file:=', controllers, ' wrist_camera:=', wrist_camera]),
        value_type=str)

    gazebo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution(
            [FindPackageShare('ros_gz_sim'), 'launch', 'gz_sim.launch.py'])),
        launch_arguments={'gz_args': ['-r ', world]}.items())

    rsp = Node(package='robot_state_publisher', executable='robot_state_publisher',
               output='screen',
               parameters=[{'robot_description': robot_description, 'use_sim_time': True}])

    spawn = Node(package='ros_gz_sim', executable='create', output='screen',
                 arguments=['-topic', 'robot_description', '-name', 'sim_arm'])

    clock_bridge = Node(package='ros_gz_bridge', executable='parameter_bridge', output='screen',
                        arguments=['/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock'])

    def spawner(name):
        return Node(package='controller_manager', executable='spawner', output='screen',
                    arguments=[name, '--controller-manager', '/controller_manager'])

    jsb, arm, gripper = (spawner('joint_state_broadcaster'), spawner('arm_controller'),
                         spawner('gripper_controller'))

    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description, _) in ARGUMENTS.items()],
        OpaqueFunction(function=check_setup),
        gazebo, clock_bridge, rsp, spawn,
        RegisterEventHandler(OnProcessExit(target_action=spawn, on_exit=[jsb])),
        RegisterEventHandler(OnProcessExit(target_action=jsb, on_exit=[arm, gripper])),
    ])
