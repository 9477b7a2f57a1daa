"""teleop_node: Joy (SpaceMouse / gamepad) or keyboard -> MoveIt Servo twist + gripper command.

Subscribes ``joy_topic`` (sensor_msgs/Joy) in ``mode: joy``; reads the terminal in
``mode: keyboard`` (or with ``--keyboard``). Publishes geometry_msgs/TwistStamped in
``frame_id`` on ``twist_topic`` at ``publish_rate`` while the dead-man is held and the Joy is
fresh (one zero twist when that ends), and std_msgs/Float64MultiArray [opening in 0..1] on
``gripper_topic`` when the gripper command changes. The device mapping is the profile named by
``profile``: ``<profile>.axes`` / ``.scales`` / ``.*_button`` (see config/teleop.yaml). All the
logic is in :mod:`roboalign_ros.teleop`.
"""

from __future__ import annotations

import sys
import threading

from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Joy
from std_msgs.msg import Float64MultiArray

from roboalign_ros.conversions import stamp_to_seconds
from roboalign_ros.nodes.common import COMMAND_QOS, declare_parameters, now_seconds, run_node
from roboalign_ros.robot import load_robot_config
from roboalign_ros.teleop import (
    BUILTIN_PROFILES,
    BUTTON_FIELDS,
    KEYBOARD_HELP,
    JoyMappingError,
    JoyProfile,
    KeyboardReader,
    TeleopConfig,
    TeleopCore,
)

CONFIG_FIELDS = ("max_linear", "max_angular", "deadzone", "speed_scale", "speed_step",
                 "min_speed_scale", "max_speed_scale", "stale_timeout", "key_hold",
                 "gripper_initial")


def profile_parameters(profile: JoyProfile) -> dict[str, object]:
    """Return the ``<name>.*`` parameters describing a profile (defaults from ``profile``)."""
    values = {f"{profile.name}.axes": list(profile.axes),
              f"{profile.name}.scales": list(profile.scales)}
    values.update({f"{profile.name}.{b}": getattr(profile, b) for b in BUTTON_FIELDS})
    return values


class TeleopNode(Node):
    """Wires TeleopCore to Joy / the keyboard, a publish timer and the command topics."""

    def __init__(self, keyboard: bool = False, stdin=None, **node_kwargs):
        super().__init__("teleop_node", **node_kwargs)
        p = self.p = declare_parameters(self, "teleop_node")
        self.robot = load_robot_config(p["robot"])
        mode = "keyboard" if keyboard else p["mode"]
        # Every built-in profile is declared (so one file can hold them all) plus the chosen one.
        names = list(BUILTIN_PROFILES) + [p["profile"]] * (p["profile"] not in BUILTIN_PROFILES)
        profiles = {}
        for name in names:
            builtin = BUILTIN_PROFILES.get(name, JoyProfile(name, axes=(-1,) * 6))
            v = {name: self.declare_parameter(name, default).value
                 for name, default in profile_parameters(builtin).items()}
            profiles[name] = JoyProfile(
                name, axes=tuple(v[f"{name}.axes"]), scales=tuple(v[f"{name}.scales"]),
                **{b: v[f"{name}.{b}"] for b in BUTTON_FIELDS})
        profile = profiles[p["profile"]]
        if profile.name not in BUILTIN_PROFILES and all(a < 0 for a in profile.axes):
            raise ValueError(f"profile: {profile.name!r} is not built in "
                             f"({sorted(BUILTIN_PROFILES)}) and {profile.name}.axes is not set")
        config = TeleopConfig(**{k: p[k] for k in CONFIG_FIELDS})
        self.core = TeleopCore(config, profile)
        self.mode, self.finished = mode, False
        self._lock = threading.Lock()  # the keyboard thread and the executor share the core
        self._mapping_error = ""

        self.twist_pub = self.create_publisher(TwistStamped, p["twist_topic"], COMMAND_QOS)
        self.gripper_pub = self.create_publisher(Float64MultiArray, p["gripper_topic"],
                                                 COMMAND_QOS)
        self.create_timer(1.0 / p["publish_rate"], self._on_timer)
        self.keyboard = None
        if mode == "joy":
            self.create_subscription(Joy, p["joy_topic"], self._on_joy, 10)
            self.get_logger().info(
                f"teleop: profile {profile.name} on {p['joy_topic']} -> {p['twist_topic']}, "
                f"hold button {profile.deadman_button} to move")
            if profile.deadman_button < 0:
                self.get_logger().warning(
                    f"{profile.name}.deadman_button is -1: any fresh non-zero Joy moves the arm")
        else:
            self.keyboard = KeyboardReader(self._on_key, stdin)  # NotATerminalError: no TTY
            print(KEYBOARD_HELP, file=sys.stderr, flush=True)
            self.keyboard.start()

    def _on_joy(self, msg: Joy) -> None:
        now, stamp = now_seconds(self), stamp_to_seconds(msg.header.stamp)
        with self._lock:
            try:
                fresh = self.core.on_joy(msg.axes, msg.buttons, now, stamp)
            except JoyMappingError as exc:
                if str(exc) != self._mapping_error:  # log each distinct problem once
                    self._mapping_error = str(exc)
                    self.get_logger().error(f"ignoring Joy messages: {exc}")
                return
        if not fresh:
            self.get_logger().warning(
                f"ignoring Joy stamped {now - stamp:.2f} s ago "
                f"(> stale_timeout {self.p['stale_timeout']} s): delayed Joy or unsynchronised "
                "clocks between the joystick and this machine", throttle_duration_sec=5.0)

    def _on_key(self, key: str) -> None:
        with self._lock:
            keep_going = self.core.on_key(key, now_seconds(self))
            speed = self.core.speed_scale
        if not keep_going:
            self.finished = True
        elif key in "+=-_":
            print(f"\rspeed scale {speed:.1f}   ", end="", file=sys.stderr, flush=True)

    def _on_timer(self) -> None:
        with self._lock:
            out = self.core.step(now_seconds(self))
        if out.twist is not None:
            self._publish_twist(out.twist)
        if out.gripper is not None:
            # forward_command_controller takes the finger joint's position, not an opening
            self.gripper_pub.publish(Float64MultiArray(
                data=[self.robot.gripper_to_joint(out.gripper)]))

    def _publish_twist(self, twist) -> None:
        msg = TwistStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.p["frame_id"]
        t = msg.twist
        t.linear.x, t.linear.y, t.linear.z = (float(v) for v in twist[:3])
        t.angular.x, t.angular.y, t.angular.z = (float(v) for v in twist[3:])
        self.twist_pub.publish(msg)

    def close(self) -> None:
        """Stop the keyboard reader; send a last zero twist if the arm was being moved."""
        if self.keyboard is not None:
            self.keyboard.stop()
        with self._lock:
            zero = self.core.stop()
        if zero is not None and self.context.ok():
            self._publish_twist(zero)


def main(args=None) -> int:
    """Entry point of ``ros2 run roboalign_ros teleop_node [--keyboard]``."""
    from rclpy.utilities import remove_ros_args

    argv = sys.argv if args is None else args
    keyboard = "--keyboard" in remove_ros_args(argv)[1:]
    return run_node(lambda: TeleopNode(keyboard=keyboard), argv)


if __name__ == "__main__":
    raise SystemExit(main())
