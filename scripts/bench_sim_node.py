"""Rates sim_node actually publishes on this machine: /joint_states and the 640x480 camera.

Starts sim_node in its own process asking for the camera at --camera-rate (default 30 Hz),
subscribes like any client (reliable), and prints the measured rates after a warm-up.

    python scripts/bench_sim_node.py [--seconds 20] [--camera-rate 30] [--size 640 480]
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState

from roboalign_ros.nodes.common import sensor_qos_for


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--camera-rate", type=float, default=30.0)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480))
    args = parser.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-m", "roboalign_ros.nodes.sim_node", "--ros-args",
         "-p", f"camera.rate:={args.camera_rate}", "-p", f"camera.width:={args.size[0]}",
         "-p", f"camera.height:={args.size[1]}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=os.environ.copy())
    rclpy.init()
    node = Node("bench_sim_node")
    joints, color, depth = [], [], []
    qos = sensor_qos_for("reliable", 10)
    node.create_subscription(JointState, "/joint_states",
                             lambda m: joints.append(time.monotonic()), qos)
    node.create_subscription(Image, "/camera/camera/color/image_raw",
                             lambda m: color.append(time.monotonic()), qos)
    node.create_subscription(Image, "/camera/camera/aligned_depth_to_color/image_raw",
                             lambda m: depth.append(time.monotonic()), qos)
    deadline = time.monotonic() + 120
    while not color and time.monotonic() < deadline:  # startup (model build, GL context)
        rclpy.spin_once(node, timeout_sec=0.1)
    start = time.monotonic() + 2.0
    while time.monotonic() < start + args.seconds:
        rclpy.spin_once(node, timeout_sec=0.01)
    proc.terminate()
    proc.wait(timeout=20)

    def rate(stamps):
        s = np.asarray(stamps)
        s = s[(s >= start) & (s <= start + args.seconds)]
        return len(s) / args.seconds

    print(f"sim_node on {os.cpu_count()} cores, {args.seconds:.0f} s, camera asked "
          f"{args.size[0]}x{args.size[1]} @ {args.camera_rate:.0f} Hz:")
    print(f"  /joint_states published  {rate(joints):6.1f} Hz (control period 10 ms)")
    print(f"  color image_raw          {rate(color):6.1f} Hz")
    print(f"  aligned depth (16UC1)    {rate(depth):6.1f} Hz")
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
