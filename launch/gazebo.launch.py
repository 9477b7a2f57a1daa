"""Bring up sim_arm in Gazebo (gz sim) with gz_ros2_control, from the same xacro as MuJoCo.

Needs a full ROS 2 install with ros_gz_sim, gz_ros2_control, robot_state_publisher and
controller_manager (none of which exist on PyPI):

    ros2 launch roboalign_ros gazebo.launch.py [world:=empty.sdf] [wrist_camera:=false]

Wiring: xacro (hardware:=gazebo, controllers_file:=config/sim_arm_controllers.yaml) ->
robot_state_publisher (/robot_description) -> ros_gz_sim create -> spawners for
joint_state_broadcaster, arm_controller (JTC) and gripper_controller (forward position).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import Command, FindExecutable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


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
        PythonLaunchDescriptionSource(os.path.join(
            get_package_share_directory('ros_gz_sim'), 'launch', 'gz_sim.launch.py')),
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
        DeclareLaunchArgument('world', default_value='empty.sdf',
                              description='Gazebo world file'),
        DeclareLaunchArgument('wrist_camera', default_value='false',
                              description='add the wrist camera frame to the URDF'),
        gazebo, clock_bridge, rsp, spawn,
        RegisterEventHandler(OnProcessExit(target_action=spawn, on_exit=[jsb])),
        RegisterEventHandler(OnProcessExit(target_action=jsb, on_exit=[arm, gripper])),
    ])
