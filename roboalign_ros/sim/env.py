"""TabletopEnv: the MuJoCo arm + table + objects with language-conditioned tasks (no rclpy).

Typical loop::

    env = TabletopEnv()                       # robot 'sim_arm' from config/robots/
    obs = env.reset('pick_red_cube', seed=0)  # or the instruction text
    while not done:
        obs = env.step(q_target, gripper)     # one control period (default 0.01 s)
    rgb, depth = env.render(640, 480)
    instruction, success = env.task_status()

All poses are 4x4 transforms in the robot base frame; ``gripper`` is the opening in [0, 1]
(0 closed, 1 open) as in CONVENTIONS.md.
"""

from __future__ import annotations

import atexit
import math
import os
import weakref
from collections.abc import Mapping
from typing import Any

import mujoco
import numpy as np

from roboalign_ros.robot import RobotSpec, load_robot_config
from roboalign_ros.sim.scene import (
    ObjectSpec,
    SceneConfig,
    build_tabletop_model,
    quat_to_yaw,
)
from roboalign_ros.sim.tasks import MIN_GAP, PLACE_X, PLACE_Y, TASKS, Task, get_task

_LIVE_ENVS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # free GL contexts before interpreter teardown (avoids noisy Renderer.__del__ errors)
    for env in list(_LIVE_ENVS):
        env.close()


def _pose(pos: np.ndarray, mat: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.asarray(mat).reshape(3, 3)
    T[:3, 3] = pos
    return T


class _Offscreen:
    """One offscreen GL context + MuJoCo render context of a fixed size (colour and depth)."""

    def __init__(self, model: mujoco.MjModel, width: int, height: int):
        self.width, self.height = width, height
        self.gl = mujoco.GLContext(width, height)
        self.gl.make_current()
        self.ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.ctx)
        self.scene = mujoco.MjvScene(model, maxgeom=2000)
        self.opt = mujoco.MjvOption()
        self.pert = mujoco.MjvPerturb()
        self.cam = mujoco.MjvCamera()
        self.cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.rect = mujoco.MjrRect(0, 0, width, height)
        self._rgb = np.empty((height, width, 3), dtype=np.uint8)
        self._depth = np.empty((height, width), dtype=np.float32)
        extent = model.stat.extent
        self.near = model.vis.map.znear * extent
        self.far = model.vis.map.zfar * extent

    def render(self, model, data, cam_id: int, depth: bool):
        self.gl.make_current()
        self.cam.fixedcamid = cam_id
        mujoco.mjv_updateScene(model, data, self.opt, self.pert, self.cam,
                               mujoco.mjtCatBit.mjCAT_ALL, self.scene)
        mujoco.mjr_render(self.rect, self.scene, self.ctx)
        mujoco.mjr_readPixels(self._rgb, self._depth if depth else None, self.rect, self.ctx)
        rgb = np.flipud(self._rgb).copy()
        if not depth:
            return rgb, None
        # OpenGL depth buffer in [0, 1] -> metric distance along the optical axis
        z = np.flipud(self._depth)
        n, f = self.near, self.far
        dep = (n / (1.0 - z * (1.0 - n / f))).astype(np.float32)
        return rgb, dep

    def close(self) -> None:
        if self.gl is not None:
            self.gl.make_current()
            self.ctx.free()
            self.gl.free()
            self.gl = None


class TabletopEnv:
    """The simulated arm on a table with coloured objects and task success checks."""

    def __init__(self, robot: str | os.PathLike | RobotSpec = 'sim_arm',
                 control_period: float = 0.01, scene: SceneConfig | None = None,
                 tasks: Mapping[str, Task] | None = None, settle_seconds: float = 0.2):
        self.robot = robot if isinstance(robot, RobotSpec) else load_robot_config(robot)
        self.scene = scene or SceneConfig(camera_fovy_deg=self.robot.camera_fovy_deg)
        self.tasks = TASKS if tasks is None else tasks
        self.model = build_tabletop_model(self.robot, self.scene)
        self.data = mujoco.MjData(self.model)
        dt = self.model.opt.timestep
        if control_period <= 0:
            raise ValueError(f'control_period: must be > 0, got {control_period}')
        self.n_substeps = max(1, int(round(control_period / dt)))
        self.control_period = self.n_substeps * dt
        self.settle_seconds = settle_seconds
        m = self.model
        name2id = mujoco.mj_name2id
        J, B = mujoco.mjtObj.mjOBJ_JOINT, mujoco.mjtObj.mjOBJ_BODY
        self.joint_names = self.robot.arm_joints + self.robot.gripper_joints
        jids = [name2id(m, J, n) for n in self.joint_names]
        if min(jids) < 0:
            raise ValueError(f'robot joints {self.joint_names} not all in the MuJoCo model')
        self._qadr = np.array([m.jnt_qposadr[j] for j in jids])
        self._dadr = np.array([m.jnt_dofadr[j] for j in jids])
        self._n_arm = len(self.robot.arm_joints)
        self._arm_act = np.array([name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, n)
                                  for n in self.robot.arm_joints])
        self._grip_act = name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, 'gripper')
        self._base_bid = name2id(m, B, self.robot.base_frame)
        self._tool_bid = name2id(m, B, self.robot.tool_frame)
        self._cam_id = name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, 'scene')
        self.objects: dict[str, ObjectSpec] = {o.name: o for o in self.scene.objects}
        self._obj_bid = {n: name2id(m, B, n) for n in self.objects}
        self._obj_qadr = {n: m.jnt_qposadr[name2id(m, J, f'{n}_free')] for n in self.objects}
        finger_bodies = [b for b in range(m.nbody)
                         if mujoco.mj_id2name(m, B, b).startswith('finger')]
        self._finger_geoms = [set(np.nonzero(m.geom_bodyid == b)[0].tolist())
                              for b in finger_bodies]
        self._obj_geoms = {n: set(np.nonzero(m.geom_bodyid == b)[0].tolist())
                           for n, b in self._obj_bid.items()}
        self._renderers: dict[tuple[int, int], _Offscreen] = {}
        _LIVE_ENVS.add(self)
        self.task: Task | None = None
        self.seed: int | None = None
        self._initial_obj_pos: dict[str, np.ndarray] = {}
        self._q_target = self.robot.home.copy()
        self._gripper = 1.0
        self._T_base_inv = None
        self.reset_to_home()
        # the base is welded to the world: cache its inverse pose once
        self._T_base_inv = self._base_inv()

    # ----------------------------------------------------------------------------- reset

    def reset_to_home(self) -> None:
        """Arm at home, gripper open, objects in a row across the table (no task)."""
        mujoco.mj_resetData(self.model, self.data)
        self._set_robot_q(self.robot.home, 1.0)
        mujoco.mj_forward(self.model, self.data)
        x, y = PLACE_X[1] - 0.05, PLACE_Y[0]
        for name, obj in self.objects.items():
            y += obj.footprint
            self.set_object_pose(name, (x, y, obj.rest_height + 0.002))
            y += obj.footprint + 0.02
        mujoco.mj_forward(self.model, self.data)
        self.task, self.seed = None, None

    def set_robot_pose(self, q_arm: np.ndarray, gripper: float) -> None:
        """Place the arm at ``q_arm``, gripper opening ``gripper``, at rest, without simulating.

        Kinematics only (objects stay where they are), e.g. to render a scene.
        """
        self._set_robot_q(np.asarray(q_arm, float), float(gripper))
        mujoco.mj_forward(self.model, self.data)

    def _set_robot_q(self, q_arm: np.ndarray, gripper: float) -> None:
        d = self.data
        d.qpos[self._qadr[:self._n_arm]] = q_arm
        g = self.robot.gripper_to_joint(gripper)
        d.qpos[self._qadr[self._n_arm:]] = g
        d.qvel[self._dadr] = 0.0
        self._q_target = np.array(q_arm, dtype=float)
        self._gripper = float(gripper)
        self._apply_ctrl()

    def _apply_ctrl(self) -> None:
        self.data.ctrl[self._arm_act] = self._q_target
        if self._grip_act >= 0:
            self.data.ctrl[self._grip_act] = self.robot.gripper_to_joint(self._gripper)

    def reset(self, task: str | Task, seed: int = 0) -> dict[str, Any]:
        """Start an episode of ``task`` (name, instruction or Task) with seeded object poses."""
        self.task = task if isinstance(task, Task) else (
            self.tasks[task] if task in self.tasks else get_task(task))
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        mujoco.mj_resetData(self.model, self.data)
        self._set_robot_q(self.robot.home, 1.0)
        for name, (x, y, yaw) in self._sample_layout(self.task, rng).items():
            self.set_object_pose(name, (x, y, self.objects[name].rest_height + 0.002), yaw)
        mujoco.mj_forward(self.model, self.data)
        for _ in range(int(round(self.settle_seconds / self.control_period))):
            self._physics_step()
        self.data.time = 0.0
        self._initial_obj_pos = {n: self.object_position(n).copy() for n in self.objects}
        return self.observation()

    def _sample_layout(self, task: Task, rng: np.random.Generator) -> dict[str, tuple]:
        """Seeded (x, y, yaw) for every object, task objects first, without overlaps."""
        order = [task.obj] + ([task.target] if task.target else [])
        order += [n for n in self.objects if n not in order]
        for _attempt in range(200):
            placed: dict[str, tuple] = {}
            ok = True
            for name in order:
                obj = self.objects[name]
                (x0, x1), (y0, y1) = task.regions.get(name, (PLACE_X, PLACE_Y))
                for _ in range(100):
                    x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
                    yaw = rng.uniform(-math.pi, math.pi)
                    if self._layout_ok(task, name, obj, x, y, placed):
                        placed[name] = (x, y, yaw)
                        break
                else:
                    ok = False
                    break
            if ok:
                return placed
        raise RuntimeError(f'could not place objects for task {task.name!r}')

    def _layout_ok(self, task: Task, name: str, obj: ObjectSpec, x: float, y: float,
                   placed: Mapping[str, tuple]) -> bool:
        for other, (ox, oy, _) in placed.items():
            gap = obj.footprint + self.objects[other].footprint + MIN_GAP
            if math.hypot(x - ox, y - oy) < gap:
                return False
        if task.kind == 'push' and task.obj in placed and name != task.obj:
            # keep the push corridor (behind the object for the approach, and ahead) clear
            px, py, _ = placed[task.obj]
            d = np.asarray(task.direction[:2], float)
            d /= np.linalg.norm(d)
            a = np.array([px, py]) - 0.12 * d
            b = np.array([px, py]) + (task.distance + 0.08) * d
            p = np.array([x, y])
            t = np.clip((p - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
            clear = obj.footprint + self.objects[task.obj].footprint + 0.02
            if np.linalg.norm(p - (a + t * (b - a))) < clear:
                return False
        return True

    # ----------------------------------------------------------------------------- stepping

    def set_joint_targets(self, q_target, gripper: float | None = None) -> None:
        """Set arm position targets (clipped to limits) and optionally the gripper opening."""
        q = np.asarray(q_target, dtype=float)
        if q.shape != (self._n_arm,):
            raise ValueError(f'q_target: expected shape ({self._n_arm},), got {q.shape}')
        if not np.all(np.isfinite(q)):
            raise ValueError('q_target: values must be finite')
        self._q_target = np.clip(q, self.robot.lower, self.robot.upper)
        if gripper is not None:
            if not math.isfinite(float(gripper)):
                raise ValueError('gripper: value must be finite')
            self._gripper = min(max(float(gripper), 0.0), 1.0)
        self._apply_ctrl()

    def _physics_step(self) -> None:
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)

    def step(self, q_target=None, gripper: float | None = None) -> dict[str, Any]:
        """Advance one control period towards ``q_target`` / ``gripper`` (None keeps them)."""
        if q_target is not None:
            self.set_joint_targets(q_target, gripper)
        elif gripper is not None:
            self.set_joint_targets(self._q_target, gripper)
        self._physics_step()
        return self.observation()

    # ----------------------------------------------------------------------------- state

    @property
    def time(self) -> float:
        """Simulated time since the last reset (s)."""
        return float(self.data.time)

    @property
    def q_target(self) -> np.ndarray:
        """Current arm position targets."""
        return self._q_target.copy()

    @property
    def gripper_target(self) -> float:
        """Current gripper opening target in [0, 1]."""
        return self._gripper

    def joint_state(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
        """``(names, position, velocity, effort)`` of arm + gripper joints (/joint_states)."""
        d = self.data
        return (self.joint_names, d.qpos[self._qadr].copy(), d.qvel[self._dadr].copy(),
                d.qfrc_actuator[self._dadr].copy())

    def arm_q(self) -> np.ndarray:
        """Arm joint positions (config order)."""
        return self.data.qpos[self._qadr[:self._n_arm]].copy()

    def gripper_opening(self, data: mujoco.MjData | None = None) -> float:
        """Measured gripper opening in [0, 1] (first gripper joint) of ``data`` (default: live)."""
        if self._n_arm == len(self._qadr):
            return 0.0
        d = self.data if data is None else data
        return self.robot.joint_to_gripper(d.qpos[self._qadr[self._n_arm]])

    def _base_inv(self) -> np.ndarray:
        if self._T_base_inv is not None:
            return self._T_base_inv
        d = self.data
        T = _pose(d.xpos[self._base_bid], d.xmat[self._base_bid])
        return np.linalg.inv(T)

    def body_pose(self, body: str | int, data: mujoco.MjData | None = None) -> np.ndarray:
        """4x4 pose of a MuJoCo body in the base frame (of ``data``, default: live)."""
        bid = body if isinstance(body, int) else mujoco.mj_name2id(
            self.model, mujoco.mjtObj.mjOBJ_BODY, body)
        if bid < 0:
            raise ValueError(f'body: {body!r} not in the model')
        d = self.data if data is None else data
        return self._base_inv() @ _pose(d.xpos[bid], d.xmat[bid])

    def tool_pose(self, data: mujoco.MjData | None = None) -> np.ndarray:
        """4x4 pose of the tool frame in the base frame."""
        return self.body_pose(self._tool_bid, data)

    def object_spec(self, name: str) -> ObjectSpec:
        """Return the :class:`ObjectSpec` of an object."""
        if name not in self.objects:
            raise ValueError(f'object: unknown {name!r}; known: {sorted(self.objects)}')
        return self.objects[name]

    def object_pose(self, name: str, data: mujoco.MjData | None = None) -> np.ndarray:
        """4x4 pose of an object in the base frame."""
        self.object_spec(name)
        return self.body_pose(self._obj_bid[name], data)

    def object_position(self, name: str, data: mujoco.MjData | None = None) -> np.ndarray:
        """Object position (3,) in the base frame."""
        return self.object_pose(name, data)[:3, 3]

    def object_yaw(self, name: str, data: mujoco.MjData | None = None) -> float:
        """Object yaw about the base z axis (rad)."""
        a = self._obj_qadr[self.object_spec(name).name]
        d = self.data if data is None else data
        return quat_to_yaw(d.qpos[a + 3:a + 7])

    def initial_object_position(self, name: str) -> np.ndarray:
        """Object position (base frame) right after the last reset."""
        return self._initial_obj_pos[name]

    def set_object_pose(self, name: str, pos, yaw: float = 0.0) -> None:
        """Place an object (base-frame position, yaw about z) and zero its velocity.

        Call ``mujoco.mj_forward(env.model, env.data)`` (or step) afterwards.
        """
        a = self._obj_qadr[self.object_spec(name).name]
        T_wb = np.linalg.inv(self._base_inv())
        q_base = np.empty(4)
        mujoco.mju_mat2Quat(q_base, T_wb[:3, :3].flatten())
        q_yaw = np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])
        quat = np.empty(4)
        mujoco.mju_mulQuat(quat, q_base, q_yaw)
        self.data.qpos[a:a + 3] = T_wb[:3, :3] @ np.asarray(pos, float) + T_wb[:3, 3]
        self.data.qpos[a + 3:a + 7] = quat
        jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, f'{name}_free')
        dadr = self.model.jnt_dofadr[jid]
        self.data.qvel[dadr:dadr + 6] = 0.0

    def is_grasped(self, name: str, any_finger: bool = False,
                   data: mujoco.MjData | None = None) -> bool:
        """Whether the object touches both fingers (or any finger with ``any_finger``)."""
        geoms = self._obj_geoms[self.object_spec(name).name]
        touching = [False] * len(self._finger_geoms)
        d = self.data if data is None else data
        for i in range(d.ncon):
            g1, g2 = int(d.contact.geom1[i]), int(d.contact.geom2[i])
            for k, fg in enumerate(self._finger_geoms):
                if (g1 in fg and g2 in geoms) or (g2 in fg and g1 in geoms):
                    touching[k] = True
        return any(touching) if any_finger else all(touching) and bool(touching)

    def task_status(self) -> tuple[str, bool]:
        """``(instruction, success)`` of the current task (``('', False)`` before reset)."""
        if self.task is None:
            return '', False
        return self.task.instruction, self.task.check(self)

    def observation(self) -> dict[str, Any]:
        """Proprioceptive observation (no images; see :meth:`render`)."""
        names, q, qd, eff = self.joint_state()
        return {
            'time': self.time,
            'joint_names': names,
            'q': q[:self._n_arm],
            'qd': qd[:self._n_arm],
            'effort': eff[:self._n_arm],
            'gripper': self.gripper_opening(),
            'tool_pose': self.tool_pose(),
            'instruction': self.task.instruction if self.task else '',
        }

    # ----------------------------------------------------------------------------- camera

    def _renderer(self, width: int, height: int) -> _Offscreen:
        key = (int(width), int(height))
        if key not in self._renderers:
            ow, oh = self.scene.offscreen
            if not (0 < width <= ow and 0 < height <= oh):
                raise ValueError(f'width/height: {width}x{height} outside the offscreen buffer '
                                 f'{ow}x{oh} (SceneConfig.offscreen)')
            self._renderers[key] = _Offscreen(self.model, key[0], key[1])
        return self._renderers[key]

    def render(self, width: int | None = None, height: int | None = None,
               camera: str = 'scene', depth: bool = True, data: mujoco.MjData | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Render ``(rgb uint8 HxWx3, depth float32 HxW in metres)`` from a camera.

        Colour and depth come from one rasterisation; depth is the distance along the optical
        axis (what an aligned depth camera reports). ``depth=False`` returns ``(rgb, None)``.
        ``data``: render this MjData (e.g. a snapshot copied under a lock) instead of the live
        one. Not thread-safe: call from one thread (GL contexts are per thread).
        """
        width = width or self.robot.camera_width
        height = height or self.robot.camera_height
        cid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cid < 0:
            raise ValueError(f'camera: {camera!r} not in the model')
        return self._renderer(width, height).render(self.model, self.data if data is None else data,
                                                    cid, depth)

    def camera_intrinsics(self, width: int | None = None, height: int | None = None,
                          camera: str = 'scene') -> tuple[float, float, float, float]:
        """Pinhole ``(fx, fy, cx, cy)`` of a camera rendered at ``width`` x ``height``."""
        width = width or self.robot.camera_width
        height = height or self.robot.camera_height
        cid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cid < 0:
            raise ValueError(f'camera: {camera!r} not in the model')
        fovy = math.radians(self.model.cam_fovy[cid])
        fy = 0.5 * height / math.tan(0.5 * fovy)
        return fy, fy, 0.5 * width, 0.5 * height

    def camera_pose(self, camera: str = 'scene') -> np.ndarray:
        """4x4 pose of the camera's optical frame (z forward, x right, y down), base frame."""
        cid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cid < 0:
            raise ValueError(f'camera: {camera!r} not in the model')
        T = _pose(self.data.cam_xpos[cid], self.data.cam_xmat[cid])
        T[:3, 1:3] *= -1.0  # MuJoCo camera (y up, looks along -z) -> optical frame
        return self._base_inv() @ T

    def project(self, points: np.ndarray, width: int | None = None, height: int | None = None,
                camera: str = 'scene') -> np.ndarray:
        """Pixel ``(u, v)`` [N, 2] of base-frame points [N, 3] seen by ``camera``.

        In a ``width`` x ``height`` render: u right, v down, origin at the top-left corner.
        """
        fx, fy, cx, cy = self.camera_intrinsics(width, height, camera)
        T = np.linalg.inv(self.camera_pose(camera))
        p = np.asarray(points, float).reshape(-1, 3) @ T[:3, :3].T + T[:3, 3]
        return np.stack([fx * p[:, 0] / p[:, 2] + cx, fy * p[:, 1] / p[:, 2] + cy], axis=1)

    def close(self) -> None:
        """Free the renderers (GL contexts)."""
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def __enter__(self) -> TabletopEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SimArm = TabletopEnv
