"""Scripted expert for the tabletop tasks: a waypoint state machine on differential IK.

Each task kind (``pick``, ``place``, ``push``) expands into a list of :class:`Waypoint` s
(pre-grasp, descend, close, lift, move, release, retreat...). Waypoint poses are computed from
the object poses when the waypoint starts; the tool is moved along a minimum-jerk Cartesian
path and each control step one damped-least-squares IK update (pinocchio, the same URDF)
turns the path point into joint targets. No joint angles are hard-coded.

    expert = ScriptedExpert(env)
    obs = env.reset('pick_red_cube', seed=3)
    while not expert.done:
        q, g = expert.act(obs)
        obs = env.step(q, g)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from roboalign_ros.control.kinematics import Kinematics, pose_error
from roboalign_ros.sim.env import TabletopEnv
from roboalign_ros.sim.tasks import Task

PoseFn = Callable[[TabletopEnv], np.ndarray]

# Every waypoint name of every plan, and "done" (after the last one). Recorded datasets store
# a phase as its index here: append new names, never reorder.
PHASES = ('done', 'pregrasp', 'descend', 'close', 'lift', 'hold', 'carry', 'lower', 'release',
          'retreat', 'prepush', 'push')
DONE = 'done'

# tool z pointing down, fingers (tool y) along base y, tool x along -base x
R_DOWN = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def top_down_pose(pos, yaw: float = 0.0) -> np.ndarray:
    """4x4 tool pose at ``pos`` pointing down, finger axis rotated by ``yaw`` about z."""
    T = np.eye(4)
    T[:3, :3] = _rz(yaw) @ R_DOWN
    T[:3, 3] = pos
    return T


def _wrap_sym(a: float, period: float) -> float:
    """Wrap ``a`` into (-period/2, period/2]."""
    return (a + period / 2) % period - period / 2


@dataclass
class Waypoint:
    """A segment of the plan: move the tool to ``pose(env)`` with the gripper at ``gripper``.

    ``pose=None`` holds the previous pose. The phase ends after the motion (``speed`` m/s,
    at least ``min_time``) plus ``hold`` seconds, once the measured tool is within ``tol`` m
    (or ``timeout`` s after the motion ended).
    """

    name: str
    pose: PoseFn | None
    gripper: float
    speed: float = 0.25
    min_time: float = 0.3
    hold: float = 0.0
    tol: float = 0.01
    timeout: float = 1.0


def _grasp_yaw(env: TabletopEnv, name: str) -> float:
    obj = env.object_spec(name)
    if obj.shape == 'cylinder':
        return 0.0
    period = math.pi / 2 if obj.shape == 'box' and abs(obj.size[0] - obj.size[1]) < 1e-6 \
        else math.pi
    return _wrap_sym(env.object_yaw(name), period)


def _grasp_height(env: TabletopEnv, name: str) -> float:
    """Tool z for a grasp: object centre, but keep the fingertips off the table."""
    p = env.object_position(name)
    return max(p[2], 0.024)


class ScriptedExpert:
    """Solves every registered task kind from privileged state; ``act`` -> ``(q, gripper)``."""

    def __init__(self, env: TabletopEnv, kinematics: Kinematics | None = None,
                 ik_iters: int = 2, hover: float = 0.14, lift: float = 0.16,
                 joint_speed: float = 0.4):
        self.env = env
        self.kin = kinematics or Kinematics(env.robot)
        self.ik_iters = ik_iters
        # Joint steps stay within joint_speed x the URDF velocity (the phase clock slows down
        # where the Cartesian path would need more): below the executor's default envelope
        # (0.5 x URDF), so a policy imitating these demos commands what the executor passes
        # unchanged. 0 disables the cap.
        self.joint_speed = joint_speed
        self._step_cap = (joint_speed * np.asarray(env.robot.velocity, float) * env.control_period
                          if joint_speed > 0 else None)
        self.hover = hover
        self.lift = lift
        self.dt = env.control_period
        self._task: Task | None = None
        self._seed: int | None = None
        self.reset()

    # ------------------------------------------------------------------------- plans

    def plan(self, task: Task) -> list[Waypoint]:
        """Waypoints for ``task`` (dispatch on ``task.kind``)."""
        builder = getattr(self, f'_plan_{task.kind}', None)
        if builder is None:
            raise ValueError(f'task.kind: no expert for {task.kind!r}')
        return builder(task)

    def _pick_waypoints(self, name: str) -> list[Waypoint]:
        hover, lift = self.hover, self.lift
        self._yaw = 0.0

        def above(env):
            self._yaw = _grasp_yaw(env, name)
            p = env.object_position(name)
            return top_down_pose([p[0], p[1], hover], self._yaw)

        def grasp(env):
            p = env.object_position(name)
            return top_down_pose([p[0], p[1], _grasp_height(env, name)], self._yaw)

        def lifted(env):
            T = env.tool_pose().copy()
            T[:3, :3] = top_down_pose([0, 0, 0], self._yaw)[:3, :3]
            T[2, 3] = lift
            return T

        return [
            Waypoint('pregrasp', above, 1.0, speed=0.3, min_time=0.8, tol=0.01),
            Waypoint('descend', grasp, 1.0, speed=0.12, min_time=0.5, hold=0.15, tol=0.006),
            Waypoint('close', None, 0.0, min_time=0.5, hold=0.1, tol=1.0),
            Waypoint('lift', lifted, 0.0, speed=0.15, min_time=0.6, tol=0.02),
        ]

    def _plan_pick(self, task: Task) -> list[Waypoint]:
        return self._pick_waypoints(task.obj) + [Waypoint('hold', None, 0.0, min_time=0.5,
                                                          tol=1.0)]

    def _plan_place(self, task: Task) -> list[Waypoint]:
        target = task.target
        obj_h = self.env.object_spec(task.obj).rest_height
        wall = 2 * self.env.object_spec(target).size[1]

        def above_target(env):
            c = env.object_position(target)
            return top_down_pose([c[0], c[1], self.lift], self._yaw)

        def lower(env):
            c = env.object_position(target)
            return top_down_pose([c[0], c[1], c[2] + wall + obj_h + 0.02], self._yaw)

        def up(env):
            T = env.tool_pose().copy()
            T[2, 3] = self.lift
            return T

        return self._pick_waypoints(task.obj) + [
            Waypoint('carry', above_target, 0.0, speed=0.25, min_time=0.6, tol=0.015),
            Waypoint('lower', lower, 0.0, speed=0.12, min_time=0.4, tol=0.01),
            Waypoint('release', None, 1.0, min_time=0.4, hold=0.1, tol=1.0),
            Waypoint('retreat', up, 1.0, speed=0.2, min_time=0.4, tol=0.03),
        ]

    def _plan_stack(self, task: Task) -> list[Waypoint]:
        target = task.target
        obj_h = self.env.object_spec(task.obj).rest_height
        top_h = self.env.object_spec(target).rest_height

        def above_target(env):
            c = env.object_position(target)
            return top_down_pose([c[0], c[1], self.lift], self._yaw)

        def lower(env):
            c = env.object_position(target)
            return top_down_pose([c[0], c[1], c[2] + top_h + obj_h + 0.006], self._yaw)

        def up(env):
            T = env.tool_pose().copy()
            T[2, 3] = self.lift
            return T

        return self._pick_waypoints(task.obj) + [
            Waypoint('carry', above_target, 0.0, speed=0.25, min_time=0.6, tol=0.01),
            Waypoint('lower', lower, 0.0, speed=0.08, min_time=0.5, hold=0.2, tol=0.004),
            Waypoint('release', None, 1.0, min_time=0.4, hold=0.1, tol=1.0),
            Waypoint('retreat', up, 1.0, speed=0.2, min_time=0.4, tol=0.03),
        ]

    def _plan_push(self, task: Task) -> list[Waypoint]:
        name = task.obj
        d = np.asarray(task.direction, float)
        d[2] = 0.0
        d /= np.linalg.norm(d)
        # fingers (tool y) perpendicular to the push direction
        yaw = _wrap_sym(math.atan2(d[1], d[0]), math.pi)
        obj = self.env.object_spec(name)
        half = obj.size[0] if obj.shape != 'box' else max(obj.size[0], obj.size[1])
        contact = half + 0.011  # object half width + finger half width
        z_push = 0.022
        start = {}

        def behind_high(env):
            p = env.object_position(name)
            start['p0'] = p.copy()
            q = p - d * (contact + 0.035)
            return top_down_pose([q[0], q[1], self.hover], yaw)

        def behind_low(env):
            p = start['p0']
            q = p - d * (contact + 0.035)
            return top_down_pose([q[0], q[1], z_push], yaw)

        # Where the stroke ends must be visible in the frame a policy sees, not only in where
        # the block started (a policy without memory cannot know that): with a placement
        # region, every block goes to the same line, past the region's far edge by the
        # task's distance (so every push is at least that long); without one, by distance.
        region = task.regions.get(name)
        line = None if region is None else \
            max(float(np.dot((x, y), d[:2])) for x in region[0] for y in region[1])

        def pushed(env):
            p = start['p0']
            along = float(np.dot(p[:2], d[:2]))
            travel = task.distance + 0.03 + (0.0 if line is None else max(line - along, 0.0))
            q = p - d * contact + d * travel
            return top_down_pose([q[0], q[1], z_push], yaw)

        def up(env):
            T = env.tool_pose().copy()
            T[:3, 3] -= d * 0.02
            T[2, 3] = self.hover
            return T

        return [
            Waypoint('prepush', behind_high, 0.0, speed=0.3, min_time=0.8, tol=0.01),
            Waypoint('descend', behind_low, 0.0, speed=0.12, min_time=0.5, tol=0.008),
            Waypoint('push', pushed, 0.0, speed=0.08, min_time=0.5, hold=0.1, tol=0.015),
            Waypoint('retreat', up, 0.0, speed=0.2, min_time=0.4, tol=0.03),
        ]

    # ------------------------------------------------------------------------- state machine

    def reset(self) -> None:
        """Forget the current plan (it is rebuilt at the next ``act`` after an env reset)."""
        self._plan: list[Waypoint] = []
        self._i = 0
        self._done = False
        self._q_cmd = None
        self._gripper = 1.0
        self._task = None
        self.last_phase = ''

    @property
    def plan_names(self) -> list[str]:
        """Waypoint names of the current plan, in order (empty before the first ``act``)."""
        return [wp.name for wp in self._plan]

    @property
    def done(self) -> bool:
        """True once the last waypoint has finished."""
        return self._done

    @property
    def phase(self) -> str:
        """Name of the current waypoint ('' when done or idle)."""
        return self._plan[self._i].name if self._plan and self._i < len(self._plan) else ''

    def _start_phase(self) -> None:
        wp = self._plan[self._i]
        self._t = 0.0
        self._from = self._pose_cmd.copy()
        self._to = self._from.copy() if wp.pose is None else wp.pose(self.env)
        dist = np.linalg.norm(self._to[:3, 3] - self._from[:3, 3])
        ang = np.linalg.norm(pose_error(self._from, self._to)[3:])
        self._T = max(wp.min_time, dist / wp.speed, ang / 1.5)

    def _interp(self, s: float) -> np.ndarray:
        import pinocchio as pin

        T = np.eye(4)
        T[:3, 3] = (1 - s) * self._from[:3, 3] + s * self._to[:3, 3]
        R0 = self._from[:3, :3]
        w = pin.log3(self._to[:3, :3] @ R0.T)
        T[:3, :3] = pin.exp3(s * w) @ R0
        return T

    def _track(self, t: float, q: np.ndarray) -> np.ndarray:
        """Joint target for the plan's pose at phase time ``t``, by IK from ``q``."""
        tau = min(t / self._T, 1.0)
        s = tau ** 3 * (10 - 15 * tau + 6 * tau ** 2)
        self._pose_cmd = self._interp(s)
        for _ in range(self.ik_iters):
            q = self.kin.ik_step(q, self._pose_cmd, max_step=0.05)
        return q

    def act(self, obs=None) -> tuple[np.ndarray, float]:
        """Next ``(arm q_target, gripper opening)``; ``obs`` is accepted for API symmetry.

        :attr:`last_phase` names the waypoint the returned command belongs to (``'done'``
        once the plan has finished).
        """
        env = self.env
        if self._task is not env.task or self._seed != env.seed or self._q_cmd is None:
            if env.task is None:
                raise RuntimeError('ScriptedExpert.act: call env.reset(task, seed) first')
            self._task, self._seed = env.task, env.seed
            self._plan = self.plan(env.task)
            self._i = 0
            self._done = False
            self._q_cmd = env.arm_q()
            self._pose_cmd = self.kin.fk(self._q_cmd)
            self._gripper = env.gripper_target
            self._start_phase()
        if self._done:
            self.last_phase = DONE
            return self._q_cmd.copy(), self._gripper

        wp = self._plan[self._i]
        self.last_phase = wp.name  # the phase this command belongs to (it may end below)
        q_prev = self._q_cmd
        dt = self.dt
        for _ in range(3):  # shrink the clock step until every joint is within its cap
            q = self._track(self._t + dt, q_prev)
            ratio = 0.0 if self._step_cap is None else float(
                np.max(np.abs(q - q_prev) / self._step_cap))
            if ratio <= 1.0:
                break
            dt /= ratio * 1.05
        else:
            q = q_prev + np.clip(q - q_prev, -self._step_cap, self._step_cap)
        self._t += dt
        self._q_cmd = q
        self._gripper = wp.gripper

        if self._t >= self._T + wp.hold:
            err = np.linalg.norm(env.tool_pose()[:3, 3] - self._to[:3, 3])
            if err < wp.tol or self._t >= self._T + wp.hold + wp.timeout:
                self._pose_cmd = self._to.copy()
                self._i += 1
                if self._i >= len(self._plan):
                    self._done = True
                else:
                    self._start_phase()
        return self._q_cmd.copy(), self._gripper


def run_episode(env: TabletopEnv, task: str | Task, seed: int, expert: ScriptedExpert | None = None,
                max_seconds: float | None = None, settle_seconds: float = 0.3,
                callback: Callable[[TabletopEnv], None] | None = None) -> bool:
    """Run the expert on ``task``/``seed`` and return the task's success at the end."""
    expert = expert or ScriptedExpert(env)
    obs = env.reset(task, seed)
    expert.reset()
    limit = max_seconds if max_seconds is not None else env.task.episode_seconds
    while not expert.done and env.time < limit:
        q, g = expert.act(obs)
        obs = env.step(q, g)
        if callback is not None:
            callback(env)
    q, g = expert.act(obs)
    for _ in range(int(round(settle_seconds / env.control_period))):
        env.step(q, g)
        if callback is not None:
            callback(env)
    return env.task_status()[1]
