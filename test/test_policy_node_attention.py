"""policy_node's attention overlays over DDS: ``attention.enabled`` publishes where the policy
looks on ``~/attention/<camera>`` (rgb8, the camera's stamp and frame) while chunks keep
flowing; a bad ``attention.source`` stops the node at configure and names the parameter."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import PolicyInputs, policy_node_process, spin_until, wait_matched

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def policy_process(tmp_path_factory):
    with policy_node_process(tmp_path_factory.mktemp("policy"),
                             "reasoning_every:=1", "reasoning_period:=0.2",
                             "attention.enabled:=true", "attention.period:=0.2",
                             "attention.source:=reasoning") as log:
        yield log


def test_overlays_arrive_with_the_cameras_stamp_and_frame_while_chunks_flow(
        rclpy_context, policy_process):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from roboalign_ros.conversions import image_to_numpy, stamp_to_seconds
    from roboalign_ros.msg import ActionChunk, PolicyStatus
    from roboalign_ros.robot import load_robot_config

    node = Node("attention_probe", context=rclpy_context)
    chunks, overlays, statuses = [], [], []
    subs = [node.create_subscription(ActionChunk, "/roboalign/action_chunk", chunks.append, 50),
            node.create_subscription(Image, "/policy_node/attention/scene", overlays.append, 10),
            node.create_subscription(PolicyStatus, "/roboalign/status", statuses.append, 50)]
    inputs = PolicyInputs(node, load_robot_config("sim_arm"),
                          np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8))
    sent = inputs.sent
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: any(
            s.lifecycle_state == "active" for s in statuses), 120), "policy never activated"
        wait_matched(executor, *inputs.publishers, *subs)  # the instruction is sent once
        inputs.instruct("pick up the red cube")
        node.create_timer(0.05, lambda: inputs.publish_image("camera_color_optical_frame"))
        assert spin_until(executor, lambda: len(overlays) >= 3 and len(chunks) >= 10, 60), \
            (len(overlays), len(chunks))
    finally:
        executor.shutdown()
    msg = overlays[-1]
    assert msg.encoding == "rgb8" and msg.header.frame_id == "camera_color_optical_frame"
    pixels = image_to_numpy(msg)
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.std() > 0
    sent_stamps = np.asarray(sent)
    assert np.min(np.abs(sent_stamps - stamp_to_seconds(msg.header.stamp))) < 1e-6
    # the action path did not wait for the maps: many more chunks than overlays
    assert len(chunks) > len(overlays)


@pytest.mark.parametrize("params, named", [
    (["attention.enabled:=true", "attention.source:=elbow"], "attention.source"),
    (["max_rate:=-5.0"], "max_rate: -5.0 breaks the rule: >= 0.0"),
])
def test_a_bad_parameter_is_named_and_the_node_stops(params, named):
    proc = subprocess.run(
        [sys.executable, "-m", "roboalign_ros.nodes.policy_node", "--ros-args",
         "-p", "model_path:=tiny", "-p", "device:=cpu",
         *[arg for param in params for arg in ("-p", param)]],
        capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 1
    assert named in proc.stdout + proc.stderr
