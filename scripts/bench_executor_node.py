"""executor_node command-period jitter at 100 Hz, through ROS (a real node in its own process).

A fake arm publishes /joint_states at 100 Hz and a chunk arrives every 100 ms; the script
records (a) the node's own command periods, as it reports them on /diagnostics, and (b) the
inter-arrival times of the JointTrajectory commands at a subscriber. Prints p50/p99. Then the
e-stop reaction for a reliable and for a best-effort publisher: ``--estop-trials`` engagements
each (released and resumed in between), from ``publish`` to the first stop command (an empty
JointTrajectory) back at this subscriber, DDS both ways plus the node's reaction.

    python scripts/bench_executor_node.py [--seconds 30] [--estop-trials 20]
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
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory

from roboalign_ros.conversions import numpy_to_action_chunk
from roboalign_ros.msg import ActionChunk
from roboalign_ros.robot import load_robot_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--estop-trials", type=int, default=20)
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "roboalign_ros.nodes.executor_node"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=os.environ.copy())
    rclpy.init()
    node = Node("bench_executor")
    robot = load_robot_config("sim_arm")
    arrivals, reported, stops = [], {}, []
    q = robot.home.copy()

    def on_command(msg):
        arrivals.append(time.perf_counter())
        if len(msg.points) == 2:  # the stop: from the reference, braking to rest
            stops.append(time.perf_counter())
        else:
            q[:] = msg.points[0].positions  # a perfectly tracking arm

    node.create_subscription(JointTrajectory, robot.trajectory_topic, on_command, 100)

    def on_diag(msg):
        for status in msg.status:
            if status.name.startswith("executor_node"):
                reported.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    js = node.create_publisher(JointState, "/joint_states", 10)
    chunks = node.create_publisher(ActionChunk, "/roboalign/action_chunk", 10)
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
    estop = estop_reactions(node, stops, arrivals, args.estop_trials)
    proc.terminate()
    proc.wait(timeout=10)
    print(f"executor_node at 100 Hz for {args.seconds:.0f} s on {os.cpu_count()} cores:")
    print(f"  node-side command period      p50 {reported.get('period_p50_ms', '?')} ms, "
          f"p99 {reported.get('period_p99_ms', '?')} ms (last 500 ticks, /diagnostics)")
    print(f"  subscriber inter-arrival      p50 {np.percentile(periods, 50):.2f} ms, "
          f"p99 {np.percentile(periods, 99):.2f} ms, {len(arrivals)} commands")
    print(f"  jitter |period - 10 ms|       p50 {np.percentile(abs(periods - 10), 50):.2f} ms, "
          f"p99 {np.percentile(abs(periods - 10), 99):.2f} ms")
    print(f"e-stop reaction, publish -> stop command received (DDS both ways), "
          f"{args.estop_trials} trials each:")
    for kind, lat in estop.items():
        lat = np.asarray(lat)
        heard = f"{len(lat)}/{args.estop_trials} heard"
        if len(lat):
            print(f"  {kind:12s} p50 {np.percentile(lat, 50):.1f} ms, p90 "
                  f"{np.percentile(lat, 90):.1f} ms, max {lat.max():.1f} ms ({heard})")
        else:
            print(f"  {kind:12s} never heard ({heard})")
    node.destroy_node()
    rclpy.shutdown()


def estop_reactions(node, stops, arrivals, trials):
    """E-stop reaction times (ms) per publisher reliability, while the arm streams."""
    publishers = {kind: node.create_publisher(Bool, "/roboalign/estop",
                                              QoSProfile(depth=1, reliability=policy))
                  for kind, policy in (("reliable", ReliabilityPolicy.RELIABLE),
                                       ("best_effort", ReliabilityPolicy.BEST_EFFORT))}

    def spin_for(seconds, until=lambda: False):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            rclpy.spin_once(node, timeout_sec=0.001)

    spin_for(10, lambda: all(p.get_subscription_count() for p in publishers.values()))
    results = {}
    for kind, pub in publishers.items():
        latencies = []
        for _ in range(trials):
            n = len(arrivals)
            spin_for(3, lambda n=n: len(arrivals) > n + 10)  # streaming again
            stops.clear()
            sent = time.perf_counter()
            pub.publish(Bool(data=True))
            spin_for(2, lambda: bool(stops))
            if stops:
                latencies.append(1e3 * (stops[0] - sent))
            spin_for(0.1)
            pub.publish(Bool(data=False))
            spin_for(0.3)  # chunks observed after the release resume the stream
        results[kind] = latencies
    return results


if __name__ == "__main__":
    main()
