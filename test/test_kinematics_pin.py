"""Pinocchio kinematics built from the URDF (roboalign_ros.control.kinematics)."""

import numpy as np
import pytest

from roboalign_ros.control.kinematics import Kinematics, pose_error
from roboalign_ros.robot import load_robot_config


@pytest.fixture(scope='module')
def spec():
    return load_robot_config('sim_arm')


@pytest.fixture(scope='module')
def kin(spec):
    return Kinematics(spec)


def _random_q(spec, rng, margin=0.3):
    return rng.uniform(spec.lower + margin, spec.upper - margin)


def test_fk_matches_mujoco_tool_pose(spec, kin):
    import mujoco

    from roboalign_ros.sim.scene import build_tabletop_model

    m = build_tabletop_model(spec)
    d = mujoco.MjData(m)
    qadr = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)]
            for j in spec.arm_joints]
    sid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, 'tool')
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = _random_q(spec, rng)
        d.qpos[qadr] = q
        mujoco.mj_kinematics(m, d)
        T = kin.fk(q)
        np.testing.assert_allclose(T[:3, 3], d.site_xpos[sid], atol=1e-6)
        np.testing.assert_allclose(T[:3, :3], d.site_xmat[sid].reshape(3, 3), atol=1e-6)


def test_jacobian_matches_finite_differences(spec, kin):
    rng = np.random.default_rng(1)
    q = _random_q(spec, rng)
    J = kin.jacobian(q)
    eps = 1e-6
    T0 = kin.fk(q)
    for i in range(kin.n):
        dq = np.zeros(kin.n)
        dq[i] = eps
        num = pose_error(T0, kin.fk(q + dq)) / eps
        np.testing.assert_allclose(J[:, i], num, atol=1e-4)


@pytest.mark.parametrize('axis', range(6))
def test_twist_moves_tool_in_commanded_direction(spec, kin, axis):
    q = spec.home.copy()
    twist = np.zeros(6)
    twist[axis] = 0.05
    dt = 0.01
    T0 = kin.fk(q)
    for _ in range(20):
        q = q + kin.twist_to_joint_velocity(q, twist, dt) * dt
    moved = pose_error(T0, kin.fk(q))
    expected = twist * 20 * dt
    assert moved @ expected > 0.9 * expected @ expected
    np.testing.assert_allclose(moved, expected, atol=2e-3)


def test_twist_respects_velocity_and_position_limits(spec, kin):
    q = spec.home.copy()
    qd = kin.twist_to_joint_velocity(q, np.array([5.0, 0, 0, 0, 0, 0]))
    assert np.all(np.abs(qd) <= spec.velocity + 1e-9)
    q_edge = spec.home.copy()
    q_edge[1] = spec.upper[1]  # shoulder at its upper limit
    for v in ([1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1]):
        qd = kin.twist_to_joint_velocity(q_edge, np.array([*v, 0, 0, 0]) * 0.1)
        assert qd[1] <= 1e-12


def test_ik_step_converges_and_stays_in_limits(spec, kin):
    rng = np.random.default_rng(2)
    for _ in range(5):
        q_goal = _random_q(spec, rng, margin=0.6)
        target = kin.fk(q_goal)
        q0 = np.clip(q_goal + rng.normal(0, 0.15, kin.n), spec.lower, spec.upper)
        q, ok = kin.solve_ik(q0, target, iters=200)
        assert ok
        assert np.all((q >= spec.lower) & (q <= spec.upper))
    step = kin.ik_step(spec.home, kin.fk(spec.upper - 0.1), max_step=0.05)
    assert np.max(np.abs(step - spec.home)) <= 0.05 + 1e-12


def test_fk_is_cheap_and_validates_input(spec, kin):
    import time

    t = time.perf_counter()
    for _ in range(1000):
        kin.fk_position(spec.home)
    assert (time.perf_counter() - t) / 1000 < 2e-4
    with pytest.raises(ValueError, match='q'):
        kin.fk(np.zeros(3))
    with pytest.raises(ValueError, match='twist'):
        kin.twist_to_joint_velocity(spec.home, np.zeros(3))
