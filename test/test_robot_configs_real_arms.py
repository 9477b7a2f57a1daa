"""The real-arm configs (FR3, UR5e): well-formed, and a clear error where their URDF is missing."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from roboalign_ros.robot import DEFAULT_TOPICS, load_robot_config

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "robots"


@pytest.mark.parametrize("name, package, joints", [
    ("fr3", "franka_description", 7), ("ur5e", "ur_description", 6)])
def test_real_arm_config(name, package, joints):
    robot = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["/**"]["ros__parameters"][
        "robot"]
    assert robot["name"] == name and len(robot["arm_joints"]) == joints
    assert len(robot["home"]) == joints and np.all(np.isfinite(robot["home"]))
    assert np.all(np.less(robot["workspace"]["min"], robot["workspace"]["max"]))
    assert set(robot["topics"]) <= set(DEFAULT_TOPICS)
    assert 0 < robot["velocity_scale"] <= 0.5, "a real arm starts at reduced speed"
    assert robot["urdf"].startswith(f"package://{package}/")
    # without the vendor's description package the loader says exactly what is missing
    with pytest.raises(ValueError, match=f"package '{package}' not found"):
        load_robot_config(name)
