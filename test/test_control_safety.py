"""Safety envelope: position, velocity, per-step, gripper, workspace, twist limits."""

from types import SimpleNamespace

import numpy as np
import pytest

from roboalign_ros.control.safety import SafetyEnvelope, SafetyLimits

L1 = L2 = 0.5


def planar_fk(q):
    """Planar 2-link arm in the xy plane (z = 0)."""
    return np.array([L1 * np.cos(q[0]) + L2 * np.cos(q[0] + q[1]),
                     L1 * np.sin(q[0]) + L2 * np.sin(q[0] + q[1]), 0.0])


def env2(period=0.01, fk=None, **kw):
    base = dict(lower=[-2.0, -2.0], upper=[2.0, 2.0], vel_max=[1.0, 1.0], margin=0.1,
                velocity_scale=1.0, max_step=1.0, joint_names=('a', 'b'))
    base.update(kw)
    return SafetyEnvelope(SafetyLimits(**base), period, fk)


def test_joint_position_limit_clamp():
    env = env2(vel_max=[100.0, 100.0])
    out = env.filter_joint(np.array([3.0, -0.5]), np.array([1.85, -0.5]), np.empty(2))
    np.testing.assert_allclose(out, [1.9, -0.5])
    assert env.counters['position_limit'] == 1
    assert env.reasons and env.reasons[0].startswith('position_limit: a')


def test_velocity_clamp_scales_step_uniformly():
    env = env2(velocity_scale=0.5)              # 0.5 rad/s * 0.01 s = 0.005 rad per tick
    last = np.array([0.0, 0.0])
    out = env.filter_joint(np.array([0.1, 0.05]), last, np.empty(2))
    np.testing.assert_allclose(out, [0.005, 0.0025])   # direction kept
    assert env.counters['velocity_limit'] == 1 and env.counters['step_limit'] == 0


def test_per_step_clamp_independent_of_velocity():
    env = env2(period=1.0, max_step=0.02)        # velocity would allow 1 rad per tick
    out = env.filter_joint(np.array([0.5, 0.0]), np.zeros(2), np.empty(2))
    np.testing.assert_allclose(out, [0.02, 0.0])
    assert env.counters['step_limit'] == 1


def test_gripper_range():
    env = env2()
    assert env.filter_gripper(1.3) == 1.0 and env.filter_gripper(-0.2) == 0.0
    assert env.filter_gripper(0.4) == 0.4
    assert env.filter_gripper(float('nan')) == 0.0
    assert env.counters['gripper_range'] == 3


BOX = dict(workspace_min=[0.4, -1.0, -0.1], workspace_max=[2.0, 1.0, 0.1])


def test_workspace_hold_rejects_step_leaving_box():
    env = env2(period=1.0, vel_max=[10, 10], max_step=10.0, fk=planar_fk, **BOX)
    last = np.array([0.0, 0.0])                  # tool at x = 1.0
    inside = env.filter_joint(np.array([0.0, 1.0]), last, np.empty(2))
    np.testing.assert_allclose(inside, [0.0, 1.0])   # x = 0.5 + 0.27: fine
    out = env.filter_joint(np.array([0.0, 1.9]), last, np.empty(2))  # x = 0.5 - 0.16: out
    np.testing.assert_allclose(out, last)
    assert env.counters['workspace'] == 1


def test_workspace_project_bisects_to_boundary():
    env = env2(period=1.0, vel_max=[10, 10], max_step=10.0, fk=planar_fk,
               workspace_mode='project', **BOX)
    out = env.filter_joint(np.array([0.0, 1.9]), np.zeros(2), np.empty(2))
    x = planar_fk(out)[0]
    assert 0.4 - 1e-9 <= x < 0.4 + 1e-3 and 0 < out[1] < 1.9


def test_workspace_recovery_allowed_from_outside():
    env = env2(period=1.0, vel_max=[10, 10], max_step=10.0, fk=planar_fk, **BOX)
    last = np.array([0.0, 1.85])                 # outside (x = 0.36 < 0.4)
    out = env.filter_joint(np.array([0.0, 1.5]), last, np.empty(2))   # moving back in
    np.testing.assert_allclose(out, [0.0, 1.5])
    out = env.filter_joint(np.array([0.0, 1.9]), last, np.empty(2))   # further out
    np.testing.assert_allclose(out, last)


def test_workspace_accepts_4x4_pose_fk():
    def pose_fk(q):
        t = np.eye(4)
        t[:3, 3] = planar_fk(q)
        return t
    env = env2(period=1.0, vel_max=[10, 10], max_step=10.0, fk=pose_fk, **BOX)
    np.testing.assert_allclose(env.filter_joint(np.array([0.0, 1.9]), np.zeros(2),
                                                np.empty(2)), [0.0, 0.0])


def test_twist_speed_caps_and_box():
    lim = SafetyLimits(lower=-np.ones(3), upper=np.ones(3), vel_max=np.ones(3),
                       max_linear_speed=0.2, max_angular_speed=0.5,
                       workspace_min=[-0.5] * 3, workspace_max=[0.5] * 3)
    env = SafetyEnvelope(lim, 0.01, fk=lambda q: np.asarray(q))   # identity fk
    out = env.filter_twist(np.array([0.6, 0.0, 0.8, 0.0, 0.0, 2.0]), np.zeros(3), np.empty(6))
    np.testing.assert_allclose(out, [0.12, 0.0, 0.16, 0.0, 0.0, 0.5])
    # tool at x = 0.4995: +x would leave the box within one period, -y is fine
    out = env.filter_twist(np.array([0.1, -0.1, 0, 0, 0, 0]), np.array([0.4995, 0, 0]),
                           np.empty(6))
    np.testing.assert_allclose(out, [0.0, -0.1, 0, 0, 0, 0])
    assert env.counters['workspace'] == 1
    assert env.counters['linear_speed'] == 1 and env.counters['angular_speed'] == 1


def test_from_robot_duck_typed_and_overrides_only_tighten():
    spec = SimpleNamespace(arm_joints=['a', 'b'], lower=[-2, -2], upper=[2, 2],
                           velocity=[1, 1], workspace_min=[0, 0, 0], workspace_max=[1, 1, 1])
    env = SafetyEnvelope.from_robot(spec, 0.01, {'velocity_scale': 0.2, 'upper': [1.5, 2]})
    assert env.limits.joint_names == ('a', 'b') and env.limits.upper[0] == 1.5
    with pytest.raises(ValueError, match='upper'):
        SafetyEnvelope.from_robot(spec, 0.01, {'upper': [3, 2]})
    with pytest.raises(ValueError, match='unknown'):
        SafetyEnvelope.from_robot(spec, 0.01, {'speed': 1})


def test_bad_limits_name_the_field():
    with pytest.raises(ValueError, match='margin'):
        env2(margin=3.0)
    with pytest.raises(ValueError, match='workspace_min'):
        env2(workspace_min=[0, 0, 0])
    with pytest.raises(ValueError, match='upper'):
        env2(upper=[np.nan, 1])


def test_continuous_joint_and_missing_velocity_limit():
    env = env2(lower=[-np.inf, -2.0], upper=[np.inf, 2.0], vel_max=[np.inf, 1.0],
               max_step=0.05)
    out = env.filter_joint(np.array([10.0, 0.0]), np.array([9.99, 0.0]), np.empty(2))
    np.testing.assert_allclose(out, [10.0, 0.0])
    out = env.filter_joint(np.array([11.0, 0.0]), np.array([10.0, 0.0]), np.empty(2))
    np.testing.assert_allclose(out, [10.05, 0.0])
