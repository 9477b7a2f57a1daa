"""The planned tool path of a chunk (ROS-free): FK of its rows, the rows the envelope clamps."""

import numpy as np
import pytest

from roboalign_ros.control.chunk import Chunk
from roboalign_ros.control.kinematics import Kinematics
from roboalign_ros.control.planned_path import ExecutedPath, planned_path
from roboalign_ros.control.safety import SafetyEnvelope
from roboalign_ros.robot import load_robot_config

ROBOT = load_robot_config("sim_arm")
NAMES = (*ROBOT.arm_joints, "gripper")


@pytest.fixture(scope="module")
def envelope():
    kin = Kinematics(ROBOT)
    return SafetyEnvelope.from_robot(ROBOT, 0.01, fk=kin.fk_position), kin


def test_rows_become_tool_positions_and_limit_violations_are_marked(envelope):
    env, kin = envelope
    actions = np.tile(np.append(ROBOT.home, 1.0), (10, 1)).astype(np.float32)
    actions[:, 0] += np.linspace(0, 0.5, 10)
    actions[7, 1] = ROBOT.upper[1] + 0.3          # past the joint limit
    path = planned_path(Chunk(5.0, 0.1, actions, NAMES, sequence=4), env)
    np.testing.assert_allclose(path.times, 5.0 + 0.1 * np.arange(10))
    for i in (0, 9):
        np.testing.assert_allclose(path.positions[i], kin.fk_position(actions[i, :6]), atol=1e-9)
    assert path.clamped.tolist() == [i == 7 for i in range(10)]
    assert not np.allclose(path.safe_positions[7], path.positions[7])
    assert path.sequence == 4
    with pytest.raises(ValueError, match="joint_position"):
        planned_path(Chunk(5.0, 0.1, np.zeros((3, 7), np.float32),
                           ("vx", "vy", "vz", "wx", "wy", "wz", "gripper"), "ee_delta"), env)


def test_the_executed_path_keeps_the_last_commands(envelope):
    env, kin = envelope
    done = ExecutedPath(env, maxlen=3)
    assert done.positions.shape == (0, 3)
    for k in range(5):
        done.add(ROBOT.home + 0.05 * k)
    assert done.positions.shape == (3, 3)
    np.testing.assert_allclose(done.positions[-1], kin.fk_position(ROBOT.home + 0.2), atol=1e-9)
    done.clear()
    assert len(done.positions) == 0
