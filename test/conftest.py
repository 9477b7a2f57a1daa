"""Shared fixtures: an isolated ROS 2 domain per test session and an rclpy context per test."""

import contextlib
import os
import random
import subprocess
import sys

import pytest

try:  # before anything imports pyrealsense2: its bundled Fast-DDS crashes the process at exit
    import rclpy  # noqa: F401  when loaded ahead of rclpy's
except ImportError:  # pip-only installs run the ROS-free tests
    pass

# Set before any rclpy import in this process or its children, so the DDS traffic of this run
# stays on loopback and cannot meet another run's (or another developer's) nodes.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Property tests draw the same examples on every run (``derandomize``), so a rare input cannot
# turn a run red by chance; ``HYPOTHESIS_PROFILE=explore`` draws new ones to hunt for them
# (the executor's box property was found that way: a stop that braked out of the box).
with contextlib.suppress(ImportError):
    from hypothesis import settings

    settings.register_profile("repeatable", derandomize=True, database=None)
    settings.register_profile("explore")
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture
def rclpy_context():
    """A fresh rclpy context, shut down after the test."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    context.try_shutdown()


def spin_until(executor, predicate, timeout: float) -> bool:
    """Spin ``executor`` until ``predicate()`` is true or ``timeout`` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def wait_matched(executor, *entities, timeout: float = 30.0, at_least: int = 1,
                 peers: tuple[str, ...] = ()) -> None:
    """wait_matched(executor, *entities, timeout=30.0, at_least=1, peers=()) -> None

    Spin ``executor`` until every entity is matched with its peers, both ways:
    a Publisher has >= ``at_least`` matched subscriptions (``get_subscription_count``),
    a Subscription >= ``at_least`` matched publishers (``get_publisher_count``), a service
    Client / action ActionClient sees its server (``service_is_ready`` / ``server_is_ready``).
    Raises AssertionError naming each topic or service still unmatched after ``timeout``.

    Volatile topics drop what is sent before discovery completes, so every DDS test calls this
    before it publishes to a node (its publishers) and before it triggers a one-shot message
    from a node (its subscriptions), instead of waiting on the effect with a longer timeout.

    Matching is seen from this process's side only. For our publishers that is the side that
    counts: a reliable writer resends to a reader it has matched until that reader has it. For
    our subscriptions it is the node's writer that must have matched our reader. ``peers``
    (node names, e.g. ``("policy_node",)``) makes that sure too: a parameter-service round trip
    with each, from a client made after our subscriptions. The node answers only once it has
    matched the client's reply reader (rmw_fastrtps waits for that), and it learns this
    process's readers in the order they were made, so by then it has matched ours as well.
    """
    import time

    deadline = time.monotonic() + timeout

    def unmatched():
        missing = []
        for e in entities:
            if hasattr(e, "get_subscription_count"):  # Publisher (incl. lifecycle)
                n, what = e.get_subscription_count(), "subscription(s)"
            elif hasattr(e, "get_publisher_count"):  # Subscription
                n, what = e.get_publisher_count(), "publisher(s)"
            elif hasattr(e, "service_is_ready"):  # service Client
                if not e.service_is_ready():
                    missing.append(f"service {e.srv_name}: no server")
                continue
            elif hasattr(e, "server_is_ready"):  # action ActionClient
                if not e.server_is_ready():
                    missing.append(f"action {e._action_name}: no server")
                continue
            else:
                raise TypeError(f"wait_matched: cannot wait on {e!r}")
            if n < at_least:
                missing.append(f"{type(e).__name__} {e.topic_name}: {n} matched {what}, "
                               f"want >= {at_least}")
        return missing

    if not spin_until(executor, lambda: not unmatched(), timeout):
        raise AssertionError(f"not matched after {timeout:g} s: " + "; ".join(unmatched()))
    for peer in peers:
        _round_trip(executor, peer, deadline)


def _round_trip(executor, peer: str, deadline: float) -> None:
    """One answered GetParameters call to node ``peer`` (see wait_matched)."""
    import time

    from rcl_interfaces.srv import GetParameters

    node = executor.get_nodes()[0]
    client = node.create_client(GetParameters, f"/{peer.strip('/')}/get_parameters")
    futures = []
    try:
        while time.monotonic() < deadline:
            if not client.service_is_ready():
                executor.spin_once(timeout_sec=0.05)
                continue
            # a server drops its answer when our reply reader is not matched yet: ask again
            futures.append(client.call_async(GetParameters.Request()))
            if spin_until(executor, lambda: any(f.done() for f in futures),
                          min(1.0, max(0.0, deadline - time.monotonic()))):
                return
        raise AssertionError(f"peer {peer}: no answer from /{peer.strip('/')}/get_parameters")
    finally:
        node.destroy_client(client)


class PolicyInputs:
    """What a policy_node needs over DDS, published from ``node``: joint states at 100 Hz
    (the robot at home), images on the robot's colour topic and instructions."""

    def __init__(self, node, robot, image):
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        self.node, self.robot, self.image, self.sent = node, robot, image, []
        self.image_pub = node.create_publisher(Image, robot.color_topic, 10)
        self.js_pub = node.create_publisher(JointState, "/joint_states", 10)
        self.instruction_pub = node.create_publisher(String, "/roboalign/instruction", 10)
        self.publishers = (self.image_pub, self.js_pub, self.instruction_pub)  # wait_matched
        self._String, self._JointState = String, JointState
        node.create_timer(0.01, self.publish_state)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def publish_state(self) -> None:
        msg = self._JointState(name=list(self.robot.joint_names),
                               position=[*map(float, self.robot.home), 0.02, 0.02])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.js_pub.publish(msg)

    def publish_image(self, frame_id: str = "") -> None:
        from roboalign_ros.conversions import numpy_to_image

        self.sent.append(self.now())
        self.image_pub.publish(numpy_to_image(self.image, "rgb8", stamp=self.sent[-1],
                                              frame_id=frame_id))

    def instruct(self, text: str) -> None:
        self.instruction_pub.publish(self._String(data=text))


@contextlib.contextmanager
def policy_node_process(log_dir, *params):
    """policy_node (tiny model, CPU, 1 thread) in its own process with ``-p`` ``params``;
    yields its log path and stops it afterwards."""
    log = log_dir / "policy_node.log"
    args = [sys.executable, "-m", "roboalign_ros.nodes.policy_node", "--ros-args",
            "-p", "model_path:=tiny", "-p", "device:=cpu", "-p", "torch_threads:=1"]
    for p in params:
        args += ["-p", p]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ.copy())
    try:
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=10)
