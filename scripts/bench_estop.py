"""E-stop reaction of executor_node for a reliable and for a best-effort publisher.

executor_node runs in its own process and streams a moving chunk to a fake arm; this script
engages the e-stop ``--trials`` times per publisher kind (releasing and resuming in between)
and times each from ``publish`` to the first stop command (an empty JointTrajectory) arriving
back at its subscriber: DDS both ways plus the node's reaction. Prints p50 / p90 / max.

    python scripts/bench_estop.py [--trials 20]
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory

from roboalign_ros.conversions import numpy_to_action_chunk
from roboalign_ros.msg import ActionChunk
from roboalign_ros.robot import load_robot_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "roboalign_ros.nodes.executor_node"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=os.environ.copy())
    rclpy.init()
    node = Node("bench_estop")
    robot = load_robot_config("sim_arm")
    events = {"stop": None, "moving": 0}
    q = robot.home.copy()

    def on_command(msg):
        if not msg.points:
            if events["stop"] is None:
                events["stop"] = time.perf_counter()
        else:
            events["moving"] += 1
            q[:] = msg.points[0].positions  # a perfectly tracking arm

    node.create_subscription(JointTrajectory, robot.trajectory_topic, on_command, 100)
    js = node.create_publisher(JointState, "/joint_states", 10)
    chunks = node.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)
    publishers = {kind: node.create_publisher(Bool, "/roboalign/estop",
                                              QoSProfile(depth=1, reliability=policy))
                  for kind, policy in (("reliable", ReliabilityPolicy.RELIABLE),
                                       ("best_effort", ReliabilityPolicy.BEST_EFFORT))}
    names = [*robot.arm_joints, "gripper"]

    def publish_state():
        msg = JointState(name=list(robot.joint_names), position=[*map(float, q), 0.04, 0.04])
        msg.header.stamp = node.get_clock().now().to_msg()
        js.publish(msg)

    def publish_chunk():
        now = node.get_clock().now().nanoseconds * 1e-9
        t = now + 0.1 * np.arange(16)[:, None]
        target = robot.home + 0.3 * np.sin(t) * np.ones(6)
        chunks.publish(numpy_to_action_chunk(
            np.hstack([target, np.ones((16, 1))]).astype(np.float32), stamp=now, dt=0.1,
            action_space="joint_position", dimension_names=names))

    node.create_timer(0.01, publish_state)
    node.create_timer(0.1, publish_chunk)

    def spin_for(seconds, until=lambda: False):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            rclpy.spin_once(node, timeout_sec=0.001)

    spin_for(30, lambda: all(p.get_subscription_count() for p in publishers.values())
             and events["moving"] > 20)
    results = {}
    for kind, pub in publishers.items():
        latencies = []
        for _ in range(args.trials):
            events["moving"] = 0
            spin_for(3, lambda: events["moving"] > 10)  # streaming again
            events["stop"] = None
            sent = time.perf_counter()
            pub.publish(Bool(data=True))
            spin_for(2, lambda: events["stop"] is not None)
            if events["stop"] is not None:
                latencies.append(1e3 * (events["stop"] - sent))
            spin_for(0.1)
            pub.publish(Bool(data=False))
            spin_for(0.3)  # chunks observed after the release resume the stream
        results[kind] = latencies
    proc.terminate()
    proc.wait(timeout=10)
    print(f"e-stop reaction, publish -> stop command received (DDS both ways), "
          f"{args.trials} trials each, {os.cpu_count()} cores:")
    for kind, lat in results.items():
        lat = np.asarray(lat)
        heard = f"{len(lat)}/{args.trials} heard"
        if len(lat):
            print(f"  {kind:12s} p50 {np.percentile(lat, 50):.1f} ms, p90 "
                  f"{np.percentile(lat, 90):.1f} ms, max {lat.max():.1f} ms ({heard})")
        else:
            print(f"  {kind:12s} never heard ({heard})")
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
