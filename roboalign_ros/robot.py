"""Robot description + configuration loading (ROS-free).

A robot is described by two files of this package:

- ``urdf/<robot>.urdf.xacro``: kinematics, inertials, joint limits, frames, ros2_control tags.
  It is the single source of truth for joint names and limits.
- ``config/robots/<robot>.yaml``: a ROS 2 parameter file (``/**: ros__parameters: robot: {...}``)
  naming the URDF, the frames and joints the policy uses, the home pose, the workspace box and
  the default topics. It may only *tighten* the URDF limits.

:func:`load_robot_config` reads both and returns a frozen :class:`RobotSpec`.

Schema of the ``robot`` mapping (``*`` = required)::

    name*: sim_arm
    urdf*: sim_arm.urdf.xacro        # relative to urdf/, absolute, or package://pkg/path
    xacro_args: {hardware: mock}     # string values passed to xacro
    base_frame*: base_link
    tool_frame*: tool0
    camera_frame*: camera_color_optical_frame
    arm_joints*: [joint1, ...]
    gripper_joints: [finger_left_joint, finger_right_joint]   # first one is commanded
    gripper_open: 0.04               # joint value for opening 1.0 (default: URDF upper)
    gripper_closed: 0.0              # joint value for opening 0.0 (default: URDF lower)
    home*: [...]                     # arm joint values, inside the limits
    velocity_scale: 1.0              # in (0, 1], scales the URDF velocity limits
    effort_scale: 1.0                # in (0, 1], scales the URDF effort limits
    joint_limits: {joint2: {lower: -1.5, upper: 1.5}}   # optional, tighten only
    workspace: {min*: [x, y, z], max*: [x, y, z]}       # tool position box in base_frame
    controller_rate: 100.0           # Hz
    camera: {fovy_deg: 42.0, width: 640, height: 480}
    topics: {trajectory, gripper, servo, color, depth, camera_info, joint_states}
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE_NAME = 'roboalign_ros'

DEFAULT_TOPICS: dict[str, str] = {
    'trajectory': '/arm_controller/joint_trajectory',
    'gripper': '/gripper_controller/commands',
    'servo': '/servo_node/delta_twist_cmds',
    'color': '/camera/camera/color/image_raw',
    'depth': '/camera/camera/aligned_depth_to_color/image_raw',
    'camera_info': '/camera/camera/color/camera_info',
    'joint_states': '/joint_states',
}


def package_path(*parts: str) -> Path:
    """Return the path of a file in this package's share directory.

    From a source checkout (this module next to ``urdf/`` and ``config/``) the source tree is
    used, so edits take effect without reinstalling; otherwise the installed share directory
    from ``ament_index_python``. The path is not checked for existence.
    """
    source_root = Path(__file__).resolve().parent.parent
    if (source_root / 'urdf').is_dir() and (source_root / 'config').is_dir():
        return source_root.joinpath(*parts)
    try:  # installed: <prefix>/share/roboalign_ros/...
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(PACKAGE_NAME))
        candidate = share.joinpath(*parts)
        if candidate.exists():
            return candidate
    except Exception:  # noqa: BLE001 - not installed / no ament index: use the source tree
        pass
    pip_share = Path(sys.prefix) / 'share' / PACKAGE_NAME  # `pip install .` (setup.py data_files)
    if pip_share.is_dir():
        return pip_share.joinpath(*parts)
    return Path(__file__).resolve().parent.parent.joinpath(*parts)


def _resolve_package_url(url: str) -> Path:
    """Resolve ``package://pkg/rel/path`` (ament index, or this source tree for our package)."""
    rest = url[len('package://'):]
    pkg, _, rel = rest.partition('/')
    if pkg == PACKAGE_NAME:
        return package_path(*Path(rel).parts)
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(pkg)) / rel
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f'robot.urdf: cannot resolve {url!r} ({exc})') from exc


@dataclass(frozen=True, eq=False)
class RobotSpec:
    """Everything the ROS-free core needs to know about an arm (arrays in arm_joints order)."""

    name: str
    urdf_xml: str
    urdf_path: str
    base_frame: str
    tool_frame: str
    camera_frame: str
    arm_joints: tuple[str, ...]
    gripper_joints: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    home: np.ndarray
    workspace_min: np.ndarray
    workspace_max: np.ndarray
    gripper_open: float
    gripper_closed: float
    gripper_velocity: float
    gripper_effort: float
    controller_rate: float = 100.0
    camera_fovy_deg: float = 42.0
    camera_width: int = 640
    camera_height: int = 480
    topics: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    xacro_args: Mapping[str, str] = field(default_factory=dict)
    # how the gripper is commanded: 'topic' (Float64MultiArray to a forward_command_controller,
    # topics.gripper) or 'action' (control_msgs/action/GripperCommand at topics.gripper, as
    # franka_gripper's ~/gripper_action and gripper_controllers offer)
    gripper_interface: str = 'topic'

    # Convenience accessors for the topic names used across nodes.
    @property
    def trajectory_topic(self) -> str:
        """JointTrajectory command topic of the arm controller."""
        return self.topics['trajectory']

    @property
    def gripper_topic(self) -> str:
        """Gripper command topic (Float64MultiArray, opening in [0, 1])."""
        return self.topics['gripper']

    @property
    def servo_topic(self) -> str:
        """MoveIt Servo twist command topic."""
        return self.topics['servo']

    @property
    def color_topic(self) -> str:
        """Scene camera color image topic."""
        return self.topics['color']

    @property
    def depth_topic(self) -> str:
        """Scene camera aligned depth topic."""
        return self.topics['depth']

    @property
    def camera_info_topic(self) -> str:
        """Scene camera CameraInfo topic."""
        return self.topics['camera_info']

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Arm joints followed by gripper joints (the /joint_states order of the sim)."""
        return self.arm_joints + self.gripper_joints

    def gripper_to_joint(self, opening: float) -> float:
        """Map a gripper opening in [0, 1] (0 closed) to the commanded gripper joint value."""
        o = min(max(float(opening), 0.0), 1.0)
        return self.gripper_closed + o * (self.gripper_open - self.gripper_closed)

    def joint_to_gripper(self, value: float) -> float:
        """Inverse of :meth:`gripper_to_joint`, clipped to [0, 1]."""
        span = self.gripper_open - self.gripper_closed
        return min(max((float(value) - self.gripper_closed) / span, 0.0), 1.0) if span else 0.0


# --------------------------------------------------------------------------------------------
# URDF helpers


@dataclass(frozen=True)
class UrdfJoint:
    """The parts of a URDF joint the core uses."""

    name: str
    type: str
    lower: float
    upper: float
    velocity: float
    effort: float
    mimic: str | None = None


def expand_xacro(path: str | os.PathLike, args: Mapping[str, Any] | None = None) -> str:
    """Expand a ``.xacro`` file (or read a plain ``.urdf``) and return the URDF XML string."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f'robot.urdf: file not found: {path}')
    if path.suffix != '.xacro':
        return path.read_text()
    try:
        import xacro
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ImportError('expanding a .xacro needs the `xacro` package '
                          '(pip install xacro)') from exc
    mappings = {str(k): str(v) for k, v in (args or {}).items()}
    try:
        doc = xacro.process_file(str(path), mappings=mappings)
    except Exception as exc:  # noqa: BLE001 - xacro raises its own exception types
        raise ValueError(f'robot.urdf: xacro failed on {path}: {exc}') from exc
    return doc.toprettyxml(indent='  ')


def parse_urdf_joints(urdf_xml: str) -> tuple[dict[str, UrdfJoint], set[str]]:
    """Return ``({joint name: UrdfJoint}, {link names})`` from a URDF string."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(urdf_xml)
    links = {e.get('name') for e in root.findall('link')}
    joints: dict[str, UrdfJoint] = {}
    for e in root.findall('joint'):
        jtype = e.get('type', '')
        lim = e.find('limit')
        mimic = e.find('mimic')
        inf = math.inf

        def lim_val(key: str, default: float, lim=lim) -> float:
            return float(lim.get(key, default)) if lim is not None else default

        if jtype == 'continuous':
            lower, upper = -inf, inf
        else:
            lower, upper = lim_val('lower', 0.0), lim_val('upper', 0.0)
        joints[e.get('name')] = UrdfJoint(
            name=e.get('name'), type=jtype, lower=lower, upper=upper,
            velocity=lim_val('velocity', inf), effort=lim_val('effort', inf),
            mimic=mimic.get('joint') if mimic is not None else None)
    return joints, links


# --------------------------------------------------------------------------------------------
# YAML loading


def _robot_yaml_path(name_or_path: str | os.PathLike) -> Path:
    s = str(name_or_path)
    if s.endswith(('.yaml', '.yml')) or os.sep in s or Path(s).exists():
        return Path(s)
    return package_path('config', 'robots', f'{s}.yaml')


def _require(d: Mapping[str, Any], key: str, prefix: str = 'robot') -> Any:
    if key not in d or d[key] is None:
        raise ValueError(f'{prefix}.{key}: missing required field')
    return d[key]


def _str(d: Mapping[str, Any], key: str, prefix: str = 'robot', default: str | None = None) -> str:
    v = d.get(key, default) if default is not None else _require(d, key, prefix)
    if not isinstance(v, str) or not v:
        raise ValueError(f'{prefix}.{key}: expected a non-empty string, got {v!r}')
    return v


def _names(d: Mapping[str, Any], key: str, required: bool = True) -> tuple[str, ...]:
    v = _require(d, key) if required else d.get(key, [])
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ValueError(f'robot.{key}: expected a list of joint names, got {v!r}')
    if len(set(v)) != len(v):
        raise ValueError(f'robot.{key}: duplicate joint names in {list(v)}')
    return tuple(v)


def _vector(v: Any, key: str, n: int) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'robot.{key}: expected {n} numbers, got {v!r}') from exc
    if arr.shape != (n,):
        raise ValueError(f'robot.{key}: expected length {n}, got shape {arr.shape} ({v!r})')
    if not np.all(np.isfinite(arr)):
        raise ValueError(f'robot.{key}: values must be finite, got {v!r}')
    return arr


def _number(d: Mapping[str, Any], key: str, default: float, lo: float, hi: float,
            prefix: str = 'robot', lo_open: bool = False) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f'{prefix}.{key}: expected a number, got {v!r}')
    v = float(v)
    if not (lo < v if lo_open else lo <= v) or v > hi or not math.isfinite(v):
        lo_s = '(' if lo_open else '['
        raise ValueError(f'{prefix}.{key}: {v} outside {lo_s}{lo}, {hi}]')
    return v


def load_robot_config(name_or_path: str | os.PathLike,
                      xacro_args: Mapping[str, Any] | None = None) -> RobotSpec:
    """Load ``config/robots/<name>.yaml`` (or a YAML path) and the URDF it names.

    ``xacro_args`` override the YAML's ``xacro_args`` (e.g. ``{'hardware': 'gazebo'}``).
    Raises ``ValueError`` naming the offending field on any inconsistency.
    """
    import yaml

    path = _robot_yaml_path(name_or_path)
    if not path.exists():
        raise ValueError(f'robot config: no such file {path} (from {str(name_or_path)!r})')
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f'robot config {path}: invalid YAML: {exc}') from exc
    return robot_spec_from_params(doc, base_dir=path.parent, xacro_args=xacro_args,
                                  source=str(path))


def _extract_robot(doc: Any, source: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ValueError(f'robot config {source}: expected a mapping at top level')
    if 'robot' in doc and isinstance(doc['robot'], Mapping):  # bare form
        return doc['robot']
    for node_params in doc.values():
        if isinstance(node_params, Mapping) and 'ros__parameters' in node_params:
            params = node_params['ros__parameters']
            if isinstance(params, Mapping) and isinstance(params.get('robot'), Mapping):
                return params['robot']
    raise ValueError(f'robot config {source}: missing `/**: ros__parameters: robot:` mapping')


def _resolve_urdf(urdf: str, base_dir: Path | None) -> Path:
    if urdf.startswith('package://'):
        return _resolve_package_url(urdf)
    if urdf.startswith('file://'):
        return Path(urdf[len('file://'):])
    p = Path(urdf)
    if p.is_absolute():
        return p
    for cand in (package_path('urdf', urdf), (base_dir / urdf) if base_dir else None):
        if cand is not None and cand.exists():
            return cand
    return package_path('urdf', urdf)


def robot_spec_from_params(doc: Any, base_dir: Path | None = None,
                           xacro_args: Mapping[str, Any] | None = None,
                           source: str = '<params>') -> RobotSpec:
    """Build a :class:`RobotSpec` from a parsed params document (see module docstring)."""
    r = _extract_robot(doc, source)

    name = _str(r, 'name')
    urdf_path = _resolve_urdf(_str(r, 'urdf'), base_dir)
    args = dict(r.get('xacro_args') or {})
    if not isinstance(args, Mapping):
        raise ValueError('robot.xacro_args: expected a mapping of strings')
    args.update(xacro_args or {})
    args = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in args.items()}
    urdf_xml = expand_xacro(urdf_path, args)
    joints, links = parse_urdf_joints(urdf_xml)

    base_frame = _str(r, 'base_frame')
    tool_frame = _str(r, 'tool_frame')
    camera_frame = _str(r, 'camera_frame')
    # camera_frame may live outside the arm's URDF (a real camera's TF comes from its driver
    # and a calibration), so only the arm's own frames are checked
    for key, frame in (('base_frame', base_frame), ('tool_frame', tool_frame)):
        if frame not in links:
            raise ValueError(f'robot.{key}: link {frame!r} not in URDF {urdf_path.name}')

    arm = _names(r, 'arm_joints')
    if not arm:
        raise ValueError('robot.arm_joints: at least one joint required')
    gripper = _names(r, 'gripper_joints', required=False)
    for key, group in (('arm_joints', arm), ('gripper_joints', gripper)):
        for j in group:
            if j not in joints:
                raise ValueError(f'robot.{key}: joint {j!r} not in URDF {urdf_path.name}')
            if joints[j].type not in ('revolute', 'prismatic', 'continuous'):
                raise ValueError(f'robot.{key}: joint {j!r} is {joints[j].type}, not movable')
    if set(arm) & set(gripper):
        both = sorted(set(arm) & set(gripper))
        raise ValueError(f'robot.gripper_joints: {both} also in arm_joints')

    n = len(arm)
    lower = np.array([joints[j].lower for j in arm])
    upper = np.array([joints[j].upper for j in arm])
    velocity = np.array([joints[j].velocity for j in arm])
    effort = np.array([joints[j].effort for j in arm])

    velocity = velocity * _number(r, 'velocity_scale', 1.0, 0.0, 1.0, lo_open=True)
    effort = effort * _number(r, 'effort_scale', 1.0, 0.0, 1.0, lo_open=True)

    overrides = r.get('joint_limits') or {}
    if not isinstance(overrides, Mapping):
        raise ValueError('robot.joint_limits: expected a mapping joint -> {lower, upper, ...}')
    for j, lim in overrides.items():
        if j not in arm:
            raise ValueError(f'robot.joint_limits.{j}: not one of arm_joints')
        if not isinstance(lim, Mapping):
            raise ValueError(f'robot.joint_limits.{j}: expected a mapping')
        i = arm.index(j)
        for key, arr, tighter in (('lower', lower, np.greater_equal),
                                  ('upper', upper, np.less_equal),
                                  ('velocity', velocity, np.less_equal),
                                  ('effort', effort, np.less_equal)):
            if key in lim:
                v = _number(lim, key, 0.0, -math.inf, math.inf, prefix=f'robot.joint_limits.{j}')
                if not tighter(v, arr[i]):
                    raise ValueError(f'robot.joint_limits.{j}.{key}: {v} loosens the URDF limit '
                                     f'{arr[i]} (config may only tighten)')
                arr[i] = v
        extra = set(lim) - {'lower', 'upper', 'velocity', 'effort'}
        if extra:
            raise ValueError(f'robot.joint_limits.{j}: unknown keys {sorted(extra)}')
        if lower[i] >= upper[i]:
            raise ValueError(f'robot.joint_limits.{j}: lower {lower[i]} >= upper {upper[i]}')

    home = _vector(_require(r, 'home'), 'home', n)
    bad = np.nonzero((home < lower - 1e-9) | (home > upper + 1e-9))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(f'robot.home: {arm[i]}={home[i]} outside limits '
                         f'[{lower[i]}, {upper[i]}]')

    ws = _require(r, 'workspace')
    if not isinstance(ws, Mapping):
        raise ValueError('robot.workspace: expected {min: [x, y, z], max: [x, y, z]}')
    ws_min = _vector(_require(ws, 'min', 'robot.workspace'), 'workspace.min', 3)
    ws_max = _vector(_require(ws, 'max', 'robot.workspace'), 'workspace.max', 3)
    if np.any(ws_min >= ws_max):
        raise ValueError(f'robot.workspace: min {ws_min.tolist()} must be < max {ws_max.tolist()}')

    if gripper:
        g = joints[gripper[0]]
        g_open = _number(r, 'gripper_open', g.upper, g.lower, g.upper)
        g_closed = _number(r, 'gripper_closed', g.lower, g.lower, g.upper)
        g_vel, g_eff = g.velocity, g.effort
    else:
        g_open = g_closed = 0.0
        g_vel = g_eff = 0.0

    rate = _number(r, 'controller_rate', 100.0, 0.0, 10000.0, lo_open=True)
    cam = r.get('camera') or {}
    if not isinstance(cam, Mapping):
        raise ValueError('robot.camera: expected a mapping {fovy_deg, width, height}')
    fovy = _number(cam, 'fovy_deg', 42.0, 1.0, 179.0, prefix='robot.camera')
    width = int(_number(cam, 'width', 640, 1, 8192, prefix='robot.camera'))
    height = int(_number(cam, 'height', 480, 1, 8192, prefix='robot.camera'))

    topics = dict(DEFAULT_TOPICS)
    user_topics = r.get('topics') or {}
    if not isinstance(user_topics, Mapping):
        raise ValueError('robot.topics: expected a mapping')
    for k, v in user_topics.items():
        if k not in DEFAULT_TOPICS:
            raise ValueError(f'robot.topics.{k}: unknown topic key '
                             f'(known: {sorted(DEFAULT_TOPICS)})')
        if not isinstance(v, str) or not v:
            raise ValueError(f'robot.topics.{k}: expected a topic name, got {v!r}')
        topics[k] = v

    gripper_interface = r.get('gripper_interface', 'topic')
    if gripper_interface not in ('topic', 'action'):
        raise ValueError(f"robot.gripper_interface: {gripper_interface!r} is not 'topic' "
                         "(Float64MultiArray) or 'action' (control_msgs GripperCommand)")

    for arr in (lower, upper, velocity, effort, home, ws_min, ws_max):
        arr.setflags(write=False)
    return RobotSpec(
        name=name, urdf_xml=urdf_xml, urdf_path=str(urdf_path), base_frame=base_frame,
        tool_frame=tool_frame, camera_frame=camera_frame, arm_joints=arm, gripper_joints=gripper,
        lower=lower, upper=upper, velocity=velocity, effort=effort, home=home,
        workspace_min=ws_min, workspace_max=ws_max, gripper_open=g_open,
        gripper_closed=g_closed, gripper_velocity=g_vel, gripper_effort=g_eff,
        controller_rate=rate, camera_fovy_deg=fovy, camera_width=width, camera_height=height,
        topics=topics, xacro_args=args, gripper_interface=gripper_interface)
