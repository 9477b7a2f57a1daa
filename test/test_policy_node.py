"""policy_node over DDS with the tiny model: stale images gated, chunks stamped with the
observation time, instruction changes taken, wrong encodings refused."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import spin_until

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def policy_process(tmp_path_factory):
    log = tmp_path_factory.mktemp("policy") / "policy_node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "roboalign_ros.nodes.policy_node", "--ros-args",
             "-p", "model_path:=tiny", "-p", "device:=cpu", "-p", "reasoning_every:=0",
             "-p", "torch_threads:=1"],
            stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    yield log
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def probe(rclpy_context, policy_process):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from roboalign_ros.msg import ActionChunk, PolicyStatus
    from roboalign_ros.robot import load_robot_config

    class Probe:
        pass

    p = Probe()
    p.robot = load_robot_config("sim_arm")
    p.node = Node("policy_probe", context=rclpy_context)
    p.chunks, p.statuses = [], []
    p.node.create_subscription(ActionChunk, "/roboalign/action_chunk", p.chunks.append, 10)
    p.node.create_subscription(PolicyStatus, "/roboalign/status", p.statuses.append, 50)
    p.image_pub = p.node.create_publisher(Image, p.robot.color_topic, 10)
    p.instruction_pub = p.node.create_publisher(String, "/roboalign/instruction", 10)
    js_pub = p.node.create_publisher(JointState, "/joint_states", 10)

    def publish_state():
        msg = JointState(name=list(p.robot.joint_names),
                         position=[*map(float, p.robot.home), 0.02, 0.02])
        msg.header.stamp = p.node.get_clock().now().to_msg()
        js_pub.publish(msg)

    p.node.create_timer(0.01, publish_state)
    p.executor = SingleThreadedExecutor(context=rclpy_context)
    p.executor.add_node(p.node)
    p.log = policy_process

    def now():
        return p.node.get_clock().now().nanoseconds * 1e-9

    def send_image(age=0.0, encoding="rgb8"):
        from roboalign_ros.conversions import numpy_to_image

        shape = (120, 160, 3) if encoding == "rgb8" else (120, 160)
        image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        stamp = now() - age
        p.image_pub.publish(numpy_to_image(image, encoding, stamp=stamp))
        return stamp

    def wait(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            p.executor.spin_once(timeout_sec=0.01)

    p.now, p.send_image, p.wait = now, send_image, wait
    assert spin_until(p.executor, lambda: any(s.state == PolicyStatus.STATE_WAITING or
                                              s.state == PolicyStatus.STATE_BLOCKED
                                              for s in p.statuses), 120), "model never loaded"
    assert spin_until(p.executor, lambda: p.image_pub.get_subscription_count() > 0, 10)
    yield p
    p.executor.shutdown()
    p.node.destroy_node()


def test_gating_stamping_and_instruction_change(probe):
    from std_msgs.msg import String

    from roboalign_ros.conversions import action_chunk_to_numpy
    from roboalign_ros.msg import PolicyStatus

    # no instruction yet: blocked, says why
    probe.send_image()
    assert spin_until(probe.executor, lambda: any("no instruction" in s.message
                                                  for s in probe.statuses), 20)
    probe.instruction_pub.publish(String(data="pick up the red cube"))
    probe.wait(0.3)
    # a stale image (2 s old) is refused, with the reason
    probe.statuses.clear()
    probe.send_image(age=2.0)
    assert spin_until(probe.executor, lambda: any(
        s.state == PolicyStatus.STATE_BLOCKED and "old > max_image_age" in s.message
        for s in probe.statuses), 20)
    assert not probe.chunks
    # fresh images: chunks stamped with the image's time
    stamps = []
    for _ in range(3):
        stamps.append(probe.send_image())
        probe.wait(0.4)
    assert spin_until(probe.executor, lambda: len(probe.chunks) >= 1, 30)
    chunk = action_chunk_to_numpy(probe.chunks[-1])
    assert any(abs(chunk.stamp - s) < 1e-6 for s in stamps), "chunk not stamped with its image"
    assert chunk.actions.shape == (10, 7) and chunk.instruction == "pick up the red cube"
    assert list(chunk.dimension_names) == [*probe.robot.arm_joints, "gripper"]
    # instruction change mid-run
    probe.instruction_pub.publish(String(data="push the green block to the left"))
    probe.wait(0.3)
    probe.chunks.clear()
    for _ in range(3):
        probe.send_image()
        probe.wait(0.4)
    assert spin_until(probe.executor, lambda: probe.chunks, 30)
    assert probe.chunks[-1].instruction == "push the green block to the left"


def test_wrong_encoding_is_refused_with_a_clear_log(probe):
    probe.send_image(encoding="mono8")
    probe.wait(1.0)
    assert "policy needs colour images" in probe.log.read_text()
