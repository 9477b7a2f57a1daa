"""Language-conditioned tabletop tasks: a data-driven registry.

A :class:`Task` is plain data: the instruction, the skill (``kind``) with its parameters, and
optional placement constraints for the seeded randomiser. Success checks and the scripted
expert are looked up by ``kind``; adding a task is adding a :class:`Task` to :data:`TASKS`
(or calling :func:`register_task`).

Directions are in the robot base frame (REP-103: x forward, y left, z up): "left" is the
robot's left (+y). The scene camera faces the robot, so "left" appears on the image's right.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class TabletopEnv(Protocol):
    """What a success check reads of the scene (``sim.env.TabletopEnv`` provides it)."""

    def object_position(self, name: str) -> np.ndarray:
        """The object's position now (m, base frame)."""

    def initial_object_position(self, name: str) -> np.ndarray:
        """Its position at the episode's start."""

    def object_spec(self, name: str) -> Any:
        """Its shape (``rest_height``, ``footprint``, ...)."""

    def is_grasped(self, name: str, any_finger: bool = False) -> bool:
        """Whether the gripper holds it (with ``any_finger``: touches it)."""


# Region of the table where objects are placed (base frame, m).
PLACE_X = (0.27, 0.50)
PLACE_Y = (-0.22, 0.22)
MIN_GAP = 0.045  # free space between object footprints


@dataclass(frozen=True)
class Task:
    """One language-conditioned task.

    kind: ``pick`` (lift ``obj`` by ``lift_height``), ``place`` (put ``obj`` into the container
    ``target``), ``stack`` (leave ``obj`` resting on top of ``target``), ``push`` (slide ``obj``
    by ``distance`` along ``direction`` without lifting it).
    regions: per-object placement box ``{name: ((xmin, xmax), (ymin, ymax))}``.
    """

    name: str
    instruction: str
    kind: str
    obj: str
    target: str | None = None
    direction: tuple[float, float, float] = (0.0, 0.0, 0.0)
    distance: float = 0.10
    lift_height: float = 0.06
    regions: Mapping[str, tuple[tuple[float, float], tuple[float, float]]] = field(
        default_factory=dict)
    episode_seconds: float = 12.0

    def check(self, env: TabletopEnv) -> bool:
        """Whether the task is solved in the env's current state."""
        return SUCCESS_CHECKS[self.kind](self, env)


# ---------------------------------------------------------------------------------------------
# success checks (by kind)


def _lifted(task: Task, env: TabletopEnv) -> bool:
    p = env.object_position(task.obj)
    rest = env.object_spec(task.obj).rest_height
    return bool(p[2] > rest + task.lift_height and env.is_grasped(task.obj))


def _placed(task: Task, env: TabletopEnv) -> bool:
    p = env.object_position(task.obj)
    c = env.object_position(task.target)
    container = env.object_spec(task.target)
    inner_r, wall_hh = container.size[0], container.size[1]
    inside = np.hypot(*(p[:2] - c[:2])) < inner_r - 0.005
    low = p[2] < c[2] + 2 * wall_hh + env.object_spec(task.obj).rest_height
    return bool(inside and low and not env.is_grasped(task.obj, any_finger=True))


def _stacked(task: Task, env: TabletopEnv) -> bool:
    p = env.object_position(task.obj)
    c = env.object_position(task.target)
    top = env.object_spec(task.target)
    half_xy = min(top.size[0], top.size[1]) if top.shape == 'box' else top.size[0]
    on_top_z = c[2] + top.rest_height + env.object_spec(task.obj).rest_height
    centred = np.hypot(*(p[:2] - c[:2])) < half_xy
    resting = abs(p[2] - on_top_z) < 0.01
    return bool(centred and resting and not env.is_grasped(task.obj, any_finger=True))


def _pushed(task: Task, env: TabletopEnv) -> bool:
    p = env.object_position(task.obj)
    p0 = env.initial_object_position(task.obj)
    d = np.asarray(task.direction[:2], float)
    d = d / np.linalg.norm(d)
    moved = p[:2] - p0[:2]
    along = float(moved @ d)
    across = float(abs(moved @ np.array([-d[1], d[0]])))
    on_table = abs(p[2] - p0[2]) < 0.01
    return bool(along >= task.distance and across < 0.06 and on_table)


SUCCESS_CHECKS: dict[str, Callable[[Task, TabletopEnv], bool]] = {
    'pick': _lifted,
    'place': _placed,
    'stack': _stacked,
    'push': _pushed,
}


# ---------------------------------------------------------------------------------------------
# registry

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (name must be new, kind known)."""
    if task.name in TASKS:
        raise ValueError(f'task.name: {task.name!r} already registered')
    if task.kind not in SUCCESS_CHECKS:
        raise ValueError(f'task.kind: {task.kind!r} not one of {sorted(SUCCESS_CHECKS)}')
    if task.kind in ('place', 'stack') and not task.target:
        raise ValueError(f'task.target: required for place task {task.name!r}')
    if task.kind == 'push' and not np.any(task.direction):
        raise ValueError(f'task.direction: required for push task {task.name!r}')
    TASKS[task.name] = task
    return task


def get_task(name_or_instruction: str) -> Task:
    """Look a task up by name or by its exact instruction (case/whitespace-insensitive)."""
    if name_or_instruction in TASKS:
        return TASKS[name_or_instruction]
    key = ' '.join(name_or_instruction.lower().split()).rstrip('.')
    for t in TASKS.values():
        if t.instruction == key:
            return t
    raise ValueError(f'task: unknown {name_or_instruction!r}; known: {sorted(TASKS)}')


for _t in (
    Task('pick_red_cube', 'pick up the red cube', 'pick', 'red_cube'),
    Task('place_red_cube_in_bowl', 'put the red cube in the blue bowl', 'place', 'red_cube',
         target='blue_bowl'),
    Task('push_green_block_left', 'push the green block to the left', 'push', 'green_block',
         direction=(0.0, 1.0, 0.0), distance=0.10,
         regions={'green_block': ((0.30, 0.46), (-0.18, 0.02))}),
    Task('pick_yellow_cylinder', 'pick up the yellow cylinder', 'pick', 'yellow_cylinder'),
    Task('place_purple_cube_in_bowl', 'put the purple cube in the blue bowl', 'place',
         'purple_cube', target='blue_bowl'),
    Task('stack_red_cube_on_green_block', 'stack the red cube on the green block', 'stack',
         'red_cube', target='green_block'),
    Task('push_red_cube_right', 'push the red cube to the right', 'push', 'red_cube',
         direction=(0.0, -1.0, 0.0), distance=0.10,
         regions={'red_cube': ((0.30, 0.46), (-0.02, 0.18))}),
):
    register_task(_t)
