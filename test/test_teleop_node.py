"""teleop_node over DDS: Joy in, TwistStamped / gripper out; keyboard mode in a pty."""

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import spin_until, wait_matched

pytestmark = pytest.mark.ros

CONFIG = Path(__file__).resolve().parents[1] / "config" / "teleop.yaml"
LAUNCH = [sys.executable, "-c",
          "from roboalign_ros.nodes.teleop_node import main; raise SystemExit(main())"]


def xbox_joy(ly=0.0, lb=0, a=0):
    from sensor_msgs.msg import Joy

    buttons = [0] * 11
    buttons[4], buttons[0] = lb, a
    return Joy(axes=[0.0, ly, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0], buttons=buttons)


def test_joy_to_twist_deadman_stale_and_gripper(rclpy_context):
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Joy
    from std_msgs.msg import Float64MultiArray

    from roboalign_ros.nodes.teleop_node import TeleopNode

    teleop = TeleopNode(context=rclpy_context, parameter_overrides=[
        Parameter("profile", value="xbox"), Parameter("stale_timeout", value=0.3),
        Parameter("max_linear", value=0.4), Parameter("speed_scale", value=0.5)])
    tester = Node("teleop_tester", context=rclpy_context)
    joy_pub = tester.create_publisher(Joy, "/joy", 10)
    twists, grippers = [], []
    twist_sub = tester.create_subscription(TwistStamped, "/servo_node/delta_twist_cmds",
                                           twists.append, 100)
    gripper_sub = tester.create_subscription(Float64MultiArray, "/gripper_controller/commands",
                                             grippers.append, 10)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(teleop)
    executor.add_node(tester)

    def pump(msg, seconds=0.0, until=None, timeout=5.0):
        """Publish ``msg`` at 20 Hz while spinning, for ``seconds`` and (given ``until``) until
        ``until()`` holds, at most ``timeout`` s; return whether it held."""
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= seconds and (until is None or until()):
                return True
            if elapsed > max(seconds, timeout):
                return False
            msg.header.stamp = tester.get_clock().now().to_msg()
            joy_pub.publish(msg)
            spin_until(executor, lambda: False, 0.05)

    try:
        # the zero twist on release and the gripper command are sent once: match both ways
        wait_matched(executor, joy_pub, twist_sub, gripper_sub)
        pump(xbox_joy(ly=1.0), 0.3)  # stick without the dead-man: nothing
        assert twists == []
        assert pump(xbox_joy(ly=1.0, lb=1), until=lambda: len(twists) >= 5), len(twists)
        moving = list(twists)
        last = moving[-1]
        assert last.header.frame_id == "base_link"
        assert last.twist.linear.x == pytest.approx(0.2)  # 0.4 m/s * 0.5
        assert (last.twist.linear.y, last.twist.angular.z) == (0.0, 0.0)

        # released: exactly one zero twist, then silence (at least a 0.3 s window)
        assert pump(xbox_joy(ly=1.0), 0.3, until=lambda: any(
            t.twist.linear.x == 0.0 for t in twists[len(moving):]))
        after = twists[len(moving):]
        assert len(after) >= 1 and after[-1].twist.linear.x == 0.0
        assert sum(t.twist.linear.x == 0.0 for t in after) == 1
        assert all(t.twist.linear.x in (0.0, pytest.approx(0.2)) for t in after)

        count = len(twists)
        assert pump(xbox_joy(ly=1.0, lb=1), until=lambda: len(twists) > count
                    and twists[-1].twist.linear.x == pytest.approx(0.2))
        count = len(twists)
        # no more Joy: stale after 0.3 s, one zero twist, then silence (a 0.3 s window)
        assert spin_until(executor, lambda: any(t.twist.linear.x == 0.0
                                                for t in twists[count:]), 5.0)
        spin_until(executor, lambda: False, 0.3)
        stale = twists[count:]
        assert stale and stale[-1].twist.linear.x == 0.0
        assert sum(t.twist.linear.x == 0.0 for t in stale) == 1

        pump(xbox_joy(lb=1), 0.1)
        pump(xbox_joy(lb=1, a=1), 0.1)  # A with the dead-man: toggle (open -> closed)
        assert spin_until(executor, lambda: grippers, 2.0)
        assert list(grippers[-1].data) == [0.0] and len(grippers) == 1
    finally:
        executor.shutdown()
        teleop.close()
        teleop.destroy_node()
        tester.destroy_node()


def test_keyboard_mode_without_a_tty_fails_clearly():
    proc = subprocess.run(LAUNCH + ["--keyboard"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30, env=os.environ.copy(),
                          cwd=Path(__file__).parent)
    assert proc.returncode == 1
    assert "stdin is not a TTY" in proc.stderr and "Traceback" not in proc.stderr


def test_keyboard_mode_in_a_terminal(rclpy_context):
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    master, slave = pty.openpty()
    proc = subprocess.Popen(LAUNCH + ["--keyboard", "--ros-args", "--params-file", str(CONFIG),
                                      "-p", "key_hold:=0.3",
                                      "-p", "speed_scale:=1.0", "-p", "max_angular:=0.5"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ.copy(), cwd=Path(__file__).parent)
    node = Node("keyboard_tester", context=rclpy_context)
    twists = []
    sub = node.create_subscription(TwistStamped, "/servo_node/delta_twist_cmds",
                                   twists.append, 100)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        wait_matched(executor, sub)
        # a held key repeats (the terminal's autorepeat, every 0.1 s here) until the arm moves:
        # a press read before the node's twist publisher has matched this test's subscription
        # would move it unseen. key_hold (0.3 s) bridges the repeats.
        deadline = time.monotonic() + 15.0
        while not any(t.twist.angular.z < 0 for t in twists) and time.monotonic() < deadline:
            os.write(master, b"l")  # yaw right
            spin_until(executor, lambda: any(t.twist.angular.z < 0 for t in twists), 0.1)
        assert any(t.twist.angular.z < 0 for t in twists), "no twist for a held 'l'"
        assert min(t.twist.angular.z for t in twists) == pytest.approx(-0.5)
        assert spin_until(executor, lambda: twists[-1].twist.angular.z == 0.0, 3.0)
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
        executor.shutdown()
        node.destroy_node()
