"""Bring up sim_arm in Gazebo with gz_ros2_control, from the same xacro as MuJoCo.

Needs a full ROS 2 install with ros_gz_sim, gz_ros2_control (Humble: ign_ros2_control),
robot_state_publisher and controller_manager (none of which exist on PyPI):

    ros2 launch roboalign_ros gazebo.launch.py [world:=empty.sdf] [wrist_camera:=false] \
        [gazebo:=gz|ign]

Wiring: xacro (hardware:=gazebo, gazebo:=..., controllers_file:=config/sim_arm_controllers.yaml)
-> robot_state_publisher (/robot_description) -> ros_gz_sim create -> spawners for
joint_state_broadcaster, arm_controller (JTC) and gripper_controller (forward position).

gazebo:= picks the ros2_control plugins by distro (default from ROS_DISTRO), as
github.com/ros-controls/gz_ros2_control names them: ``gz`` (Iron, Jazzy and later; branch
jazzy, gz_ros2_control/gz_hardware_plugins.xml: gz_ros2_control/GazeboSimSystem, system
plugin gz_ros2_control-system / gz_ros2_control::GazeboSimROS2ControlPlugin) or ``ign``
(Humble with Gazebo Fortress; branch humble, ign_ros2_control/ign_hardware_plugins.xml:
ign_ros2_control/IgnitionSystem, ign_ros2_control-system /
ign_ros2_control::IgnitionROS2ControlPlugin). Both use ros_gz_sim's gz_sim.launch.py and
``create`` (gazebosim/ros_gz branch humble ships them too; its ros_ign_gazebo is a deprecated
shim that includes gz_sim.launch.py) and ros_gz_bridge's ``gz.msgs.Clock`` bridge (as humble's
ros_gz_sim_demos do).
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

from roboalign_ros.launch_arguments import boolean, choice, text, validate

# ros2_control's Gazebo package per flavour (the xacro's gazebo:= arg picks the plugin names)
ROS2_CONTROL_PACKAGE = {'gz': 'gz_ros2_control', 'ign': 'ign_ros2_control'}


def default_flavour(distro):
    """``ign`` on Humble (Gazebo Fortress, ign_ros2_control), ``gz`` on Iron and later."""
    return 'ign' if distro in ('humble', 'galactic', 'foxy') else 'gz'


ARGUMENTS = {  # name: (default, description, check of the value)
    'world': ('empty.sdf', 'Gazebo world file', text(required=True)),
    'wrist_camera': ('false', 'add the wrist camera frame to the URDF', boolean),
    'gazebo': (default_flavour(os.environ.get('ROS_DISTRO', '')),
               'gz (gz_ros2_control, Iron/Jazzy and later) or ign (ign_ros2_control, Humble); '
               'the default follows ROS_DISTRO', choice('gz', 'ign')),
}


def required_packages(flavour):
    """The ROS packages a launch with gazebo:=``flavour`` needs."""
    return ('ros_gz_sim', 'ros_gz_bridge', ROS2_CONTROL_PACKAGE[flavour],
            'robot_state_publisher', 'controller_manager', 'xacro')


def check_setup(context):
    """Stop the launch on a bad argument value or a missing package, naming them."""
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    validate(values, {name: spec[2] for name, spec in ARGUMENTS.items()})
    missing = []
    for package in required_packages(values['gazebo']):
        try:
            get_package_share_directory(package)
        except PackageNotFoundError:
            missing.append(package)
    if missing:
        control = ROS2_CONTROL_PACKAGE[values['gazebo']].replace('_', '-')
        raise RuntimeError(f"gazebo.launch.py needs the ROS packages {missing} "
                           f"(apt install ros-$ROS_DISTRO-ros-gz ros-$ROS_DISTRO-{control} "
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
                 ' gazebo:=', LaunchConfiguration('gazebo'),
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
