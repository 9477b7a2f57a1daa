"""The package metadata and the build wiring agree with the files in the tree."""

import re
from pathlib import Path

from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_valid_format_3_with_the_real_dependencies():
    package = parse_package(str(ROOT / "package.xml"))  # raises InvalidPackage on errors
    package.validate()
    assert package.package_format == 3 and package.name == "roboalign_ros"
    names = {d.name for d in package.build_depends + package.exec_depends}
    for needed in ("rclpy", "sensor_msgs", "trajectory_msgs", "geometry_msgs", "std_srvs",
                   "diagnostic_msgs", "std_msgs", "builtin_interfaces", "moveit_py",
                   "realsense2_camera", "lifecycle_msgs"):
        assert needed in names, f"package.xml lacks {needed}"
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    assert package.get_build_type() == "ament_cmake"


def test_every_interface_file_is_generated():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    listed = set(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"', cmake))
    present = {f"{p.parent.name}/{p.name}" for p in ROOT.glob("msg/*.msg")} | \
              {f"{p.parent.name}/{p.name}" for p in ROOT.glob("srv/*.srv")}
    assert listed == present


def test_every_installed_node_has_a_main():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    nodes = re.search(r"set\(ROBOALIGN_NODES\s+([^)]*)\)", cmake).group(1).split()
    assert nodes, "no nodes listed in CMakeLists.txt"
    for node in nodes:
        source = ROOT / "roboalign_ros" / "nodes" / f"{node}.py"
        assert source.exists(), f"{node} is installed but {source} is missing"
        assert re.search(r"^def main\(", source.read_text(), re.M), f"{source} has no main()"


def test_installed_launchers_are_executable_like_ros2_run_needs():
    import os
    import subprocess

    from ament_index_python.packages import get_package_prefix

    prefix = Path(get_package_prefix("roboalign_ros"))
    cmake = (ROOT / "CMakeLists.txt").read_text()
    nodes = re.search(r"set\(ROBOALIGN_NODES\s+([^)]*)\)", cmake).group(1).split()
    for node in nodes:
        launcher = prefix / "lib" / "roboalign_ros" / node
        assert launcher.exists() and os.access(launcher, os.X_OK), f"{launcher} not executable"
    cli = prefix / "bin" / "roboalign"
    result = subprocess.run([str(cli), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: roboalign" in result.stdout
    assert all(command in result.stdout for command in ("demo", "node", "train", "serve"))
    bad = subprocess.run([str(cli), "node", "no_such_node"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "invalid choice: 'no_such_node'" in bad.stderr
