"""policy_node over DDS with reasoning on its own thread (reasoning_mode async, the default):
chunks flow while it generates, each Reasoning is stamped with the observation it came from,
and each chunk names the reasoning it was conditioned on."""

import numpy as np
import pytest
from conftest import PolicyInputs, policy_node_process, spin_until, wait_matched

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def policy_process(tmp_path_factory):
    with policy_node_process(tmp_path_factory.mktemp("policy"),
                             "reasoning_every:=1", "reasoning_period:=0.0") as log:
        yield log


def test_chunks_flow_while_reasoning_runs_and_name_the_reasoning_they_used(
        rclpy_context, policy_process):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from roboalign_ros.conversions import stamp_to_seconds
    from roboalign_ros.msg import ActionChunk, PolicyStatus, Reasoning
    from roboalign_ros.robot import load_robot_config

    node = Node("reasoning_probe", context=rclpy_context)
    chunks, reasonings, statuses = [], [], []
    subs = [node.create_subscription(ActionChunk, "/roboalign/action_chunk", chunks.append, 50),
            node.create_subscription(Reasoning, "/roboalign/reasoning", reasonings.append, 50),
            node.create_subscription(PolicyStatus, "/roboalign/status", statuses.append, 50)]
    inputs = PolicyInputs(node, load_robot_config("sim_arm"),
                          np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8))
    sent = inputs.sent
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: any(
            s.lifecycle_state == "active" for s in statuses), 120), "never activated"
        # the instruction is sent once, and reasoning 1 must arrive: match both ways first
        wait_matched(executor, *inputs.publishers, *subs, peers=("policy_node",))
        inputs.instruct("pick up the red cube")
        node.create_timer(0.05, inputs.publish_image)  # a 20 Hz camera
        assert spin_until(executor, lambda: len(reasonings) >= 2 and len(chunks) >= 10, 60)
        # a chunk may overtake the Reasoning it names (two topics): stop once each has come
        assert spin_until(executor, lambda: {c.reasoning_sequence for c in chunks} - {0}
                          <= {r.sequence for r in reasonings}, 10)
    finally:
        executor.shutdown()
        node.destroy_node()
    # every reasoning is stamped with the time of an image it was generated from
    for r in reasonings:
        assert any(abs(stamp_to_seconds(r.header.stamp) - s) < 1e-6 for s in sent)
        assert r.instruction == "pick up the red cube"
    assert [r.sequence for r in reasonings] == list(range(1, len(reasonings) + 1))
    # chunks name a published reasoning (0 only before the first one finished)
    published = {r.sequence for r in reasonings}
    used = [c.reasoning_sequence for c in chunks]
    assert set(used) - {0} <= published and max(used) >= 1
    assert used == sorted(used)
    # the action path did not wait for generation: more chunks than reasonings
    assert len(chunks) > len(reasonings)
    # the text rides with the first chunk conditioned on it, not with every chunk
    firsts = [c for i, c in enumerate(chunks) if c.reasoning_sequence and
              (i == 0 or chunks[i - 1].reasoning_sequence != c.reasoning_sequence)]
    assert firsts and all(c.reasoning == next(r.text for r in reasonings
                                              if r.sequence == c.reasoning_sequence)
                          for c in firsts)
