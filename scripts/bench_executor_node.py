"""executor_node command-period jitter at 100 Hz, through ROS (a real node in its own process).

A fake arm publishes /joint_states at 100 Hz and a chunk arrives every 100 ms; the script
records (a) the node's own command periods, as it reports them on /diagnostics, and (b) the
inter-arrival times of the JointTrajectory commands at a subscriber. Prints p50/p99.

    python scripts/bench_executor_node.py [--seconds 30]
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory

from roboalign_ros.conversions import numpy_to_action_chunk
from roboalign_ros.msg import ActionChunk
from roboalign_ros.robot import load_robot_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "roboalign_ros.nodes.executor_node"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=os.environ.copy())
    rclpy.init()
    node = Node("bench_executor")
    robot = load_robot_config("sim_arm")
    arrivals, reported, stops = [], {}, []

    def on_command(msg):
        arrivals.append(time.perf_counter())
        if not msg.points:  # the e-stop's stop (empty trajectory = hold)
            stops.append(time.perf_counter())

    node.create_subscription(JointTrajectory, robot.trajectory_topic, on_command, 100)

    def on_diag(msg):
        for status in msg.status:
            if status.name.startswith("executor_node"):
                reported.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    js = node.create_publisher(JointState, "/joint_states", 10)
    chunks = node.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)
    q = robot.home.copy()
    names = [*robot.arm_joints, "gripper"]

    def publish_state():
        msg = JointState(name=list(robot.joint_names), position=[*map(float, q), 0.04, 0.04])
        msg.header.stamp = node.get_clock().now().to_msg()
        js.publish(msg)

    def publish_chunk():
        now = node.get_clock().now().nanoseconds * 1e-9
        t = now + 0.1 * np.arange(16)[:, None]
        target = robot.home + 0.2 * np.sin(0.5 * t) * np.ones(6)
        actions = np.hstack([target, np.ones((16, 1))]).astype(np.float32)
        chunks.publish(numpy_to_action_chunk(actions, stamp=now, dt=0.1,
                                             action_space="joint_position",
                                             dimension_names=names))

    node.create_timer(0.01, publish_state)
    node.create_timer(0.1, publish_chunk)
    warmup = time.monotonic() + 5.0
    end = warmup + args.seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.01)
        if time.monotonic() < warmup:
            arrivals.clear()
    periods = np.diff(arrivals) * 1e3
    # e-stop, end to end: publish -> the stop command arrives back at this subscriber
    estop = node.create_publisher(Bool, "/roboalign/estop", 10)
    while estop.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.01)
    sent = time.perf_counter()
    estop.publish(Bool(data=True))
    while not stops and time.perf_counter() - sent < 5:
        rclpy.spin_once(node, timeout_sec=0.001)
    proc.terminate()
    proc.wait(timeout=10)
    print(f"executor_node at 100 Hz for {args.seconds:.0f} s on {os.cpu_count()} cores:")
    print(f"  node-side command period      p50 {reported.get('period_p50_ms', '?')} ms, "
          f"p99 {reported.get('period_p99_ms', '?')} ms (last 500 ticks, /diagnostics)")
    print(f"  subscriber inter-arrival      p50 {np.percentile(periods, 50):.2f} ms, "
          f"p99 {np.percentile(periods, 99):.2f} ms, {len(arrivals)} commands")
    print(f"  jitter |period - 10 ms|       p50 {np.percentile(abs(periods - 10), 50):.2f} ms, "
          f"p99 {np.percentile(abs(periods - 10), 99):.2f} ms")
    if stops:
        latency = 1e3 * (stops[0] - sent)
        print(f"  e-stop round trip (publish -> stop command received) {latency:.1f} ms "
              "(includes DDS both ways)")
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
