"""MuJoCo tabletop sim built from the URDF (roboalign_ros.sim): model, reset, tasks, expert."""

import os

import numpy as np
import pytest

os.environ.setdefault('MUJOCO_GL', 'osmesa')

mujoco = pytest.importorskip('mujoco')

from roboalign_ros.robot import parse_urdf_joints  # noqa: E402
from roboalign_ros.sim import TASKS, TabletopEnv, Task, get_task, register_task  # noqa: E402
from roboalign_ros.sim.expert import ScriptedExpert, run_episode  # noqa: E402


@pytest.fixture(scope='module')
def env():
    e = TabletopEnv()
    yield e
    e.close()


def test_mujoco_has_the_urdf_joints_and_limits(env):
    m = env.model
    joints, _ = parse_urdf_joints(env.robot.urdf_xml)
    for name in env.robot.arm_joints + env.robot.gripper_joints:
        jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
        assert jid >= 0, name
        assert m.jnt_limited[jid]
        np.testing.assert_allclose(m.jnt_range[jid], [joints[name].lower, joints[name].upper])
        np.testing.assert_allclose(m.jnt_actfrcrange[jid], [-joints[name].effort,
                                                            joints[name].effort])
    for i, name in enumerate(env.robot.arm_joints):
        aid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
        np.testing.assert_allclose(m.actuator_ctrlrange[aid],
                                   [env.robot.lower[i], env.robot.upper[i]])
    # the URDF mimic joint became an equality constraint between the fingers
    assert m.neq >= 1
    names, q, qd, eff = env.joint_state()
    assert names == env.robot.arm_joints + env.robot.gripper_joints
    assert q.shape == qd.shape == eff.shape == (len(names),)


def test_reset_is_deterministic_and_seed_dependent(env):
    env.reset('pick_red_cube', seed=7)
    a = env.data.qpos.copy()
    env.step(env.robot.home, 0.5)
    env.reset('pick_red_cube', seed=7)
    np.testing.assert_array_equal(env.data.qpos, a)
    assert env.time == 0.0
    env.reset('pick_red_cube', seed=8)
    assert not np.allclose(env.data.qpos, a)
    # objects rest on the table, apart from each other
    for name, obj in env.objects.items():
        assert env.object_position(name)[2] == pytest.approx(obj.rest_height, abs=3e-3)


def test_step_tracks_targets_and_reports_state(env):
    obs = env.reset('pick_red_cube', seed=0)
    assert set(obs) >= {'q', 'qd', 'gripper', 'tool_pose', 'time', 'instruction'}
    target = env.robot.home + np.array([0.2, -0.1, 0.1, 0.2, -0.2, 0.3])
    for _ in range(150):
        obs = env.step(target, 0.0)
    assert obs['time'] == pytest.approx(150 * env.control_period)
    np.testing.assert_allclose(obs['q'], target, atol=5e-3)
    assert obs['gripper'] < 0.05
    with pytest.raises(ValueError, match='q_target'):
        env.step(np.zeros(3))


def test_render_and_intrinsics(env):
    env.reset('pick_red_cube', seed=0)
    rgb, depth = env.render(160, 120)
    assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8
    assert depth.shape == (120, 160) and depth.dtype == np.float32
    fx, fy, cx, cy = env.camera_intrinsics(160, 120)
    assert (cx, cy) == (80.0, 60.0) and fx == fy > 0
    # project the red cube with the optical-frame pose + intrinsics: the pixel shows red,
    # and the depth there matches the cube's distance along the optical axis
    p = np.append(env.object_position('red_cube'), 1.0)
    pc = np.linalg.inv(env.camera_pose()) @ p
    u, v = fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy
    r, g, b = rgb[int(v), int(u)].astype(int)
    assert r > 100 and r > 2 * g and r > 2 * b
    assert abs(depth[int(v), int(u)] - pc[2]) < 0.03


def test_task_registry_lookup_and_validation():
    assert {'pick_red_cube', 'place_red_cube_in_bowl', 'push_green_block_left'} <= set(TASKS)
    assert get_task('Put the red cube in the blue bowl.').name == 'place_red_cube_in_bowl'
    with pytest.raises(ValueError, match='task'):
        get_task('juggle')
    with pytest.raises(ValueError, match='task.kind'):
        register_task(Task('x_bad', 'x', 'fly', 'red_cube'))


@pytest.mark.parametrize('task', sorted(TASKS))
def test_task_false_at_reset_true_after_expert(env, task):
    expert = ScriptedExpert(env)
    env.reset(task, seed=1)
    assert env.task_status() == (TASKS[task].instruction, False)
    assert run_episode(env, task, seed=1, expert=expert)
    assert expert.done
    assert env.task_status()[1]


def _worst_joint_step(env, expert, task, cap):
    """Run the expert on ``task`` (seed 3); the largest joint step as a multiple of ``cap``."""
    env.reset(task, seed=3)
    expert.reset()
    prev, worst = env.arm_q(), 0.0
    while not expert.done and env.time < env.task.episode_seconds:
        q, g = expert.act()
        worst = max(worst, float(np.max(np.abs(q - prev) / cap)))
        prev = q
        env.step(q, g)
    return worst


def test_expert_joint_steps_stay_inside_the_executor_envelope(env):
    """Demos a policy imitates must be commands the executor passes unchanged (0.5 x URDF)."""
    cap = 0.4 * env.robot.velocity * env.control_period
    expert = ScriptedExpert(env, joint_speed=0.4)
    for task in ('pick_red_cube', 'place_red_cube_in_bowl'):
        assert _worst_joint_step(env, expert, task, cap) <= 1.0 + 1e-6, task
        assert expert.done, task
    # uncapped, the Cartesian plan alone moves faster
    assert _worst_joint_step(env, ScriptedExpert(env, joint_speed=0.0), 'pick_red_cube', cap) > 1.2


def test_every_push_ends_on_the_same_line(env):
    """Where the expert stops pushing is visible in the last frame, not only in the start."""
    task = TASKS['push_green_block_left']
    (_, _), (_, y_max) = task.regions['green_block']
    starts, ends = [], []
    for seed in (2, 5, 11):
        env.reset(task.name, seed)
        starts.append(env.object_position('green_block')[1])
        assert run_episode(env, task.name, seed, expert=ScriptedExpert(env))
        ends.append(env.object_position('green_block')[1])
    assert np.ptp(starts) > 0.02                       # different starts ...
    assert np.ptp(ends) < 0.02, ends                   # ... one end line
    assert min(ends) > y_max + task.distance - 0.02    # past the region's edge by ~distance
