"""Evaluation trials for lab technicians, next to a running bringup (real arm) or sim.

    ros2 launch roboalign_ros eval.launch.py plan:=config/eval/real_example.yaml mode:=real \
        operator:=alice [go_home:=true]

The technician resets the scene and calls /eval_node/start_trial, then labels each trial with
/eval_node/label_trial (roboalign_ros/srv/LabelTrial); in sim mode (plan:=config/eval/
sim_smoke.yaml mode:=sim) resets and labels are automatic: start sim.launch.py with
publish_instruction off (the plan's instructions are sent by eval_node). Results: JSONL + a
report under results_dir. Everything else is in config/eval_node.yaml.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

ARGUMENTS = {
    "plan": ("config/eval/sim_smoke.yaml", "trial plan (YAML)"),
    "mode": ("sim", "sim (automatic resets and labels) or real (technician)"),
    "operator": ("", "who runs the trials (stored with every result)"),
    "go_home": ("false", "send the arm home before each trial"),
    "results_dir": ("~/roboalign_eval", "where results and reports go"),
}


def generate_launch_description():
    """eval_node with config/eval_node.yaml and the arguments above."""
    config = os.path.join(get_package_share_directory("roboalign_ros"), "config")
    arg = LaunchConfiguration
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=text)
          for name, (default, text) in ARGUMENTS.items()],
        Node(package="roboalign_ros", executable="eval_node", name="eval_node", output="screen",
             emulate_tty=True,  # the technician reads the prompts in this terminal
             parameters=[os.path.join(config, "eval_node.yaml"),
                         {"plan": arg("plan"), "mode": arg("mode"), "operator": arg("operator"),
                          "go_home": ParameterValue(arg("go_home"), value_type=bool),
                          "results_dir": arg("results_dir")}]),
    ])
