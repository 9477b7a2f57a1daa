"""MoveIt Servo output: base-frame twists for MoveIt Servo (or the sim's Servo stand-in)."""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import TwistStamped

from roboalign_ros.nodes.common import COMMAND_QOS


class ServoBackend:
    """Streams base-frame twists to MoveIt Servo (or the sim's Servo stand-in)."""

    name = "servo"

    def __init__(self, node, robot, lead_time: float = 0.0):
        self.frame_id = robot.base_frame
        self._node = node
        self._pub = node.create_publisher(TwistStamped, robot.servo_topic, COMMAND_QOS)

    def send(self, command) -> None:
        """Publish ``command.arm`` as [vx, vy, vz, wx, wy, wz] (zeros when holding)."""
        self._publish(command.arm if command.kind == "track" else np.zeros(6))

    def stop(self) -> None:
        """A zero twist."""
        self._publish(np.zeros(6))

    def _publish(self, twist) -> None:
        msg = TwistStamped()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z,
         msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = map(float, twist)
        self._pub.publish(msg)
