"""policy_node over DDS with the tiny model: stale images gated, chunks stamped with the
observation time, instruction changes taken, wrong encodings refused, oversized inputs refused
and named in the status and diagnostics."""

import time

import numpy as np
import pytest
from conftest import policy_node_process, spin_until

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def policy_process(tmp_path_factory):
    with policy_node_process(tmp_path_factory.mktemp("policy"),
                             "reasoning_every:=0",
                             # small image bounds, so that an oversized image is cheap to send
                             "max_image_width:=200", "max_image_height:=150") as log:
        yield log


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

    from diagnostic_msgs.msg import DiagnosticArray

    p = Probe()
    p.robot = load_robot_config("sim_arm")
    p.node = Node("policy_probe", context=rclpy_context)
    p.chunks, p.statuses, p.diagnostics = [], [], []
    p.node.create_subscription(ActionChunk, "/roboalign/action_chunk", p.chunks.append, 10)
    p.node.create_subscription(PolicyStatus, "/roboalign/status", p.statuses.append, 50)
    p.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: p.diagnostics.extend(s for s in m.status if s.name.startswith("policy_node")),
        10)
    p.image_pub = p.node.create_publisher(Image, p.robot.color_topic, 10)
    p.instruction_pub = p.node.create_publisher(String, "/roboalign/instruction", 10)
    js_pub = p.node.create_publisher(JointState, "/joint_states", 10)

    p.joint_names = list(p.robot.joint_names)  # a test may break them

    def publish_state():
        msg = JointState(name=p.joint_names,
                         position=[*map(float, p.robot.home), 0.02, 0.02][:len(p.joint_names)])
        msg.header.stamp = p.node.get_clock().now().to_msg()
        js_pub.publish(msg)

    p.node.create_timer(0.01, publish_state)
    p.executor = SingleThreadedExecutor(context=rclpy_context)
    p.executor.add_node(p.node)
    p.log = policy_process

    def now():
        return p.node.get_clock().now().nanoseconds * 1e-9

    def send_image(age=0.0, encoding="rgb8", size=(120, 160)):
        from roboalign_ros.conversions import numpy_to_image

        shape = (*size, 3) if encoding == "rgb8" else size
        image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        stamp = now() - age
        p.image_pub.publish(numpy_to_image(image, encoding, stamp=stamp))
        return stamp

    def wait(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            p.executor.spin_once(timeout_sec=0.01)

    p.now, p.send_image, p.wait = now, send_image, wait
    assert spin_until(p.executor, lambda: any(s.lifecycle_state == "active"
                                              for s in p.statuses), 120), "never activated"
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
    assert "image refused: encoding 'mono8' not supported (the policy needs rgb8/bgr8/rgba8)" \
        in probe.log.read_text()


def _blocked_with(probe, needle, timeout=10):
    """Wait for a BLOCKED status whose message contains ``needle``."""
    from roboalign_ros.msg import PolicyStatus

    return spin_until(probe.executor, lambda: any(
        s.state == PolicyStatus.STATE_BLOCKED and needle in s.message for s in probe.statuses),
        timeout)


def _diagnosed(probe, needle, timeout=5):
    """Wait for a WARN/ERROR policy diagnostic whose message contains ``needle``."""
    from diagnostic_msgs.msg import DiagnosticStatus

    return spin_until(probe.executor, lambda: any(
        s.level in (DiagnosticStatus.WARN, DiagnosticStatus.ERROR) and needle in s.message
        for s in probe.diagnostics), timeout)


def _act_again(probe, instruction="pick up the red cube"):
    from std_msgs.msg import String

    probe.instruction_pub.publish(String(data=instruction))
    probe.wait(0.2)
    probe.chunks.clear()
    for _ in range(3):
        probe.send_image()
        probe.wait(0.3)
    assert spin_until(probe.executor, lambda: probe.chunks, 10), "policy did not act again"
    assert probe.chunks[-1].instruction == instruction


def test_oversized_instruction_is_refused_at_once_and_named(probe):
    """Issue 10 item 5: a huge instruction stalled the policy for minutes, status silent."""
    import random
    import string

    from std_msgs.msg import String

    _act_again(probe)
    probe.statuses.clear()
    probe.diagnostics.clear()
    huge = "pick up the red cube " * 1000  # 21000 characters
    probe.instruction_pub.publish(String(data=huge))
    probe.chunks.clear()
    t0 = time.monotonic()
    assert _blocked_with(probe, "instruction refused: 21000 characters > max_instruction_chars "
                                "1000", 5), [s.message for s in probe.statuses][-3:]
    assert time.monotonic() - t0 < 3.0
    for _ in range(3):  # fresh images do not make it act on the refused instruction
        probe.send_image()
        probe.wait(0.2)
    assert not probe.chunks, "a chunk was published for a refused instruction"
    assert _diagnosed(probe, "instruction refused")
    status = probe.statuses[-1]
    assert len(status.instruction) < 300, "the status echoes the whole refused instruction"
    # short enough in characters, too long in the policy's tokens
    rng = random.Random(0)
    noise = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(900))
    probe.instruction_pub.publish(String(data=noise))
    probe.send_image()
    assert _blocked_with(probe, "tokens > max_instruction_tokens 256", 5)
    assert not probe.chunks
    _act_again(probe)  # a valid instruction is taken at once


def test_refused_images_and_joint_states_are_named_not_their_symptoms(probe):
    """Issue 10 items 5 and 8: an oversized image or bad encoding showed as 'image 1.06 s
    old', bad joint states as 'skew'."""
    _act_again(probe)
    probe.statuses.clear()
    probe.diagnostics.clear()
    for _ in range(2):
        probe.send_image(size=(240, 320))  # fixture bounds: 200x150
        probe.wait(0.3)
    assert _blocked_with(probe, "image refused: 320x240 exceeds max_image_width x "
                                "max_image_height 200x150", 5)
    probe.wait(1.0)  # the last good image is stale by now: the status keeps the real reason
    assert "image refused" in probe.statuses[-1].message, probe.statuses[-1].message
    assert _diagnosed(probe, "image refused")
    probe.send_image(encoding="mono8")
    assert _blocked_with(probe, "image refused: encoding 'mono8' not supported", 5)
    _act_again(probe)

    probe.joint_names = probe.joint_names[:2] + probe.joint_names[3:]  # joint3 missing
    try:
        probe.wait(0.3)
        probe.statuses.clear()
        for _ in range(3):
            probe.send_image()
            probe.wait(0.3)
        assert _blocked_with(probe, "joint state refused: name: joint_states lacks ['joint3']",
                             5), [s.message for s in probe.statuses][-3:]
        assert not any("skew" in s.message for s in probe.statuses)
    finally:
        probe.joint_names = list(probe.robot.joint_names)
    _act_again(probe)
