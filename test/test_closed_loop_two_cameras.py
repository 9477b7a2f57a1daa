"""The closed loop with a two-camera policy through DDS: sim_node publishes a scene and a wrist
camera, policy_node pairs them and publishes chunks; when the wrist camera stops, the gate
refuses and names it."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import spin_until, wait_matched

pytestmark = pytest.mark.ros


def test_two_cameras_drive_the_policy_and_a_stopped_one_is_named(rclpy_context, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from roboalign_ros.conversions import image_to_numpy
    from roboalign_ros.model import Normalizer, build_tiny_policy
    from roboalign_ros.model.tiny import synthetic_chunks
    from roboalign_ros.msg import ActionChunk, PolicyStatus
    from roboalign_ros.robot import load_robot_config

    # the demo's random tiny policy (chunks near home), with two cameras
    robot = load_robot_config("sim_arm")
    names = [*robot.arm_joints, "gripper"]
    policy = build_tiny_policy(action_dim=7, state_dim=7, dimension_names=names, horizon=10,
                               dt=0.1, camera_names=("scene", "wrist"), image_size=(60, 80),
                               reasoning_every=0)
    center = np.append(robot.home, 0.5).astype(np.float32)
    demo = center + 0.15 * synthetic_chunks(256, 10, 7, seed=1)
    policy.normalizer = Normalizer.fit(action=demo, state=demo[:, 0])
    model = str(policy.save_pretrained(tmp_path / "two_cams"))
    relay_topic = "/test/wrist/color/image_raw"   # the test relays the wrist camera, to stop it
    env = os.environ.copy()
    logs = []

    def start(module, *params):
        log = open(tmp_path / f"{module}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        args = [sys.executable, "-m", f"roboalign_ros.nodes.{module}", "--ros-args"]
        for p in params:
            args += ["-p", p]
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    procs = [start("sim_node", "wrist_camera.enabled:=true", "camera.width:=80",
                   "camera.height:=60", "camera.rate:=10.0", "camera.depth:=false"),
             start("policy_node", f"model_path:={model}", "device:=cpu", "torch_threads:=1",
                   "cameras:=['scene', 'wrist']", f"camera_topics:=['', '{relay_topic}']"),
             start("executor_node")]
    node = Node("two_camera_probe", context=rclpy_context)
    chunks, statuses, wrist_frames = [], [], []
    relaying = {"on": True}
    relay = node.create_publisher(Image, relay_topic, 10)

    def on_wrist(msg):
        wrist_frames.append(image_to_numpy(msg).copy())
        if relaying["on"]:
            relay.publish(msg)

    subs = [node.create_subscription(Image, "/camera/wrist/color/image_raw", on_wrist, 10),
            node.create_subscription(ActionChunk, "/roboalign/action_chunk", chunks.append, 10),
            node.create_subscription(PolicyStatus, "/roboalign/status", statuses.append, 50)]
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        # policy_node subscribes to the relay once its model is loaded (configure)
        wait_matched(executor, relay, *subs, timeout=120)
        assert spin_until(executor, lambda: len(chunks) >= 5, 120), \
            (tmp_path / "policy_node.log").read_text()[-2000:]
        # the sim's wrist camera shows something else than its scene camera
        assert wrist_frames and wrist_frames[-1].shape == (60, 80, 3)
        assert chunks[-1].actions and chunks[-1].action_dim == 7
        relaying["on"] = False        # the wrist camera stops
        statuses.clear()
        assert spin_until(executor, lambda: any(
            s.state == PolicyStatus.STATE_BLOCKED and "camera 'wrist'" in s.message
            for s in statuses), 30), [s.message for s in statuses[-5:]]
        stopped_at = time.monotonic()
        n = len(chunks)
        spin_until(executor, lambda: time.monotonic() - stopped_at > 1.0, 2)
        assert len(chunks) <= n + 1   # at most the one in flight
        relaying["on"] = True         # back: chunks flow again
        assert spin_until(executor, lambda: len(chunks) >= n + 3, 30)
        assert np.isfinite(np.asarray(chunks[-1].actions)).all()
    finally:
        executor.shutdown()
        node.destroy_node()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
