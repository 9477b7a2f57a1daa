"""Evaluation trials for lab technicians, next to a running bringup (real arm) or sim.

    ros2 launch roboalign_ros eval.launch.py plan:=config/eval/real_example.yaml mode:=real \
        operator:=alice [go_home:=true]

The technician resets the scene and calls /eval_node/start_trial, then labels each trial with
/eval_node/label_trial (roboalign_ros/srv/LabelTrial); in sim mode (plan:=config/eval/
sim_smoke.yaml mode:=sim) resets and labels are automatic: start sim.launch.py with
publish_instruction off (the plan's instructions are sent by eval_node). Results: JSONL + a
report under results_dir. Everything else is in config/eval_node.yaml. When eval_node fails
(a bad plan, say), the launch stops and exits non-zero.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from roboalign_ros.launch_arguments import boolean, choice, text, validate

ARGUMENTS = {  # name: (default, description, check of the value)
    "plan": ("config/eval/sim_smoke.yaml", "trial plan (YAML)", text(required=True)),
    "mode": ("sim", "sim (automatic resets and labels) or real (technician)",
             choice("sim", "real")),
    "operator": ("", "who runs the trials (stored with every result)", text()),
    "go_home": ("false", "send the arm home before each trial", boolean),
    "results_dir": ("~/roboalign_eval", "where results and reports go", text(required=True)),
}


def check_arguments(context):
    """Stop the launch on a bad argument value, naming it, before eval_node starts."""
    validate({name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS},
             {name: spec[2] for name, spec in ARGUMENTS.items()})
    return []


def on_eval_exit(event, context):
    """eval_node ended: stop the launch; a failure makes it exit non-zero.

    launch returns non-zero only for an exception, not for a process that failed, so a failed
    eval_node raises here (unless the launch is already shutting down, e.g. on Ctrl-C).
    """
    if event.returncode != 0 and not getattr(context, "is_shutdown", False):
        raise RuntimeError(f"eval_node exited with code {event.returncode} (its log above "
                           "says why)")
    return [EmitEvent(event=Shutdown(reason=f"eval_node exited ({event.returncode})"))]


def generate_launch_description():
    """eval_node with config/eval_node.yaml and the arguments above."""
    config = os.path.join(get_package_share_directory("roboalign_ros"), "config")
    arg = LaunchConfiguration
    eval_node = Node(
        package="roboalign_ros", executable="eval_node", name="eval_node", output="screen",
        emulate_tty=True,  # the technician reads the prompts in this terminal
        parameters=[os.path.join(config, "eval_node.yaml"),
                    {"plan": arg("plan"), "mode": arg("mode"), "operator": arg("operator"),
                     "go_home": ParameterValue(arg("go_home"), value_type=bool),
                     "results_dir": arg("results_dir")}])
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description, _) in ARGUMENTS.items()],
        OpaqueFunction(function=check_arguments),
        RegisterEventHandler(OnProcessExit(target_action=eval_node, on_exit=on_eval_exit)),
        eval_node,
    ])
