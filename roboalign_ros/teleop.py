"""Teleoperation core (no rclpy): Joy axes/buttons or key presses -> Servo twist + gripper.

:class:`TeleopCore` holds the state a teleop device needs: the latest command, the dead-man
and staleness logic, the speed scale and the gripper opening. The node feeds it Joy messages
(:meth:`TeleopCore.on_joy`) or keys (:meth:`TeleopCore.on_key`) and calls
:meth:`TeleopCore.step` at the publish rate:

- a twist is returned only while the dead-man button is held and the last Joy arrived less
  than ``stale_timeout`` ago (a Joy whose header stamp is already older than that is ignored);
  keyboard: while a motion key was pressed within ``key_hold`` seconds;
- when that ends (release, stale Joy, bad message) one zero twist is returned, then nothing,
  so MoveIt Servo stops and then times out its command stream as usual;
- twists are in speed units (m/s, rad/s): each axis passes a deadzone (rescaled so the output
  is continuous), a per-axis gain/sign, a clip to [-1, 1], a clip of the linear and of the
  angular vector to unit length, then the max speed times the speed scale;
- gripper commands (opening in [0, 1], 1 = open) are returned once when they change; from a
  Joy they need the dead-man held, like motion.

Device mappings are :class:`JoyProfile` objects (``BUILTIN_PROFILES``: ``spacemouse`` for
spacenav_node's /spacenav/joy, ``xbox`` for joy_node with an Xbox pad); config/teleop.yaml
overrides them. :class:`KeyboardReader` reads single keys from a terminal in a thread.
"""

from __future__ import annotations

import math
import os
import select
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from roboalign_ros.parameters import default

TWIST_FIELDS = ("linear.x", "linear.y", "linear.z", "angular.x", "angular.y", "angular.z")
BUTTON_FIELDS = ("deadman_button", "gripper_toggle_button", "gripper_open_button",
                 "gripper_close_button", "speed_up_button", "speed_down_button")


class JoyMappingError(ValueError):
    """A profile does not fit a Joy message (axis / button index out of range)."""


class NotATerminalError(RuntimeError):
    """Keyboard mode was asked for but stdin is not an interactive terminal."""


@dataclass(frozen=True)
class JoyProfile:
    """Which Joy axis drives each twist component (-1 = none) and what the buttons do.

    ``axes``/``scales`` are in TWIST_FIELDS order; a scale is a gain and sign applied to the
    axis (after the deadzone). Buttons are indices into ``Joy.buttons``, -1 = not used;
    ``deadman_button: -1`` disables the dead-man (motion whenever a fresh Joy is non-zero).
    """

    name: str
    axes: tuple[int, ...]
    scales: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    deadman_button: int = -1
    gripper_toggle_button: int = -1
    gripper_open_button: int = -1
    gripper_close_button: int = -1
    speed_up_button: int = -1
    speed_down_button: int = -1

    def __post_init__(self):
        """Check shapes and indices; ValueError names the profile and field."""
        axes, scales = tuple(self.axes), tuple(self.scales)
        if len(axes) != 6:
            raise ValueError(f"{self.name}.axes: needs 6 indices ({', '.join(TWIST_FIELDS)}), "
                             f"got {len(axes)}")
        if len(scales) != 6:
            raise ValueError(f"{self.name}.scales: needs 6 values, got {len(scales)}")
        for i, index in enumerate(axes):
            if not _is_index(index):
                raise ValueError(f"{self.name}.axes[{i}] ({TWIST_FIELDS[i]}): {index!r} is not "
                                 "an axis index (an integer >= 0, or -1 for none)")
        for i, scale in enumerate(scales):
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                    or not math.isfinite(scale):
                raise ValueError(f"{self.name}.scales[{i}] ({TWIST_FIELDS[i]}): {scale!r} "
                                 "is not a finite number")
        for field_name in BUTTON_FIELDS:
            if not _is_index(getattr(self, field_name)):
                raise ValueError(f"{self.name}.{field_name}: {getattr(self, field_name)!r} is "
                                 "not a button index (an integer >= 0, or -1 for none)")
        object.__setattr__(self, "axes", tuple(int(a) for a in axes))
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))

    def check(self, num_axes: int, num_buttons: int) -> None:
        """Raise JoyMappingError when an index does not exist in a Joy of this size."""
        for i, index in enumerate(self.axes):
            if index >= num_axes:
                raise JoyMappingError(
                    f"{self.name}.axes[{i}] ({TWIST_FIELDS[i]}): axis {index} does not exist, "
                    f"the Joy message has {num_axes} axes (wrong profile for this device?)")
        for field_name in BUTTON_FIELDS:
            index = getattr(self, field_name)
            if index >= num_buttons:
                raise JoyMappingError(
                    f"{self.name}.{field_name}: button {index} does not exist, the Joy message "
                    f"has {num_buttons} buttons (wrong profile for this device?)")


def _is_index(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= -1


BUILTIN_PROFILES: dict[str, JoyProfile] = {
    # spacenav_node /spacenav/joy: axes x y z roll pitch yaw in the ROS convention; 2 buttons.
    "spacemouse": JoyProfile("spacemouse", axes=(0, 1, 2, 3, 4, 5), deadman_button=0,
                             gripper_toggle_button=1),
    # joy_node + Xbox pad (xpad): axes LX LY LT RX RY RT DPadX DPadY, left/up positive;
    # buttons A B X Y LB RB Back Start. Left stick: x/y, right stick Y: z, right stick X: yaw,
    # D-pad: roll/pitch. Hold LB to move; A toggles the gripper; Y/X speed up/down.
    "xbox": JoyProfile("xbox", axes=(1, 0, 4, 6, 7, 3), scales=(1.0, 1.0, 1.0, -1.0, 1.0, 1.0),
                       deadman_button=4, gripper_toggle_button=0, gripper_open_button=-1,
                       gripper_close_button=-1, speed_up_button=3, speed_down_button=2),
}


@dataclass(frozen=True)
class TeleopConfig:
    """Speeds, deadzone, speed scaling, timeouts."""

    max_linear: float = default("teleop_node", "max_linear")
    max_angular: float = default("teleop_node", "max_angular")  # rad/s
    deadzone: float = default("teleop_node", "deadzone")  # |axis| below this is 0
    speed_scale: float = default("teleop_node", "speed_scale")  # initial fraction of the max speeds
    speed_step: float = default("teleop_node", "speed_step")  # +/- per speed button press
    min_speed_scale: float = default("teleop_node", "min_speed_scale")
    max_speed_scale: float = default("teleop_node", "max_speed_scale")
    stale_timeout: float = default("teleop_node", "stale_timeout")
    key_hold: float = default("teleop_node", "key_hold")
    gripper_initial: float = default("teleop_node", "gripper_initial")

    def __post_init__(self):
        """Check ranges; ValueError names the field."""
        for name in ("max_linear", "max_angular", "speed_step", "stale_timeout", "key_hold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: {value!r} must be a finite number > 0")
        if not 0 <= self.deadzone < 1:
            raise ValueError(f"deadzone: {self.deadzone!r} must be in [0, 1)")
        if not 0 < self.min_speed_scale <= self.max_speed_scale <= 1:
            raise ValueError(f"min_speed_scale/max_speed_scale: need 0 < "
                             f"{self.min_speed_scale} <= {self.max_speed_scale} <= 1")
        if not self.min_speed_scale <= self.speed_scale <= self.max_speed_scale:
            raise ValueError(f"speed_scale: {self.speed_scale} is outside "
                             f"[{self.min_speed_scale}, {self.max_speed_scale}]")
        if not 0 <= self.gripper_initial <= 1:
            raise ValueError(f"gripper_initial: {self.gripper_initial} must be in [0, 1]")


def apply_deadzone(values, deadzone: float) -> np.ndarray:
    """Zero |v| < deadzone and rescale the rest so the output rises continuously from 0 to 1."""
    v = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    magnitude = np.maximum(np.abs(v) - deadzone, 0.0) / (1.0 - deadzone)
    return np.sign(v) * magnitude


def map_axes(profile: JoyProfile, axes: Sequence[float], deadzone: float) -> np.ndarray:
    """Joy axes -> normalised 6-vector command in [-1, 1] (before speeds and scaling)."""
    profile.check(len(axes), sys.maxsize)
    raw = np.array([axes[i] if i >= 0 else 0.0 for i in profile.axes], dtype=np.float64)
    raw[~np.isfinite(raw)] = 0.0
    return np.clip(apply_deadzone(raw, deadzone) * np.asarray(profile.scales), -1.0, 1.0)


# Keyboard bindings: key -> (twist component, direction).
KEY_BINDINGS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0),  # x forward / back
    "a": (1, 1.0), "d": (1, -1.0),  # y left / right
    "r": (2, 1.0), "f": (2, -1.0),  # z up / down
    "u": (3, 1.0), "o": (3, -1.0),  # roll
    "i": (4, 1.0), "k": (4, -1.0),  # pitch
    "j": (5, 1.0), "l": (5, -1.0),  # yaw left / right
}
KEYBOARD_HELP = """\
roboalign teleop (keyboard): hold a key to move, release to stop
  w/s: +x/-x   a/d: +y/-y   r/f: +z/-z      (base frame, m/s)
  u/o: roll    i/k: pitch   j/l: yaw        (rad/s)
  space: toggle gripper   +/-: speed up/down   q: quit"""


@dataclass(frozen=True)
class TeleopOutput:
    """What to publish this step: a twist (6-vector, speed units) and/or a gripper opening."""

    twist: np.ndarray | None
    gripper: float | None


class TeleopCore:
    """Dead-man, staleness, speed scale and gripper state around a JoyProfile (see module)."""

    def __init__(self, config: TeleopConfig, profile: JoyProfile | None = None):
        self.config = config
        self.profile = profile
        self.speed_scale = config.speed_scale
        self.gripper = config.gripper_initial
        self._gripper_pending: float | None = None
        self._joy_command = np.zeros(6)
        self._joy_time: float | None = None
        self._deadman = False
        self._buttons: tuple[int, ...] = ()
        self._key_command = np.zeros(6)
        self._key_expiry = np.full(6, -np.inf)
        self._publishing = False

    # -- inputs --------------------------------------------------------------------------

    def on_joy(self, axes: Sequence[float], buttons: Sequence[int], now: float,
               stamp: float | None = None) -> bool:
        """Take a Joy message received at ``now`` (s); return False if it was already stale.

        A message whose header ``stamp`` (s, None/0 = unknown) is older than ``stale_timeout``
        is ignored (counts as no message, so motion stops). JoyMappingError stops motion.
        """
        profile = self.profile
        if profile is None:
            raise JoyMappingError("profile: no Joy profile configured (keyboard-only core)")
        try:
            profile.check(len(axes), len(buttons))
        except JoyMappingError:
            self._deadman = False  # an unreadable device must not keep the arm moving
            raise
        if stamp and now - stamp > self.config.stale_timeout:
            return False
        buttons = tuple(int(b) for b in buttons)
        pressed = self._pressed(buttons)
        self._buttons = buttons
        self._joy_time = now
        held = profile.deadman_button < 0 or bool(buttons[profile.deadman_button])
        self._deadman = held
        self._joy_command = map_axes(profile, axes, self.config.deadzone)
        if pressed(profile.speed_up_button):
            self.change_speed(+1)
        if pressed(profile.speed_down_button):
            self.change_speed(-1)
        if held:
            if pressed(profile.gripper_toggle_button):
                self.toggle_gripper()
            if pressed(profile.gripper_open_button):
                self.set_gripper(1.0)
            if pressed(profile.gripper_close_button):
                self.set_gripper(0.0)
        return True

    def _pressed(self, buttons: tuple[int, ...]) -> Callable[[int], bool]:
        previous = self._buttons

        def pressed(index: int) -> bool:
            was = previous[index] if 0 <= index < len(previous) else 0
            return index >= 0 and bool(buttons[index]) and not was

        return pressed

    def on_key(self, key: str, now: float) -> bool:
        """Take one key press at ``now``; return False for the quit keys (q, Ctrl-C, Ctrl-D)."""
        if key in ("q", "Q", "\x03", "\x04"):
            return False
        binding = KEY_BINDINGS.get(key.lower())
        if binding is not None:
            index, direction = binding
            self._key_command[index] = direction
            self._key_expiry[index] = now + self.config.key_hold
        elif key == " ":
            self.toggle_gripper()
        elif key in ("+", "="):
            self.change_speed(+1)
        elif key in ("-", "_"):
            self.change_speed(-1)
        return True

    # -- state changes -------------------------------------------------------------------

    def change_speed(self, direction: int) -> float:
        """Step the speed scale up (+1) or down (-1) within its bounds; return it."""
        c = self.config
        scale = round(self.speed_scale + direction * c.speed_step, 6)
        self.speed_scale = min(max(scale, c.min_speed_scale), c.max_speed_scale)
        return self.speed_scale

    def toggle_gripper(self) -> None:
        """Open a closed(-ish) gripper, close an open(-ish) one."""
        self.set_gripper(0.0 if self.gripper > 0.5 else 1.0)

    def set_gripper(self, opening: float) -> None:
        """Command an opening in [0, 1] (published by the next step)."""
        self.gripper = float(min(max(opening, 0.0), 1.0))
        self._gripper_pending = self.gripper

    # -- output --------------------------------------------------------------------------

    def active_command(self, now: float) -> np.ndarray | None:
        """Return the normalised command that may move the arm now, or None (released / stale)."""
        c = self.config
        if self._deadman and self._joy_time is not None \
                and 0 <= now - self._joy_time <= c.stale_timeout:
            return self._joy_command
        live = self._key_expiry >= now
        if live.any():
            return np.where(live, self._key_command, 0.0)
        return None

    def twist(self, command: np.ndarray) -> np.ndarray:
        """Normalised command -> twist in m/s and rad/s (each vector clipped to max speed)."""
        c = self.config
        out = np.clip(np.asarray(command, dtype=np.float64), -1.0, 1.0)
        for part, max_speed in ((slice(0, 3), c.max_linear), (slice(3, 6), c.max_angular)):
            norm = float(np.linalg.norm(out[part]))
            if norm > 1.0:
                out[part] /= norm
            out[part] *= max_speed * self.speed_scale
        return out

    def step(self, now: float) -> TeleopOutput:
        """Return what to publish at ``now``: twist while active, one zero after, then None."""
        command = self.active_command(now)
        if command is not None:
            self._publishing = True
            twist = self.twist(command)
        elif self._publishing:
            self._publishing = False
            twist = np.zeros(6)
        else:
            twist = None
        gripper, self._gripper_pending = self._gripper_pending, None
        return TeleopOutput(twist, gripper)

    def stop(self) -> np.ndarray | None:
        """Forget all input; return the zero twist to send if motion was being commanded."""
        self._deadman = False
        self._key_expiry[:] = -np.inf
        was, self._publishing = self._publishing, False
        return np.zeros(6) if was else None


# --------------------------------------------------------------------------- terminal


class KeyboardReader:
    """Read single key presses from a terminal (cbreak mode, no echo) in a daemon thread.

    The terminal settings are restored by :meth:`stop` (and at interpreter exit). Ctrl-C
    still raises SIGINT in the main thread because the terminal is in cbreak, not raw, mode.
    """

    def __init__(self, on_key: Callable[[str], None], stream=None):
        stream = sys.stdin if stream is None else stream
        try:
            is_tty = stream.isatty()
        except (AttributeError, ValueError):
            is_tty = False
        if not is_tty:
            raise NotATerminalError(
                "keyboard mode needs an interactive terminal, but stdin is not a TTY: run "
                "`ros2 run roboalign_ros teleop_node --keyboard` in a terminal (in a launch "
                "file add prefix='xterm -e'), or use mode: joy with a joystick")
        self._fd = stream.fileno()
        self._on_key = on_key
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved = None

    def start(self) -> None:
        """Put the terminal in cbreak mode and start reading."""
        import atexit
        import termios
        import tty

        self._saved = termios.tcgetattr(self._fd)
        atexit.register(self._restore)
        tty.setcbreak(self._fd, termios.TCSANOW)
        self._thread = threading.Thread(target=self._run, name="keyboard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 64)
            except OSError:
                break
            if not data:  # EOF: the terminal went away
                self._on_key("\x04")
                break
            for key in data.decode("utf-8", errors="ignore"):
                self._on_key(key)

    def _restore(self) -> None:
        import termios

        if self._saved is not None:
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
            self._saved = None

    def stop(self) -> None:
        """Stop reading and restore the terminal."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._restore()
