"""Issue 26: gazebo.launch.py's plugin names by distro, the hardware:=real plugin, and what
bringup.launch.py asks of realsense2_camera and MoveIt.

Gazebo, realsense2_camera and MoveIt cannot run here; the launch files run against the
recording stand-ins of test_launch_wiring.py, and the xacro they would expand is expanded for
real. The names checked are those of the upstream sources:
- github.com/ros-controls/gz_ros2_control: branch jazzy gz_ros2_control/gz_hardware_plugins.xml
  (gz_ros2_control/GazeboSimSystem) and gz_ros2_control_demos/urdf/test_cart_position.xacro.urdf
  (gz_ros2_control-system, gz_ros2_control::GazeboSimROS2ControlPlugin); branch humble
  ign_ros2_control/ign_hardware_plugins.xml (ign_ros2_control/IgnitionSystem) and
  ign_ros2_control_demos/urdf/test_cart_position.xacro.urdf (ign_ros2_control-system,
  ign_ros2_control::IgnitionROS2ControlPlugin).
- github.com/IntelRealSense/realsense-ros realsense2_camera/launch/rs_launch.py: tags 4.55.1,
  4.56.1 (rgb_camera.color_profile, depth_module.depth_profile), 4.51.1, 4.54.1
  (rgb_camera.profile, depth_module.profile), align_depth.enable in all.
"""

import json
import sys
import xml.etree.ElementTree as ET

import pytest
from test_launch_wiring import (  # noqa: F401  (fake_launch is a fixture)
    ROOT,
    Context,
    _perform,
    declared_defaults,
    fake_launch,
    load_description,
    opaque,
    walk,
)

from roboalign_ros.camera.profile import CameraProfile, camera_profile
from roboalign_ros.robot import expand_xacro

GZ = {"gz": ("gz_ros2_control/GazeboSimSystem", "gz_ros2_control-system",
             "gz_ros2_control::GazeboSimROS2ControlPlugin"),
      "ign": ("ign_ros2_control/IgnitionSystem", "ign_ros2_control-system",
              "ign_ros2_control::IgnitionROS2ControlPlugin")}


@pytest.fixture
def launch(fake_launch, monkeypatch):  # noqa: F811
    monkeypatch.setattr(fake_launch["launch.substitutions"].LaunchConfiguration, "perform",
                        _perform, raising=False)
    return fake_launch


def missing(monkeypatch, packages):
    monkeypatch.setattr(sys.modules["test_launch_wiring"], "MISSING", set(packages))


def xacro_args(description, values):
    """The xacro command of robot_state_publisher's robot_description, as key:=value args."""
    (rsp,) = [a for a in walk(description.args, None) if type(a).__name__ == "Node"
              and a.kwargs["executable"] == "robot_state_publisher"]
    command = rsp.kwargs["parameters"][0]["robot_description"].args[0]
    assert type(command).__name__ == "Command"
    parts = []
    for part in command.args[0]:
        if type(part).__name__ == "LaunchConfiguration":
            parts.append(values[part.args[0]])
        elif isinstance(part, str):
            parts.append(part)
        else:  # FindExecutable
            parts.append("xacro")
    words = "".join(parts).split()
    assert words[0] == "xacro"
    return words[1], dict(w.split(":=", 1) for w in words[2:])


@pytest.mark.parametrize("distro, flavour", [("humble", "ign"), ("iron", "gz"), ("jazzy", "gz"),
                                             ("kilted", "gz"), ("rolling", "gz"), ("", "gz")])
def test_gazebo_plugins_follow_the_distro(launch, monkeypatch, distro, flavour):
    monkeypatch.setenv("ROS_DISTRO", distro)
    missing(monkeypatch, [])
    description = load_description(ROOT / "launch" / "gazebo.launch.py")
    values = declared_defaults(description)
    assert values["gazebo"] == flavour
    path, args = xacro_args(description, values)
    assert args["hardware"] == "gazebo" and args["gazebo"] == flavour
    root = ET.fromstring(expand_xacro(path, args))
    plugin, filename, system = GZ[flavour]
    assert [p.text.strip() for p in root.findall("ros2_control/hardware/plugin")] == [plugin]
    (gz,) = root.findall("gazebo/plugin")
    assert (gz.get("filename"), gz.get("name")) == (filename, system)
    assert gz.find("parameters").text.strip().endswith("config/sim_arm_controllers.yaml")
    check, _ = opaque(description, "check_setup")
    assert check(Context(values)) == []


def test_humble_launch_without_ign_ros2_control_names_it(launch, monkeypatch):
    monkeypatch.setenv("ROS_DISTRO", "humble")
    missing(monkeypatch, ["ign_ros2_control"])
    description = load_description(ROOT / "launch" / "gazebo.launch.py")
    check, _ = opaque(description, "check_setup")
    with pytest.raises(RuntimeError, match=r"\['ign_ros2_control'\].*ros-\$ROS_DISTRO-ign-ros2"):
        check(Context(declared_defaults(description)))
    values = dict(declared_defaults(description), gazebo="gz")   # the user asks for gz
    with pytest.raises(RuntimeError, match="gz_ros2_control"):
        missing(monkeypatch, ["gz_ros2_control"])
        check(Context(values))


def test_hardware_real_needs_a_named_plugin():
    xacro = ROOT / "urdf" / "sim_arm.urdf.xacro"
    with pytest.raises(ValueError, match="hardware:=real needs real_plugin"):
        expand_xacro(xacro, {"hardware": "real"})
    root = ET.fromstring(expand_xacro(xacro, {"hardware": "real",
                                              "real_plugin": "my_arm_driver/MyArmSystem"}))
    assert [p.text.strip() for p in root.findall("ros2_control/hardware/plugin")] == \
        ["my_arm_driver/MyArmSystem"]
    with pytest.raises(ValueError, match="'gazebo' must be gz"):
        expand_xacro(xacro, {"hardware": "gazebo", "gazebo": "classic"})
    text = xacro.read_text() + (ROOT / "urdf" / "sim_arm.ros2_control.xacro").read_text()
    assert "RealArmSystem" not in text


# ---------------------------------------------------------------- bringup: RealSense, MoveIt

def test_realsense_gets_the_robot_configs_profile_with_aligned_depth(launch, monkeypatch):
    missing(monkeypatch, [])
    description = load_description(ROOT / "launch" / "bringup.launch.py")
    function, args = opaque(description, "camera_driver")
    values = dict(declared_defaults(description), camera="realsense2_camera", robot="fr3",
                  model_path=str(ROOT / "models" / "roboalign_mini_sim"))
    (include,) = function(Context(values), *args)
    source = include.args[0]
    assert source.args[0].endswith("realsense2_camera/launch/rs_launch.py")
    arguments = dict(include.kwargs["launch_arguments"])
    assert arguments["rgb_camera.color_profile"] == "640,480,30"          # 4.55+
    assert arguments["depth_module.depth_profile"] == "640,480,30"
    assert arguments["rgb_camera.profile"] == arguments["depth_module.profile"] == "640,480,30"
    assert arguments["align_depth.enable"] == "true"


def test_camera_profile_refuses_a_checkpoint_of_another_aspect(tmp_path):
    (tmp_path / "vla_config.json").write_text(json.dumps({"image_size": [224, 224]}))
    with pytest.raises(ValueError, match="224x224 images .* 640x480"):
        camera_profile("sim_arm", tmp_path)
    (tmp_path / "vla_config.json").write_text(json.dumps({"image_size": [168, 224]}))
    assert camera_profile("sim_arm", tmp_path) == CameraProfile(640, 480, 30)
    assert camera_profile("ur5e", None).text == "640,480,30"     # no checkpoint: the config


def test_moveit_true_checks_moveit_before_anything_starts(launch, monkeypatch, tmp_path):
    description = load_description(ROOT / "launch" / "bringup.launch.py")
    check, _ = opaque(description, "check_arguments")
    values = declared_defaults(description)
    missing(monkeypatch, ["moveit_py"])
    assert check(Context(values)) == []                    # moveit:=false needs nothing
    with pytest.raises(RuntimeError, match=r"\['moveit_py'\].*moveit-py"):
        check(Context(dict(values, moveit="true")))
    missing(monkeypatch, [])
    assert check(Context(dict(values, moveit="true"))) == []       # config/moveit/sim_arm.yaml
    robot = (ROOT / "config" / "robots" / "sim_arm.yaml").read_text()
    path = tmp_path / "other_arm.yaml"
    path.write_text(robot.replace("name: sim_arm", "name: other_arm"))
    with pytest.raises(RuntimeError, match="MoveIt configuration for other_arm"):
        check(Context(dict(values, moveit="true", robot=str(path))))
