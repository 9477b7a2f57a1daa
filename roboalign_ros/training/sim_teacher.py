"""The ``sim`` teacher: ReFineVLA rationales written from the recorded sim state, not by an MLLM.

Datasets from ``roboalign record bulk`` store per frame where every object and the tool are,
what the gripper holds and the scripted expert's phase (:mod:`roboalign_ros.data.scene_state`).
From that this teacher writes the four sections in plain words::

    <Observation> I see the red cube. The gripper is open and holds nothing.
    <Situation Analysis> Moving above the red cube; not grasped yet.
    <Spatial Reasoning> The red cube is 15 cm to the left of and 26 cm below the gripper.
    <Task Planning> 1. move above the red cube
    2. lower to it
    3. close the gripper

Directions are the robot's (REP-103, as in the instructions): left = +y, in front of = +x
(away from the robot), above = +z. The plan lists the remaining sub-steps, the current one
first, so it shrinks as the expert's phase advances. Rationales stay short (the student
learns to generate them): when a text is longer than ``max_words`` the teacher drops detail
step by step (other objects, the second spatial relation, the last plan steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..data import scene_state as ss
from .config import check

DONE = "done"
_HOLDING_PHASES = ("lift", "hold", "carry", "lower")


@dataclasses.dataclass
class SimTeacherConfig:
    """Options of the ``sim`` teacher.

    Fields:
        max_words: longest rationale (whitespace-separated words, tags included); longer ones
            lose detail until they fit (the shortest form, ~45 words, is kept even if longer).
        distractors: other objects named in <Observation> (nearest to the task object first).
        min_offset_cm: offsets along an axis below this are not mentioned.
        max_plan_steps: longest plan (remaining sub-steps beyond it are left out).
    """

    max_words: int = 60
    distractors: int = 1
    min_offset_cm: float = 2.0
    max_plan_steps: int = 8

    def validate(self, prefix: str = "rationale.sim") -> None:
        """Raise ConfigError naming the first bad field."""
        check(prefix, "max_words", self.max_words >= 12, "must be >= 12", self.max_words)
        check(prefix, "distractors", self.distractors >= 0, "must be >= 0", self.distractors)
        check(prefix, "min_offset_cm", self.min_offset_cm >= 0, "must be >= 0",
              self.min_offset_cm)
        check(prefix, "max_plan_steps", self.max_plan_steps >= 1, "must be >= 1",
              self.max_plan_steps)


def direction_word(direction: Sequence[float]) -> str:
    """'left' / 'right' / 'forward' / 'back' for a base-frame push direction."""
    x, y = float(direction[0]), float(direction[1])
    if abs(y) >= abs(x):
        return "left" if y > 0 else "right"
    return "forward" if x > 0 else "back"


def relation(offset_m: Sequence[float], min_cm: float = 2.0, max_parts: int = 3) -> str:
    """Where a point at ``offset_m`` (base axes, m) is: '12 cm to the left of and 8 cm below'.

    Components below ``min_cm`` are left out, and all but the ``max_parts`` largest; empty when
    nothing is left.
    """
    x, y, z = (100.0 * float(v) for v in offset_m)
    axes = [(y, "to the left of", "to the right of"), (x, "in front of", "behind"),
            (z, "above", "below")]
    keep = sorted(range(3), key=lambda i: -abs(axes[i][0]))[:max_parts]
    parts = [f"{round(abs(v))} cm {pos if v > 0 else neg}"
             for i, (v, pos, neg) in enumerate(axes) if i in keep and abs(v) >= min_cm]
    if len(parts) > 1:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return parts[0] if parts else ""


@dataclasses.dataclass(frozen=True)
class _Detail:
    """How much one rationale says (the levels of :meth:`SimTeacher.rationale`)."""

    distractors: int
    relations: int  # spatial sentences kept
    plan_steps: int
    axes: int  # components per spatial relation


class SimTeacher:
    """Writes rationales from a frame's :class:`~roboalign_ros.data.scene_state.SceneState`."""

    name = "sim"

    def __init__(self, config: SimTeacherConfig | None = None):
        self.cfg = config or SimTeacherConfig()

    # --------------------------------------------------------------------- words
    def _step(self, meta: ss.SimMetadata, task: ss.TaskInfo, phase: str) -> str:
        obj, target = meta.label(task.obj), meta.label(task.target) if task.target else ""
        into = "into" if task.kind == "place" else "onto"
        if task.kind == "push":
            steps = {"prepush": f"move behind the {obj}", "descend": "lower to the table",
                     "push": f"push it {round(100 * task.distance)} cm "
                             f"{direction_word(task.direction)}",
                     "retreat": "lift the gripper away"}
        else:
            steps = {"pregrasp": f"move above the {obj}", "descend": "lower to it",
                     "close": "close the gripper", "lift": "lift it", "hold": "hold it up",
                     "carry": f"carry it above the {target}",
                     "lower": f"lower it {into} the {target}", "release": "open the gripper",
                     "retreat": "move the gripper up"}
        return steps.get(phase, phase.replace("_", " "))

    def _situation(self, meta: ss.SimMetadata, task: ss.TaskInfo, phase: str) -> str:
        obj, target = meta.label(task.obj), meta.label(task.target) if task.target else ""
        where = f"{'in' if task.kind == 'place' else 'on'} the {target}"
        if task.kind == "push":
            d = direction_word(task.direction)
            text = {"prepush": f"Moving behind the {obj} to push it {d}.",
                    "descend": f"Lowering the gripper behind the {obj}.",
                    "push": f"Pushing the {obj} {d}.",
                    "retreat": f"The {obj} is pushed; lifting the gripper."}
        else:
            text = {"pregrasp": f"Moving above the {obj}; not grasped yet.",
                    "descend": f"Above the {obj}, lowering to it.",
                    "close": f"The {obj} is between the fingers.",
                    "lift": f"The {obj} is grasped; lifting it.",
                    "hold": f"The {obj} is lifted.",
                    "carry": f"Carrying the {obj} to the {target}.",
                    "lower": f"The {obj} is above the {target}.",
                    "release": f"The {obj} is {where}; letting go.",
                    "retreat": f"The {obj} is {where}; moving up."}
        return text.get(phase, "The task is done." if phase == DONE else f"Phase: {phase}.")

    def _gripper(self, meta: ss.SimMetadata, state: ss.SceneState) -> str:
        held = state.holding
        if held:
            return f"The gripper is closed and holds the {meta.label(held)}."
        g = state.gripper
        opening = "open" if g > 0.66 else "closed" if g < 0.33 else "half open"
        return f"The gripper is {opening} and holds nothing."

    def _where(self, meta: ss.SimMetadata, name: str, offset, reference: str,
               axes: int) -> str:
        rel = relation(offset, self.cfg.min_offset_cm, axes)
        return f"The {meta.label(name)} is {rel or 'right at'} the {reference}."

    def _spatial(self, meta: ss.SimMetadata, task: ss.TaskInfo, state: ss.SceneState,
                 phase: str, initial: ss.SceneState | None, axes: int) -> list[str]:
        """Spatial sentences, the most useful for the next motion first."""
        obj = state.objects[task.obj]
        label = meta.label(task.obj)
        target = state.objects[task.target] if task.target else None
        if task.kind == "push":
            out = [self._where(meta, task.obj, obj.offset, "gripper", axes)]
            if initial is not None:
                d = np.asarray(task.direction[:2], float)
                d /= np.linalg.norm(d)
                moved = round(100 * float((obj.position - initial.objects[task.obj].position)[:2]
                                          @ d))
                goal, word = round(100 * task.distance), direction_word(task.direction)
                out.append(f"It has moved {max(0, moved)} of {goal} cm {word}." if moved < goal
                           else f"It has moved {moved} cm {word}, the goal is reached.")
            return out
        if target is not None and phase in ("release", "retreat", DONE):
            into = "in" if task.kind == "place" else "on"
            return [self._where(meta, task.obj, obj.offset, "gripper", axes),
                    f"The {label} is {into} the {meta.label(task.target)}."]
        if phase in _HOLDING_PHASES or (phase == DONE and obj.grasped):
            if target is None:
                rest = float(meta.objects.get(task.obj, {}).get("rest_height", 0.0))
                height = max(0, round(100 * (obj.position[2] - rest)))
                return [f"The {label} is in the gripper, {height} cm above the table."]
            return [self._where(meta, task.target, target.offset, "gripper", axes),
                    f"The {label} is in the gripper."]
        out = [self._where(meta, task.obj, obj.offset, "gripper", axes)]
        if target is not None:
            out.append(self._where(meta, task.target, target.position - obj.position, label,
                                   axes))
        return out

    def _observation(self, meta: ss.SimMetadata, task: ss.TaskInfo, state: ss.SceneState,
                     distractors: int) -> str:
        named = [task.obj] + ([task.target] if task.target else [])
        p = state.objects[task.obj].position
        others = sorted((n for n in state.objects if n not in named),
                        key=lambda n: float(np.linalg.norm(state.objects[n].position - p)))
        labels = [f"the {meta.label(n)}" for n in named + others[:distractors]]
        seen = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
        return f"I see {seen}. {self._gripper(meta, state)}"

    def plan(self, meta: ss.SimMetadata, task: ss.TaskInfo, phase: str) -> list[str]:
        """Remaining sub-steps from ``phase`` on (the current one first)."""
        if phase not in task.plan:
            return ["stay still: the task is done"]
        return [self._step(meta, task, p) for p in task.plan[task.plan.index(phase):]]

    # --------------------------------------------------------------------- rationale
    def rationale(self, meta: ss.SimMetadata, task: ss.TaskInfo, state: ss.SceneState,
                  phase: str, initial: ss.SceneState | None = None) -> str:
        """The four-section rationale of one frame (``initial``: the episode's first frame).

        The richest text within ``max_words``: detail is dropped in this order: other objects,
        the second spatial sentence, plan steps down to three, the smallest offset component,
        plan steps down to one (the shortest text is returned even when still too long).
        """
        plan = self.plan(meta, task, phase)[:self.cfg.max_plan_steps]
        text = ""
        for d in self._levels(len(plan)):
            spatial = self._spatial(meta, task, state, phase, initial, d.axes)[:d.relations]
            steps = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(plan[:d.plan_steps]))
            text = (f"<Observation> {self._observation(meta, task, state, d.distractors)}\n"
                    f"<Situation Analysis> {self._situation(meta, task, phase)}\n"
                    f"<Spatial Reasoning> {' '.join(spatial)}\n"
                    f"<Task Planning> {steps}")
            if len(text.split()) <= self.cfg.max_words:
                break
        return text

    def _levels(self, n_plan: int):
        yield _Detail(self.cfg.distractors, 2, n_plan, 3)
        yield _Detail(0, 2, n_plan, 3)
        for k in range(n_plan, min(n_plan, 3) - 1, -1):
            yield _Detail(0, 1, k, 3)
        for k in range(min(n_plan, 3), 0, -1):
            yield _Detail(0, 1, k, 2)

    def episode_rationales(self, reader, episode, frames: Sequence[int]) -> dict[int, str]:
        """Rationales of ``frames`` of a loaded episode (``reader.episode(i, decode_video=False)``).

        Raises ValueError when the dataset lacks the sim state (not recorded by
        ``roboalign record bulk``).
        """
        meta_json = reader.metadata.get("sim")
        features = reader.extra_features
        missing = [k for k in (ss.ENV_STATE_KEY, ss.PHASE_KEY) if k not in features]
        if not meta_json:
            missing.append("roboalign.sim in meta/info.json (LeRobot's tools drop it)")
        if missing:
            raise ValueError(f"teacher: sim needs a dataset recorded from the sim (roboalign "
                             f"record bulk); {reader.root} lacks {', '.join(missing)}")
        meta = ss.SimMetadata.from_json(meta_json)
        task = meta.tasks.get(episode.task)
        if task is None:
            raise ValueError(f"teacher: task {episode.task!r} of episode "
                             f"{episode.info.index} is not in roboalign.sim.tasks")
        names = features[ss.ENV_STATE_KEY]["names"]
        env = episode.extra[ss.ENV_STATE_KEY]
        phases = episode.extra[ss.PHASE_KEY]
        initial = ss.SceneState.from_vector(names, env[0])
        return {f: self.rationale(meta, task, ss.SceneState.from_vector(names, env[f]),
                                  meta.phases[int(phases[f])], initial) for f in frames}
