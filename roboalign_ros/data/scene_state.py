"""Privileged sim state stored per frame for a teacher: layout, packing, metadata (no MuJoCo).

Datasets recorded from the sim (``roboalign record bulk``) carry two extra columns, both
standard LeRobot features:

* ``observation.environment_state`` (float32 [n], names in info.json): the tool, then every
  object of the scene; positions in the robot base frame (REP-103: x forward, y left, z up; the
  sim's base sits at the world origin), metres and radians::

      tool.x tool.y tool.z tool.yaw gripper.opening
      <obj>.x <obj>.y <obj>.z <obj>.yaw <obj>.dx <obj>.dy <obj>.dz <obj>.grasped   (per object)

  ``<obj>.d*`` = object position - tool position (base axes): where the object is seen from
  the gripper. ``<obj>.grasped`` is 1 when the object is held between the fingers: both touch
  it and they are kept apart (opening > :data:`HELD_MIN_OPENING`; closed fingers pushing an
  object touch it too). ``gripper.opening`` is the measured opening in [0, 1].
* ``expert.phase`` (int64): the scripted expert's phase, an index into ``sim.phases``.

info.json's ``roboalign.sim`` block names what the numbers mean: ``objects`` (label, shape,
colour, rest_height = centre height above the table when resting), ``phases`` and ``tasks``
by instruction (name, kind, object, target, direction, distance, and ``plan``: the expert's
phases in order).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ENV_STATE_KEY = "observation.environment_state"
PHASE_KEY = "expert.phase"
TOOL_FIELDS = ("tool.x", "tool.y", "tool.z", "tool.yaw", "gripper.opening")
OBJECT_FIELDS = ("x", "y", "z", "yaw", "dx", "dy", "dz", "grasped")
HELD_MIN_OPENING = 0.05  # fingers closer than this hold nothing between them


def environment_state_names(objects: Sequence[str]) -> list[str]:
    """Per-element names of ``observation.environment_state`` for these objects."""
    return [*TOOL_FIELDS, *(f"{o}.{f}" for o in objects for f in OBJECT_FIELDS)]


def scene_features(objects: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The extra features (``DatasetWriter.create(extra_features=...)``) of a sim dataset."""
    names = environment_state_names(objects)
    return {ENV_STATE_KEY: {"dtype": "float32", "shape": [len(names)], "names": names},
            PHASE_KEY: {"dtype": "int64", "shape": [1], "names": None}}


def yaw_of(rotation: np.ndarray) -> float:
    """Yaw about the base z axis of a rotation matrix's x axis (rad)."""
    return math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))


@dataclasses.dataclass(frozen=True)
class ObjectState:
    """One object: base-frame position, yaw, offset from the tool, grasp."""

    name: str
    position: np.ndarray  # (3,) m
    yaw: float
    offset: np.ndarray  # (3,) object - tool, base axes
    grasped: bool


@dataclasses.dataclass(frozen=True)
class SceneState:
    """The tool and the objects at one frame."""

    tool: np.ndarray  # (3,) tool position
    tool_yaw: float
    gripper: float  # measured opening in [0, 1]
    objects: dict[str, ObjectState]

    @property
    def holding(self) -> str | None:
        """Name of the grasped object (None when the gripper holds nothing)."""
        return next((o.name for o in self.objects.values() if o.grasped), None)

    @classmethod
    def from_poses(cls, tool_pose: np.ndarray, gripper: float,
                   objects: Mapping[str, tuple[np.ndarray, float, bool]]) -> SceneState:
        """Build from a 4x4 tool pose and ``{name: (position, yaw, grasped)}``."""
        tool = np.asarray(tool_pose, float)[:3, 3].copy()
        objs = {n: ObjectState(n, np.asarray(p, float).copy(), float(y),
                               np.asarray(p, float) - tool, bool(g))
                for n, (p, y, g) in objects.items()}
        return cls(tool, yaw_of(np.asarray(tool_pose)[:3, :3]), float(gripper), objs)

    def to_vector(self) -> np.ndarray:
        """Pack in the order of :func:`environment_state_names` (objects in dict order)."""
        out = [*self.tool, self.tool_yaw, self.gripper]
        for o in self.objects.values():
            out += [*o.position, o.yaw, *o.offset, float(o.grasped)]
        return np.asarray(out, np.float32)

    @classmethod
    def from_vector(cls, names: Sequence[str], vector: np.ndarray) -> SceneState:
        """Unpack a stored ``observation.environment_state`` row using its names."""
        v = dict(zip(names, np.asarray(vector, float).tolist(), strict=True))
        missing = [f for f in TOOL_FIELDS if f not in v]
        if missing:
            raise ValueError(f"names: environment state lacks {missing}")
        objects = {}
        for name in dict.fromkeys(n.rsplit(".", 1)[0] for n in names[len(TOOL_FIELDS):]):
            try:
                x, y, z, yaw, dx, dy, dz, g = (v[f"{name}.{f}"] for f in OBJECT_FIELDS)
            except KeyError as exc:
                raise ValueError(f"names: environment state lacks {exc.args[0]!r}") from None
            objects[name] = ObjectState(name, np.array([x, y, z]), yaw, np.array([dx, dy, dz]),
                                        g > 0.5)
        tool = np.array([v["tool.x"], v["tool.y"], v["tool.z"]])
        return cls(tool, v["tool.yaw"], v["gripper.opening"], objects)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """A task as stored in ``roboalign.sim.tasks`` (see :mod:`roboalign_ros.sim.tasks`)."""

    name: str
    instruction: str
    kind: str
    obj: str
    target: str | None
    direction: tuple[float, float, float]
    distance: float
    plan: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SimMetadata:
    """The ``roboalign.sim`` block of info.json."""

    objects: dict[str, dict[str, Any]]  # name -> {"label", "shape", "colour", "rest_height"}
    phases: tuple[str, ...]
    tasks: dict[str, TaskInfo]  # by instruction

    def label(self, obj: str) -> str:
        """What a person calls the object ("red cube")."""
        return str(self.objects.get(obj, {}).get("label") or obj.replace("_", " "))

    def to_json(self) -> dict[str, Any]:
        """JSON block for ``DatasetWriter.update_metadata({"sim": ...})``."""
        return {"objects": self.objects, "phases": list(self.phases),
                "tasks": {k: {**dataclasses.asdict(t), "plan": list(t.plan),
                              "direction": list(t.direction)} for k, t in self.tasks.items()}}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SimMetadata:
        """Parse the block (ValueError naming the missing field)."""
        try:
            tasks = {k: TaskInfo(name=t["name"], instruction=t["instruction"], kind=t["kind"],
                                 obj=t["obj"], target=t.get("target"),
                                 direction=tuple(float(x) for x in t.get("direction", (0, 0, 0))),
                                 distance=float(t.get("distance", 0.0)), plan=tuple(t["plan"]))
                     for k, t in obj["tasks"].items()}
            return cls(dict(obj["objects"]), tuple(obj["phases"]), tasks)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"roboalign.sim: missing or bad field {exc}") from None
