"""A gripper driven through control_msgs/action/GripperCommand (franka_gripper, gripper ctrl).

control_msgs comes with a ROS 2 install (here: the real-controller tier's installation), so this
runs in ``make test-controllers``. The server is a stand-in that takes goals as
control_msgs' GripperCommand.action defines them (command.position in the joint's units,
command.max_effort) and answers them as franka_gripper's ``onExecuteGripperCommand`` does
(reached_goal once the fingers are there).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import spin_until, wait_matched

pytestmark = [pytest.mark.ros, pytest.mark.controllers]


def test_the_opening_goes_out_as_a_gripper_command_goal_in_joint_units(rclpy_context, tmp_path):
    from control_msgs.action import GripperCommand
    from rclpy.action import ActionServer
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from roboalign_ros.apps.ros2_control_rig import Probe
    from roboalign_ros.robot import load_robot_config, package_path

    # sim_arm, but with its gripper behind an action
    doc = yaml.safe_load(package_path("config", "robots", "sim_arm.yaml").read_text())
    robot_doc = doc["/**"]["ros__parameters"]["robot"]
    robot_doc["gripper_interface"] = "action"
    robot_doc.setdefault("topics", {})["gripper"] = "/test_gripper/gripper_action"
    robot_doc["urdf"] = str(package_path("urdf", "sim_arm.urdf.xacro"))
    config = tmp_path / "sim_arm_gripper_action.yaml"
    config.write_text(yaml.safe_dump(doc))
    robot = load_robot_config(config)
    assert robot.gripper_interface == "action"

    node = Node("gripper_server", context=rclpy_context)
    goals = []

    import time

    times = []

    def execute(handle):
        times.append(time.monotonic())
        goals.append((handle.request.command.position, handle.request.command.max_effort))
        handle.succeed()
        return GripperCommand.Result(position=handle.request.command.position,
                                     reached_goal=True)

    server = ActionServer(node, GripperCommand, "/test_gripper/gripper_action", execute)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    probe = Probe(node, robot, controller_state=False)
    log = open(tmp_path / "executor.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "roboalign_ros.nodes.executor_node",
                             "--ros-args", "-p", f"robot:={config}"],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        from sensor_msgs.msg import JointState

        js = node.create_publisher(JointState, "/joint_states", 10)
        wait_matched(executor, probe.chunk_pub, js, timeout=60)
        node.create_timer(0.01, lambda: js.publish(JointState(
            name=list(robot.joint_names), position=[*map(float, robot.home), 0.04, 0.04])))
        assert spin_until(executor, lambda: "active" in (tmp_path / "executor.log").read_text(),
                          30)
        for opening, chunks in ((0.5, 8), (0.0, 30)):   # the gripper filter ramps it
            for _ in range(chunks):
                probe.chunk(np.tile(np.append(robot.home, opening), (20, 1)), dt=0.1)
                spin_until(executor, lambda: False, 0.1)
                if goals and goals[-1][0] == 0.0:
                    break
        assert goals and goals[-1][0] == 0.0, (goals, log.name)
        # opening 0.5 -> 0.02 m (the joint's units), then towards 0.0 (closed) as the
        # executor's gripper filter ramps it: a goal per 0.02 of change at most every 0.1 s,
        # not one per 10 ms tick
        positions = [p for p, _ in goals]
        assert positions[0] == pytest.approx(0.02)
        assert all(b < a for a, b in zip(positions, positions[1:]))
        assert len(goals) <= (times[-1] - times[0]) / 0.1 + 2   # (server-side timing jitters)
        assert all(effort == robot.gripper_effort for _, effort in goals)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        server.destroy()
        node.destroy_node()
