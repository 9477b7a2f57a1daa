"""policy_node over DDS with the tiny model: stale images gated, chunks stamped with the
observation time, instruction changes taken, wrong encodings refused, oversized inputs refused
and named in the status and diagnostics."""

import time

import numpy as np
import pytest
from conftest import policy_node_process, spin_until, wait_matched

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
    subs = [
        p.node.create_subscription(ActionChunk, "/roboalign/action_chunk", p.chunks.append, 10),
        p.node.create_subscription(PolicyStatus, "/roboalign/status", p.statuses.append, 50),
        p.node.create_subscription(
            DiagnosticArray, "/diagnostics",
            lambda m: p.diagnostics.extend(s for s in m.status
                                           if s.name.startswith("policy_node")), 10)]
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

    def stream_until(predicate, timeout, period=0.2, **image):
        """A camera: an image every ``period`` s until ``predicate()``; returns their stamps.
        (The policy takes the newest image and drops a chunk whose image got old during
        inference: one image is not sure to give one decision on a loaded machine.)"""
        stamps, deadline = [], time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            stamps.append(send_image(**image))
            spin_until(p.executor, predicate, period)
        assert predicate(), (f"not within {timeout} s of images",
                             [s.message for s in p.statuses[-3:]])
        return stamps

    def instruct(text):
        """Publish an instruction and wait until the node has it: its status names it (the
        worker sends one at least every 0.5 s)."""
        from roboalign_ros.serving import preview

        n = len(p.statuses)
        p.instruction_pub.publish(String(data=text))
        assert spin_until(p.executor, lambda: any(s.instruction == preview(text, 200)
                                                  for s in p.statuses[n:]), 10), text

    p.now, p.send_image, p.wait = now, send_image, wait
    p.stream_until, p.instruct = stream_until, instruct
    assert spin_until(p.executor, lambda: any(s.lifecycle_state == "active"
                                              for s in p.statuses), 120), "never activated"
    # the instruction and single images are sent once: wait for matching, both ways
    wait_matched(p.executor, p.image_pub, p.instruction_pub, js_pub, *subs)
    yield p
    p.executor.shutdown()
    p.node.destroy_node()


def test_gating_stamping_and_instruction_change(probe):

    from roboalign_ros.conversions import action_chunk_to_numpy
    from roboalign_ros.msg import PolicyStatus

    # no instruction yet: blocked, says why
    probe.stream_until(lambda: any("no instruction" in s.message for s in probe.statuses), 20)
    probe.instruct("pick up the red cube")
    # stale images (2 s old) are refused, with the reason
    probe.statuses.clear()
    probe.stream_until(lambda: any(
        s.state == PolicyStatus.STATE_BLOCKED and "old > max_image_age" in s.message
        for s in probe.statuses), 20, age=2.0)
    assert not probe.chunks
    # fresh images: chunks stamped with the image's time
    stamps = probe.stream_until(lambda: probe.chunks, 30)
    chunk = action_chunk_to_numpy(probe.chunks[-1])
    assert any(abs(chunk.stamp - s) < 1e-6 for s in stamps), "chunk not stamped with its image"
    assert chunk.actions.shape == (10, 7) and chunk.instruction == "pick up the red cube"
    assert list(chunk.dimension_names) == [*probe.robot.arm_joints, "gripper"]
    # instruction change mid-run (a chunk inferred across the change is dropped by the node)
    new = "push the green block to the left"
    probe.instruct(new)
    probe.chunks.clear()
    probe.stream_until(lambda: any(c.instruction == new for c in probe.chunks), 30)
    assert probe.chunks[-1].instruction == new


def test_wrong_encoding_is_refused_with_a_clear_log(probe):
    probe.stream_until(lambda: "image refused: encoding 'mono8' not supported (the policy needs "
                       "rgb8/bgr8/rgba8)" in probe.log.read_text(), 10, encoding="mono8")


def _blocked(probe, needle):
    """Whether a BLOCKED status whose message contains ``needle`` has arrived."""
    from roboalign_ros.msg import PolicyStatus

    return any(s.state == PolicyStatus.STATE_BLOCKED and needle in s.message
               for s in probe.statuses)


def _blocked_with(probe, needle, timeout=10):
    """Wait for a BLOCKED status whose message contains ``needle``."""
    return spin_until(probe.executor, lambda: _blocked(probe, needle), timeout)


def _diagnosed(probe, needle, timeout=5):
    """Wait for a WARN/ERROR policy diagnostic whose message contains ``needle``."""
    from diagnostic_msgs.msg import DiagnosticStatus

    return spin_until(probe.executor, lambda: any(
        s.level in (DiagnosticStatus.WARN, DiagnosticStatus.ERROR) and needle in s.message
        for s in probe.diagnostics), timeout)


def _act_again(probe, instruction="pick up the red cube"):
    probe.instruct(instruction)
    probe.chunks.clear()
    probe.stream_until(lambda: any(c.instruction == instruction for c in probe.chunks), 30)
    assert probe.chunks[-1].instruction == instruction


def _chunks_since(probe, stamp):
    """Chunks for images stamped at or after ``stamp`` (a chunk carries its image's stamp;
    one for an earlier image may still be arriving)."""
    from roboalign_ros.conversions import stamp_to_seconds

    return [c for c in probe.chunks if stamp_to_seconds(c.header.stamp) >= stamp]


def test_oversized_instruction_is_refused_at_once_and_named(probe):
    """Issue 10 item 5: a huge instruction stalled the policy for minutes, status silent."""
    import random
    import string

    from std_msgs.msg import String

    _act_again(probe)
    probe.statuses.clear()
    probe.diagnostics.clear()
    huge = "pick up the red cube " * 1000  # 21000 characters
    refused_at = probe.now()
    probe.instruction_pub.publish(String(data=huge))
    t0 = time.monotonic()
    assert _blocked_with(probe, "instruction refused: 21000 characters > max_instruction_chars "
                                "1000", 5), [s.message for s in probe.statuses][-3:]
    assert time.monotonic() - t0 < 3.0
    for _ in range(3):  # fresh images do not make it act on the refused instruction
        probe.send_image()
        probe.wait(0.2)
    assert not _chunks_since(probe, refused_at), "a chunk was published for a refused instruction"
    assert _diagnosed(probe, "instruction refused")
    status = probe.statuses[-1]
    assert len(status.instruction) < 300, "the status echoes the whole refused instruction"
    # short enough in characters, too long in the policy's tokens
    rng = random.Random(0)
    noise = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(900))
    probe.instruction_pub.publish(String(data=noise))
    # images until it says so: one image decided before the instruction arrived (another
    # topic) leaves only 'image old' to report, which outranks the token count
    probe.stream_until(lambda: _blocked(probe, "tokens > max_instruction_tokens 256"), 10)
    assert not _chunks_since(probe, refused_at)
    _act_again(probe)  # a valid instruction is taken at once


def test_refused_images_and_joint_states_are_named_not_their_symptoms(probe):
    """Issue 10 items 5 and 8: an oversized image or bad encoding showed as 'image 1.06 s
    old', bad joint states as 'skew'."""
    _act_again(probe)
    probe.statuses.clear()
    probe.diagnostics.clear()
    probe.stream_until(lambda: _blocked(probe, "image refused: 320x240 exceeds max_image_width "
                                               "x max_image_height 200x150"),
                       10, size=(240, 320))  # fixture bounds: 200x150
    probe.wait(1.0)  # the last good image is stale by now: the status keeps the real reason
    n = len(probe.statuses)
    assert spin_until(probe.executor, lambda: len(probe.statuses) > n, 5)  # a status since
    assert "image refused" in probe.statuses[-1].message, probe.statuses[-1].message
    assert _diagnosed(probe, "image refused")
    probe.stream_until(lambda: _blocked(probe, "image refused: encoding 'mono8' not supported"),
                       10, encoding="mono8")
    _act_again(probe)

    probe.statuses.clear()
    probe.joint_names = probe.joint_names[:2] + probe.joint_names[3:]  # joint3 missing
    try:
        probe.stream_until(lambda: _blocked(probe, "joint state refused: name: joint_states "
                                                   "lacks ['joint3']"), 10)
        assert not any("skew" in s.message for s in probe.statuses)
    finally:
        probe.joint_names = list(probe.robot.joint_names)
    _act_again(probe)
