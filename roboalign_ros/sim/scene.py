"""Build the MuJoCo tabletop model from the robot's URDF (no second copy of the kinematics).

The URDF (expanded xacro, primitive geometry only) is loaded with ``mujoco.MjSpec``; this module
then adds what a URDF cannot say: a table, free objects, lights, the scene camera (placed at the
URDF camera frame), position actuators, gravity compensation and contact parameters.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import mujoco
import numpy as np

# Collision classes: the arm touches the table and objects but not itself.
ARM_CONTYPE, ARM_CONAFFINITY = 2, 1
WORLD_CONTYPE, WORLD_CONAFFINITY = 1, 3

TABLE_SIZE = (0.45, 0.55, 0.02)  # half extents (x, y, z)
TABLE_CENTER = (0.35, 0.0, -0.02)  # top surface at z = 0 (base_link origin)


WRIST_CAMERA_FRAME = 'wrist_camera_color_optical_frame'  # urdf/sim_arm.urdf.xacro

@dataclass(frozen=True)
class ObjectSpec:
    """A free object on the table.

    ``shape``: ``box`` (size = half extents x, y, z), ``cylinder`` (size = radius, half height)
    or ``bowl`` (size = inner radius, wall half height, wall half thickness).
    """

    name: str
    shape: str
    size: tuple[float, ...]
    rgba: tuple[float, float, float, float]
    mass: float
    colour: str = ''

    @property
    def rest_height(self) -> float:
        """Height of the body origin above the table when resting upright."""
        if self.shape == 'box':
            return self.size[2]
        if self.shape == 'cylinder':
            return self.size[1]
        if self.shape == 'bowl':
            return 0.0
        raise ValueError(f'shape: unknown {self.shape!r}')

    @property
    def footprint(self) -> float:
        """Radius of a disc covering the object seen from above."""
        if self.shape == 'box':
            return math.hypot(self.size[0], self.size[1])
        if self.shape == 'cylinder':
            return self.size[0]
        return self.size[0] + 2 * self.size[2]


DEFAULT_OBJECTS: tuple[ObjectSpec, ...] = (
    ObjectSpec('red_cube', 'box', (0.02, 0.02, 0.02), (0.85, 0.1, 0.1, 1), 0.05, 'red'),
    ObjectSpec('green_block', 'box', (0.025, 0.025, 0.02), (0.15, 0.7, 0.2, 1), 0.08, 'green'),
    ObjectSpec('yellow_cylinder', 'cylinder', (0.02, 0.03), (0.95, 0.8, 0.1, 1), 0.05, 'yellow'),
    ObjectSpec('purple_cube', 'box', (0.02, 0.02, 0.02), (0.55, 0.2, 0.7, 1), 0.05, 'purple'),
    ObjectSpec('blue_bowl', 'bowl', (0.065, 0.022, 0.006), (0.1, 0.3, 0.85, 1), 0.3, 'blue'),
)


@dataclass
class SceneConfig:
    """Physics and scene options of the tabletop model."""

    timestep: float = 0.002
    objects: tuple[ObjectSpec, ...] = DEFAULT_OBJECTS
    arm_kp: tuple[float, ...] = (900.0, 900.0, 600.0, 150.0, 150.0, 100.0)
    arm_kv: tuple[float, ...] = (60.0, 60.0, 35.0, 6.0, 6.0, 4.0)
    arm_armature: float = 0.05
    gripper_kp: float = 600.0
    gripper_kv: float = 20.0
    gripper_force: float = 25.0
    object_friction: tuple[float, float, float] = (1.0, 0.01, 0.0005)
    finger_friction: tuple[float, float, float] = (1.5, 0.02, 0.001)
    camera_fovy_deg: float = 42.0
    offscreen: tuple[int, int] = (1280, 960)
    # Shadow map size; 0 (default) = no shadows. On CPU (OSMesa) shadows are ~90% of a frame's
    # render time (160x120: 36 ms with 1024, 2.7 ms without), and recording demos and
    # evaluating policies are bound by rendering. The policy gets the arm's state directly.
    shadow_size: int = 0
    msaa_samples: int = 0  # multisample anti-aliasing of the offscreen buffer (costly on CPU)
    extra_cameras: dict[str, tuple] = field(default_factory=dict)
    wrist_fovy_deg: float = 70.0  # the wrist camera's (when the URDF has its frame)


def _urdf_with_mujoco_options(urdf_xml: str) -> str:
    """Insert MuJoCo's URDF compiler extension (keep fixed frames, drop visual duplicates)."""
    root = ET.fromstring(urdf_xml)
    for old in root.findall('mujoco'):
        root.remove(old)
    mj = ET.Element('mujoco')
    ET.SubElement(mj, 'compiler', fusestatic='false', discardvisual='true',
                  balanceinertia='true', strippath='false')
    root.insert(0, mj)
    # ros2_control / gazebo tags mean nothing to MuJoCo
    for tag in ('ros2_control', 'gazebo', 'transmission'):
        for e in root.findall(tag):
            root.remove(e)
    return ET.tostring(root, encoding='unicode')


def urdf_link_colours(urdf_xml: str) -> dict[str, tuple[float, ...]]:
    """Map link name -> rgba of its first visual's material (named or inline)."""
    root = ET.fromstring(urdf_xml)
    named = {}
    for m in root.findall('material'):
        c = m.find('color')
        if c is not None and m.get('name'):
            named[m.get('name')] = tuple(float(v) for v in c.get('rgba').split())
    out = {}
    for link in root.findall('link'):
        vis = link.find('visual')
        mat = vis.find('material') if vis is not None else None
        if mat is None:
            continue
        c = mat.find('color')
        if c is not None:
            out[link.get('name')] = tuple(float(v) for v in c.get('rgba').split())
        elif mat.get('name') in named:
            out[link.get('name')] = named[mat.get('name')]
    return out


def _add_object(spec: mujoco.MjSpec, obj: ObjectSpec, cfg: SceneConfig) -> None:
    body = spec.worldbody.add_body(name=obj.name, pos=[0.5, 0.0, obj.rest_height])
    body.add_freejoint(name=f'{obj.name}_free')
    common = dict(rgba=list(obj.rgba), friction=list(cfg.object_friction), condim=4,
                  contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY)
    if obj.shape == 'box':
        body.add_geom(name=f'{obj.name}_geom', type=mujoco.mjtGeom.mjGEOM_BOX,
                      size=list(obj.size), mass=obj.mass, **common)
    elif obj.shape == 'cylinder':
        body.add_geom(name=f'{obj.name}_geom', type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                      size=[obj.size[0], obj.size[1], 0], mass=obj.mass, **common)
    elif obj.shape == 'bowl':
        r, hh, ht = obj.size
        n_walls = 16
        m_each = obj.mass / (n_walls + 2)
        body.add_geom(name=f'{obj.name}_bottom', type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                      size=[r + ht, 0.004, 0], pos=[0, 0, 0.004], mass=2 * m_each, **common)
        seg = 2 * (r + ht) * math.tan(math.pi / n_walls) + 0.002
        for k in range(n_walls):
            a = 2 * math.pi * k / n_walls
            body.add_geom(name=f'{obj.name}_wall{k}', type=mujoco.mjtGeom.mjGEOM_BOX,
                          size=[ht, seg / 2, hh], mass=m_each,
                          pos=[(r + ht) * math.cos(a), (r + ht) * math.sin(a), hh],
                          quat=[math.cos(a / 2), 0, 0, math.sin(a / 2)], **common)
    else:
        raise ValueError(f'objects.{obj.name}.shape: unknown {obj.shape!r}')


def build_tabletop_spec(robot, cfg: SceneConfig | None = None) -> mujoco.MjSpec:
    """Return the MjSpec of ``robot`` (a RobotSpec) on a table with ``cfg.objects``."""
    cfg = cfg or SceneConfig()
    spec = mujoco.MjSpec.from_string(_urdf_with_mujoco_options(robot.urdf_xml))
    spec.modelname = f'{robot.name}_tabletop'
    spec.option.timestep = cfg.timestep
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.visual.global_.offwidth, spec.visual.global_.offheight = cfg.offscreen
    spec.visual.quality.shadowsize = cfg.shadow_size
    spec.visual.quality.offsamples = cfg.msaa_samples
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.4, 0.4, 0.4]
    spec.stat.extent = 1.5
    spec.stat.center = [0.35, 0.0, 0.2]

    # --- arm: colours from the URDF materials, collision classes, gravity compensation
    colours = urdf_link_colours(robot.urdf_xml)
    for body in spec.bodies:
        if body.name == 'world':
            continue
        body.gravcomp = 1.0
        for g in body.geoms:
            g.contype, g.conaffinity = ARM_CONTYPE, ARM_CONAFFINITY
            g.rgba = list(colours.get(body.name, (0.7, 0.7, 0.7, 1.0)))
            if body.name.startswith('finger') or body.name == 'hand':
                g.friction = list(cfg.finger_friction)
                g.condim = 4

    # --- tool site (FK comparisons, visual marker off by default)
    tool = spec.body(robot.tool_frame)
    tool.add_site(name='tool', size=[0.005, 0, 0], rgba=[1, 0, 0, 0], group=4)

    # --- table, floor, lights
    spec.add_texture(name='sky', type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT, rgb1=[0.55, 0.6, 0.65],
                     rgb2=[0.2, 0.22, 0.25], width=256, height=256)
    spec.add_texture(name='grid', type=mujoco.mjtTexture.mjTEXTURE_2D,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER, rgb1=[0.25, 0.27, 0.3],
                     rgb2=[0.3, 0.32, 0.35], width=256, height=256)
    spec.add_material(name='floor', textures=['', 'grid'], texrepeat=[8, 8])
    wb = spec.worldbody
    wb.add_geom(name='floor', type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.1],
                pos=[0, 0, -0.75], material='floor', contype=WORLD_CONTYPE,
                conaffinity=WORLD_CONAFFINITY)
    wb.add_geom(name='table', type=mujoco.mjtGeom.mjGEOM_BOX, size=list(TABLE_SIZE),
                pos=list(TABLE_CENTER), rgba=[0.72, 0.6, 0.45, 1],
                friction=[1.0, 0.01, 0.0005], contype=WORLD_CONTYPE,
                conaffinity=WORLD_CONAFFINITY)
    for sx in (-1, 1):
        for sy in (-1, 1):
            x = TABLE_CENTER[0] + sx * (TABLE_SIZE[0] - 0.04)
            y = TABLE_CENTER[1] + sy * (TABLE_SIZE[1] - 0.04)
            wb.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.025, 0.025, 0.365],
                        pos=[x, y, -0.04 - 0.365], rgba=[0.4, 0.3, 0.2, 1], contype=0,
                        conaffinity=0)
    wb.add_light(name='key', pos=[0.3, -0.6, 1.5], dir=[0.1, 0.4, -1.0],
                 diffuse=[0.6, 0.6, 0.6], specular=[0.2, 0.2, 0.2], castshadow=True)
    wb.add_light(name='fill', pos=[0.6, 0.8, 1.2], dir=[-0.2, -0.5, -1.0],
                 diffuse=[0.3, 0.3, 0.3], specular=[0, 0, 0], castshadow=False)

    # --- scene camera at the URDF optical frame (MuJoCo cameras look along -z, y up:
    #     a half turn about x maps the optical frame z-forward / y-down onto it)
    cam_body = spec.body(robot.camera_frame)
    cam_body.add_camera(name='scene', quat=[0, 1, 0, 0], fovy=cfg.camera_fovy_deg)
    for name, (frame, fovy) in cfg.extra_cameras.items():
        spec.body(frame).add_camera(name=name, quat=[0, 1, 0, 0], fovy=fovy)
    # the URDF's optional wrist camera (xacro wrist_camera:=true): a camera named "wrist"
    wrist = spec.body(WRIST_CAMERA_FRAME)
    if wrist is not None and 'wrist' not in cfg.extra_cameras:
        wrist.add_camera(name='wrist', quat=[0, 1, 0, 0], fovy=cfg.wrist_fovy_deg)

    # --- objects
    for obj in cfg.objects:
        _add_object(spec, obj, cfg)

    # --- actuators: position servos on the arm joints and the first gripper joint
    for i, j in enumerate(robot.arm_joints):
        spec.joint(j).armature = cfg.arm_armature
        act = spec.add_actuator(name=j, target=j, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=cfg.arm_kp[i], kv=cfg.arm_kv[i])
        act.ctrlrange = [float(robot.lower[i]), float(robot.upper[i])]
        act.ctrllimited = True
        act.forcerange = [-float(robot.effort[i]), float(robot.effort[i])]
        act.forcelimited = True
    if robot.gripper_joints:
        g = robot.gripper_joints[0]
        lo, hi = sorted((robot.gripper_closed, robot.gripper_open))
        act = spec.add_actuator(name='gripper', target=g, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=cfg.gripper_kp, kv=cfg.gripper_kv)
        act.ctrlrange = [lo, hi]
        act.ctrllimited = True
        force = min(cfg.gripper_force, robot.gripper_effort)
        act.forcerange = [-force, force]
        act.forcelimited = True
    return spec


def build_tabletop_model(robot, cfg: SceneConfig | None = None) -> mujoco.MjModel:
    """Compile :func:`build_tabletop_spec`."""
    return build_tabletop_spec(robot, cfg).compile()


def quat_to_yaw(q: np.ndarray) -> float:
    """Yaw (rad about z) of a MuJoCo ``[w, x, y, z]`` quaternion."""
    w, x, y, z = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
