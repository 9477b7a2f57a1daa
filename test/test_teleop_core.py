"""The ROS-free teleop core: deadzone, dead-man, staleness, scaling, clipping, mapping errors."""

import os
import pty
import time

import numpy as np
import pytest

from roboalign_ros.teleop import (
    BUILTIN_PROFILES,
    JoyMappingError,
    JoyProfile,
    KeyboardReader,
    NotATerminalError,
    TeleopConfig,
    TeleopCore,
    apply_deadzone,
    map_axes,
)

SPACEMOUSE = BUILTIN_PROFILES["spacemouse"]
XBOX = BUILTIN_PROFILES["xbox"]
CFG = TeleopConfig(max_linear=0.2, max_angular=0.8, deadzone=0.1, speed_scale=0.5,
                   stale_timeout=0.5)


def xbox_joy(lx=0.0, ly=0.0, rx=0.0, ry=0.0, dx=0.0, dy=0.0, **buttons):
    axes = [lx, ly, 1.0, rx, ry, 1.0, dx, dy]  # triggers rest at 1.0
    names = ["a", "b", "x", "y", "lb", "rb", "back", "start", "guide", "ls", "rs"]
    return axes, [int(buttons.get(n, 0)) for n in names]


def test_deadzone_is_continuous():
    out = apply_deadzone([0.0, 0.05, -0.1, 0.1001, 0.55, -1.0, 1.7], 0.1)
    np.testing.assert_allclose(out, [0, 0, 0, 0.0001 / 0.9, 0.5, -1.0, 1.0], atol=1e-9)


def test_map_axes_uses_profile_indices_and_signs():
    axes, _ = xbox_joy(lx=0.55, ly=1.0, rx=-1.0, ry=0.05, dx=1.0, dy=-1.0)
    cmd = map_axes(XBOX, axes, 0.1)
    # linear x <- LY, y <- LX, z <- RY (in deadzone), roll <- -DPadX, pitch <- DPadY, yaw <- RX
    np.testing.assert_allclose(cmd, [1.0, 0.5, 0.0, -1.0, -1.0, -1.0])


def test_deadman_gates_motion_and_release_sends_one_zero():
    core = TeleopCore(CFG, XBOX)
    axes, buttons = xbox_joy(ly=1.0)
    core.on_joy(axes, buttons, now=0.0)  # stick pushed, dead-man not held
    assert core.step(0.01).twist is None
    axes, buttons = xbox_joy(ly=1.0, lb=1)
    core.on_joy(axes, buttons, now=0.02)
    np.testing.assert_allclose(core.step(0.03).twist, [0.1, 0, 0, 0, 0, 0])  # 0.2 * 0.5
    np.testing.assert_allclose(core.step(0.04).twist, [0.1, 0, 0, 0, 0, 0])
    axes, buttons = xbox_joy(ly=1.0)  # released
    core.on_joy(axes, buttons, now=0.05)
    np.testing.assert_array_equal(core.step(0.06).twist, np.zeros(6))
    assert core.step(0.07).twist is None and core.step(0.08).twist is None


def test_stale_joy_stops_motion():
    core = TeleopCore(CFG, XBOX)
    axes, buttons = xbox_joy(lx=-1.0, lb=1)
    core.on_joy(axes, buttons, now=10.0)
    np.testing.assert_allclose(core.step(10.4).twist, [0, -0.1, 0, 0, 0, 0])
    np.testing.assert_array_equal(core.step(10.6).twist, np.zeros(6))  # 0.6 s old > 0.5 s
    assert core.step(10.7).twist is None
    core.on_joy(axes, buttons, now=11.0)  # fresh again
    np.testing.assert_allclose(core.step(11.01).twist, [0, -0.1, 0, 0, 0, 0])


def test_speed_scale_buttons_are_edge_triggered_and_bounded():
    core = TeleopCore(CFG, XBOX)
    axes, _ = xbox_joy()
    t = 0.0
    for _ in range(3):  # three presses of Y (held across two messages each)
        for held in (1, 1, 0):
            t += 0.01
            core.on_joy(axes, xbox_joy(y=held)[1], now=t)
    assert core.speed_scale == pytest.approx(0.8)
    for _ in range(20):
        t += 0.01
        core.on_joy(axes, xbox_joy(y=1)[1], now=t)
        t += 0.01
        core.on_joy(axes, xbox_joy()[1], now=t)
    assert core.speed_scale == pytest.approx(1.0)
    for _ in range(20):
        assert core.on_key("-", t)
    assert core.speed_scale == pytest.approx(0.1)
    axes, buttons = xbox_joy(ly=1.0, lb=1)
    core.on_joy(axes, buttons, now=t)
    np.testing.assert_allclose(core.step(t).twist, [0.02, 0, 0, 0, 0, 0])


def test_twist_is_clipped_to_the_max_speeds():
    cfg = TeleopConfig(max_linear=0.25, max_angular=1.0, speed_scale=1.0, deadzone=0.0)
    loud = JoyProfile("loud", axes=(0, 1, 2, 3, 4, 5), scales=(3.0,) * 6, deadman_button=0)
    core = TeleopCore(cfg, loud)
    core.on_joy([1.0, 1.0, 1.0, -1.0, 1.0, 1.0], [1, 0], now=0.0)
    twist = core.step(0.0).twist
    assert np.linalg.norm(twist[:3]) == pytest.approx(0.25)
    assert np.linalg.norm(twist[3:]) == pytest.approx(1.0)
    np.testing.assert_allclose(twist[:3], 0.25 / np.sqrt(3))
    core.on_joy([5.0, 0, 0, 0, 0, np.nan], [1, 0], now=0.1)  # out-of-range / NaN axes
    np.testing.assert_allclose(core.step(0.1).twist, [0.25, 0, 0, 0, 0, 0])


def test_gripper_toggle_needs_deadman_and_is_published_once():
    core = TeleopCore(CFG, SPACEMOUSE)
    zeros = [0.0] * 6
    core.on_joy(zeros, [0, 1], now=0.0)  # right button without the dead-man: ignored
    assert core.step(0.0).gripper is None
    core.on_joy(zeros, [1, 0], now=0.1)
    core.on_joy(zeros, [1, 1], now=0.2)
    assert core.step(0.2).gripper == 0.0  # initial 1.0 (open) -> closed
    assert core.step(0.21).gripper is None
    core.on_joy(zeros, [1, 1], now=0.3)  # still held: no new edge
    assert core.step(0.3).gripper is None
    core.on_joy(zeros, [1, 0], now=0.4)
    core.on_joy(zeros, [1, 1], now=0.5)
    assert core.step(0.5).gripper == 1.0


def test_bad_indices_raise_clear_errors():
    with pytest.raises(ValueError, match=r"custom\.axes\[2\] \(linear.z\): -3"):
        JoyProfile("custom", axes=(0, 1, -3, 3, 4, 5))
    with pytest.raises(ValueError, match=r"custom\.axes: needs 6"):
        JoyProfile("custom", axes=(0, 1, 2))
    with pytest.raises(ValueError, match=r"custom\.deadman_button"):
        JoyProfile("custom", axes=(0, 1, 2, 3, 4, 5), deadman_button=1.5)
    with pytest.raises(ValueError, match=r"custom\.scales\[0\]"):
        JoyProfile("custom", axes=(0, 1, 2, 3, 4, 5), scales=(float("inf"),) + (1.0,) * 5)
    core = TeleopCore(CFG, XBOX)
    axes, buttons = xbox_joy(ly=1.0, lb=1)
    core.on_joy(axes, buttons, now=0.0)
    assert core.step(0.0).twist is not None
    # a SpaceMouse's 6-axis Joy fed to the xbox profile: named error, motion stops
    with pytest.raises(JoyMappingError, match=r"xbox\.axes\[3\] \(angular.x\): axis 6 .* 6 axes"):
        core.on_joy([0.0] * 6, [1] * 11, now=0.05)
    np.testing.assert_array_equal(core.step(0.06).twist, np.zeros(6))
    assert core.step(0.07).twist is None
    with pytest.raises(JoyMappingError, match=r"xbox\.deadman_button: button 4 .* 2 buttons"):
        core.on_joy([0.0] * 8, [1, 1], now=0.1)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="deadzone"):
        TeleopConfig(deadzone=1.0)
    with pytest.raises(ValueError, match="max_linear"):
        TeleopConfig(max_linear=-0.1)
    with pytest.raises(ValueError, match="speed_scale"):
        TeleopConfig(speed_scale=2.0)


def test_keyboard_keys_hold_then_release():
    core = TeleopCore(TeleopConfig(key_hold=0.5, speed_scale=1.0), None)
    assert core.on_key("w", 0.0) and core.on_key("j", 0.1)
    np.testing.assert_allclose(core.step(0.2).twist, [0.2, 0, 0, 0, 0, 0.8])
    np.testing.assert_allclose(core.step(0.55).twist, [0, 0, 0, 0, 0, 0.8])  # w expired
    assert core.on_key("s", 0.56)
    np.testing.assert_allclose(core.step(0.57).twist, [-0.2, 0, 0, 0, 0, 0.8])
    np.testing.assert_array_equal(core.step(1.2).twist, np.zeros(6))
    assert core.step(1.3).twist is None
    assert core.on_key(" ", 1.4) and core.step(1.4).gripper == 0.0
    assert core.on_key("+", 1.5) and core.speed_scale == 1.0
    assert not core.on_key("q", 1.6)
    with pytest.raises(JoyMappingError, match="profile"):
        core.on_joy([0.0] * 6, [0, 0], now=2.0)


def test_stop_returns_a_zero_twist_only_when_moving():
    core = TeleopCore(CFG, XBOX)
    assert core.stop() is None
    core.on_key("r", 0.0)
    core.step(0.0)
    np.testing.assert_array_equal(core.stop(), np.zeros(6))
    assert core.step(0.1).twist is None


def test_keyboard_reader_refuses_a_non_tty():
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(read_end, "r", closefd=False) as pipe:
            with pytest.raises(NotATerminalError, match="not a TTY"):
                KeyboardReader(lambda key: None, pipe)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_keyboard_reader_reads_keys_from_a_pty_and_restores_it():
    import termios

    master, slave = pty.openpty()
    keys = []
    try:
        with os.fdopen(slave, "r", closefd=False) as tty_stream:
            before = termios.tcgetattr(slave)
            reader = KeyboardReader(keys.append, tty_stream)
            reader.start()
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # single keys, no Enter
            os.write(master, b"wa q")
            deadline = time.monotonic() + 3.0
            while len(keys) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            reader.stop()
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
    assert keys == ["w", "a", " ", "q"]


def test_joy_with_an_old_header_stamp_is_stale():
    core = TeleopCore(CFG, XBOX)
    axes, buttons = xbox_joy(ly=1.0, lb=1)
    assert core.on_joy(axes, buttons, now=100.0, stamp=99.9)
    assert core.step(100.0).twist is not None
    assert not core.on_joy(axes, buttons, now=100.1, stamp=99.0)  # 1.1 s old
    np.testing.assert_array_equal(core.step(100.7).twist, np.zeros(6))  # last fresh one aged out
    assert core.on_joy(axes, buttons, now=101.0, stamp=0.0)  # unstamped: arrival time counts
    assert core.step(101.0).twist is not None
