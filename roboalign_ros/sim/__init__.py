"""MuJoCo arm + tabletop tasks with success checks (the embedded default simulator; no rclpy)."""

from roboalign_ros.sim.env import SimArm, TabletopEnv
from roboalign_ros.sim.scene import DEFAULT_OBJECTS, ObjectSpec, SceneConfig
from roboalign_ros.sim.tasks import TASKS, Task, get_task, register_task

__all__ = ['DEFAULT_OBJECTS', 'ObjectSpec', 'SceneConfig', 'SimArm', 'TASKS', 'TabletopEnv',
           'Task', 'get_task', 'register_task']
