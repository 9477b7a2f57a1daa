"""Robot description (urdf/sim_arm.urdf.xacro) and config loading (roboalign_ros.robot)."""

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from roboalign_ros.robot import (
    expand_xacro,
    load_robot_config,
    package_path,
    parse_urdf_joints,
)

XACRO = package_path('urdf', 'sim_arm.urdf.xacro')
YAML = package_path('config', 'robots', 'sim_arm.yaml')


@pytest.fixture(scope='module')
def spec():
    return load_robot_config('sim_arm')


def test_package_path_finds_source_files():
    assert XACRO.is_file() and YAML.is_file()
    assert package_path('urdf', 'sim_arm.ros2_control.xacro').is_file()


def test_xacro_parses_with_urdfdom_and_has_inertials_and_limits(spec):
    from urdf_parser_py.urdf import URDF

    robot = URDF.from_xml_string(spec.urdf_xml)
    links = {link.name: link for link in robot.links}
    moving = [j for j in robot.joints if j.type != 'fixed']
    assert {j.name for j in moving} == set(spec.arm_joints) | set(spec.gripper_joints)
    for j in moving:
        assert j.limit is not None, j.name
        assert j.limit.upper > j.limit.lower and j.limit.velocity > 0 and j.limit.effort > 0
        child = links[j.child]
        assert child.inertial is not None and child.inertial.mass > 0, j.child
        ine = child.inertial.inertia
        assert min(ine.ixx, ine.iyy, ine.izz) > 0
    for frame in ('world', 'base_link', 'tool0', 'camera_link', 'camera_color_optical_frame'):
        assert frame in links
    # config/robots/sim_arm.yaml turns the xacro's wrist_camera option on (the sim's wrist camera)
    assert 'wrist_camera_color_optical_frame' in links


@pytest.mark.skipif(shutil.which('xmllint') is None, reason='xmllint not installed')
def test_xmllint_passes(tmp_path):
    out = tmp_path / 'sim_arm.urdf'
    out.write_text(expand_xacro(XACRO, {'hardware': 'mock'}))
    for f in (XACRO, package_path('urdf', 'sim_arm.ros2_control.xacro'), out):
        subprocess.run(['xmllint', '--noout', str(f)], check=True)


@pytest.mark.parametrize('hardware, plugin', [
    ('mock', 'mock_components/GenericSystem'),
    ('gazebo', 'gz_ros2_control/GazeboSimSystem'),
    ('real', 'vendor_driver/ArmSystem'),   # real_plugin has no default (issue 26)
])
def test_ros2_control_plugin_follows_xacro_arg(hardware, plugin):
    root = ET.fromstring(expand_xacro(XACRO, {'hardware': hardware,
                                              'real_plugin': 'vendor_driver/ArmSystem',
                                              'controllers_file': '/tmp/c.yaml'}))
    plugins = [p.text.strip() for p in root.findall('ros2_control/hardware/plugin')]
    assert plugins == [plugin]
    joints = [j.get('name') for j in root.findall('ros2_control/joint')]
    assert joints[:6] == [f'joint{i}' for i in range(1, 7)]
    gz = root.findall('gazebo/plugin')
    assert bool(gz) == (hardware == 'gazebo')
    if gz:
        assert gz[0].find('parameters').text.strip() == '/tmp/c.yaml'


def test_bad_hardware_arg_and_wrist_camera_option():
    with pytest.raises(ValueError, match='hardware'):
        expand_xacro(XACRO, {'hardware': 'bogus'})
    _, links = parse_urdf_joints(expand_xacro(XACRO, {'wrist_camera': 'true'}))
    assert {'wrist_camera_link', 'wrist_camera_color_optical_frame'} <= links
    _, links = parse_urdf_joints(expand_xacro(XACRO))   # the xacro's own default: off
    assert 'wrist_camera_link' not in links


def test_spec_from_urdf_and_config(spec):
    joints, _ = parse_urdf_joints(spec.urdf_xml)
    assert spec.arm_joints == tuple(f'joint{i}' for i in range(1, 7))
    assert spec.gripper_joints == ('finger_left_joint', 'finger_right_joint')
    for i, j in enumerate(spec.arm_joints):
        assert spec.lower[i] == joints[j].lower and spec.upper[i] == joints[j].upper
        assert spec.velocity[i] == joints[j].velocity and spec.effort[i] == joints[j].effort
    assert np.all((spec.home >= spec.lower) & (spec.home <= spec.upper))
    assert spec.workspace_min.shape == (3,) and np.all(spec.workspace_min < spec.workspace_max)
    assert spec.trajectory_topic == '/arm_controller/joint_trajectory'
    assert spec.gripper_topic == '/gripper_controller/commands'
    assert spec.color_topic == '/camera/camera/color/image_raw'
    assert spec.controller_rate == 100.0
    assert spec.gripper_to_joint(1.0) == pytest.approx(0.04)
    assert spec.joint_to_gripper(0.0) == 0.0
    assert load_robot_config(YAML).name == 'sim_arm'  # path form
    assert 'gz_ros2_control' in load_robot_config('sim_arm', {'hardware': 'gazebo'}).urdf_xml
    with pytest.raises(ValueError):
        spec.lower[0] = 0.0  # read-only arrays


def _params():
    return yaml.safe_load(YAML.read_text())


def _write(tmp_path, doc):
    r = doc['/**']['ros__parameters']['robot']
    r['urdf'] = str(XACRO)  # absolute path form
    p = tmp_path / 'robot.yaml'
    p.write_text(yaml.safe_dump(doc))
    return p


def _mutate(path, value):
    doc = _params()
    node = doc['/**']['ros__parameters']['robot']
    keys = path.split('.')
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


@pytest.mark.parametrize('path, value, match', [
    ('arm_joints', KeyError, r'robot\.arm_joints: missing'),
    ('home', KeyError, r'robot\.home: missing'),
    ('home', [0.0, 0.0], r'robot\.home: expected length 6'),
    ('home', [0, 0, 0, 0, 0, 9.0], r'robot\.home: joint6=9.0 outside limits'),
    ('arm_joints', ['joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'nope'],
     r"robot\.arm_joints: joint 'nope' not in URDF"),
    ('tool_frame', 'no_such_link', r"robot\.tool_frame: link 'no_such_link' not in URDF"),
    ('workspace.min', [0.0, 0.0], r'robot\.workspace\.min: expected length 3'),
    ('workspace.max', [0.0, 0.0, 0.0], r'robot\.workspace: min .* must be < max'),
    ('velocity_scale', 1.5, r'robot\.velocity_scale'),
    ('joint_limits', {'joint2': {'upper': 3.0}}, r'robot\.joint_limits\.joint2\.upper: .*loosens'),
    ('topics.colour', '/x', r'robot\.topics\.colour: unknown'),
    ('urdf', '/does/not/exist.urdf.xacro', r'robot\.urdf: file not found'),
])
def test_bad_yaml_names_the_field(tmp_path, path, value, match):
    doc = _mutate(path, value)
    p = tmp_path / 'robot.yaml'
    if path != 'urdf':
        p = _write(tmp_path, doc)
    else:
        p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=match):
        load_robot_config(p)


def test_config_may_tighten_limits(tmp_path):
    doc = _mutate('joint_limits', {'joint2': {'lower': -1.0, 'upper': 1.0, 'velocity': 1.0}})
    doc['/**']['ros__parameters']['robot']['velocity_scale'] = 0.5
    spec = load_robot_config(_write(tmp_path, doc))
    assert spec.lower[1] == -1.0 and spec.upper[1] == 1.0 and spec.velocity[1] == 1.0
    assert spec.velocity[0] == pytest.approx(1.0)  # 2.0 * 0.5


def test_missing_file_and_section(tmp_path):
    with pytest.raises(ValueError, match='no such file'):
        load_robot_config(tmp_path / 'nope.yaml')
    p = tmp_path / 'x.yaml'
    p.write_text('foo: 1\n')
    with pytest.raises(ValueError, match='ros__parameters'):
        load_robot_config(p)
    assert isinstance(Path(package_path()), Path)


def test_controllers_yaml_matches_urdf(spec):
    doc = yaml.safe_load(package_path('config', 'sim_arm_controllers.yaml').read_text())
    cm = doc['controller_manager']['ros__parameters']
    assert {'joint_state_broadcaster', 'arm_controller', 'gripper_controller'} <= set(cm)
    arm = doc['arm_controller']['ros__parameters']
    assert tuple(arm['joints']) == spec.arm_joints
    assert cm['arm_controller']['type'].endswith('JointTrajectoryController')
    grip = doc['gripper_controller']['ros__parameters']
    assert grip['joints'] == [spec.gripper_joints[0]] and grip['interface_name'] == 'position'
    assert spec.trajectory_topic == '/arm_controller/joint_trajectory'


def test_gazebo_launch_is_valid_python_and_names_existing_files():
    import ast

    src = package_path('launch', 'gazebo.launch.py').read_text()
    tree = ast.parse(src)
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)
    for rel in ("'urdf', 'sim_arm.urdf.xacro'", "'config', 'sim_arm_controllers.yaml'"):
        assert rel in src
    assert 'hardware:=gazebo' in src
