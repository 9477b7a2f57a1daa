"""pip install of the ROS-free library and the ``roboalign`` CLI (training machines, no ROS).

Inside a ROS 2 workspace the package is built by colcon from CMakeLists.txt instead, which also
generates the messages and installs the nodes, launch files, config and URDF.
"""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def requirements() -> list[str]:
    """Core requirements: requirements/base.txt without the test and lint tools."""
    lines = (here / "requirements" / "base.txt").read_text().splitlines()
    reqs = []
    for line in lines:
        if line.startswith("# tests"):
            break
        if line.strip() and not line.startswith("#"):
            reqs.append(line.strip())
    return reqs


def share_files() -> list[tuple[str, list[str]]]:
    """config/, urdf/, launch/, scripts/ and models/ files by folder under share/roboalign_ros."""
    groups: dict[str, list[str]] = {}
    for folder in ("config", "urdf", "launch", "scripts", "models"):
        for path in sorted((here / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                relative = path.relative_to(here)
                groups.setdefault(f"share/roboalign_ros/{relative.parent}", []).append(
                    str(relative))
    return sorted(groups.items())


setup(
    name="roboalign_ros",
    version="0.1.0",
    description="Reasoning VLA policies (RoboAlign) for ROS 2 arms: model, training, data, sim",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["roboalign_ros", "roboalign_ros.*"]),
    # launch/config/urdf go where ament_index would put them (sub-folders kept), so robot
    # configs resolve the same way with or without ROS (roboalign_ros.robot.package_path).
    data_files=share_files(),
    install_requires=requirements(),
    entry_points={"console_scripts": ["roboalign = roboalign_ros.cli:main"]},
)
