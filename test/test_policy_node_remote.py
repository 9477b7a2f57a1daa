"""policy_node with ``inference: remote``: chunks from a ``roboalign serve`` server over DDS, and
a server killed mid-run: the status names it, nothing is published meanwhile (the executor's
watchdog holds the arm), and the node recovers by itself when the server is back."""

from __future__ import annotations

import socket

import pytest
from conftest import policy_node_process
from test_policy_node import probe  # noqa: F401 - the same probe, on a remote policy_node

pytestmark = pytest.mark.ros


class Served:
    """A tiny-policy server on a fixed port that a test can kill and start again."""

    def __init__(self):
        import torch

        from roboalign_ros.parameters import node_parameters
        from roboalign_ros.robot import load_robot_config
        from roboalign_ros.serving import load_checked

        torch.set_num_threads(1)
        p = node_parameters("policy_node", overrides={"model_path": "tiny", "device": "cpu"})
        self.policy = load_checked(p, load_robot_config("sim_arm"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{s.getsockname()[1]}"
        self.server = None
        self.start()

    def start(self):
        from roboalign_ros.serving.remote import PolicyServer

        self.server = PolicyServer(self.policy, self.address).start()

    def kill(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def served():
    s = Served()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def policy_process(tmp_path_factory, served):
    with policy_node_process(tmp_path_factory.mktemp("remote"), "reasoning_every:=0",
                             "inference:=remote", f"server:={served.address}",
                             "remote_timeout:=1.0") as log:
        yield log


def test_chunks_come_from_the_server_and_a_killed_server_is_named_then_recovered(
        probe, served):  # noqa: F811 - the imported fixture
    from roboalign_ros.msg import PolicyStatus

    probe.instruct("pick up the red cube")
    probe.stream_until(lambda: probe.chunks, 30)
    assert any(s.device == f"remote {served.address}" for s in probe.statuses)
    served.kill()
    named = f"server {served.address}"
    probe.statuses.clear()
    probe.stream_until(lambda: any(s.state == PolicyStatus.STATE_ERROR and named in s.message
                                   for s in probe.statuses), 20)
    probe.chunks.clear()   # from the first failure on, nothing goes out
    probe.stream_until(lambda: len([s for s in probe.statuses
                                    if s.state == PolicyStatus.STATE_ERROR]) >= 3, 20)
    assert not probe.chunks, "a chunk was published while the server was down"
    served.start()
    probe.stream_until(lambda: len(probe.chunks) >= 3, 30)   # reconnected by itself (backoff)
    assert any(s.state == PolicyStatus.STATE_ACTING for s in probe.statuses[-5:])
