"""Trial plans: which tasks to run, how often, for how long (YAML, validated field by field).

Example (``config/eval/sim_smoke.yaml``)::

    name: sim_smoke                  # also the results sub-directory
    policy: tiny random policy       # free text stored with every result
    model: tiny
    notes: smoke test of the evaluation pipeline
    defaults: {trials: 2, time_limit: 20.0}
    tasks:
      - task: pick_red_cube          # sim task name (roboalign_ros/sim/tasks.py); needed in sim
        seeds: [0, 1]                # sim only: one per trial (default: seed_base + trial)
      - instruction: push the green block to the left   # default: the sim task's instruction
        task: push_green_block_left
        trials: 3
        time_limit: 30

Every error is a :class:`PlanError` (a ``ValueError``) whose message names the field, e.g.
``plan.tasks[1].trials: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

PLAN_FIELDS = ("name", "policy", "model", "notes", "defaults", "seed_base", "tasks")
TASK_FIELDS = ("id", "task", "instruction", "trials", "time_limit", "seeds", "notes")
DEFAULT_FIELDS = ("trials", "time_limit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PlanError(ValueError):
    """A trial plan is malformed; the message names the offending field."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of a plan: ``trials`` counted trials of at most ``time_limit`` seconds each."""

    id: str
    instruction: str
    trials: int
    time_limit: float
    task: str = ""  # sim task name ("" in a real-only plan)
    seeds: tuple[int, ...] = ()
    notes: str = ""

    def seed(self, task_trial: int, seed_base: int = 0) -> int:
        """The sim seed of this task's trial ``task_trial`` (0-based)."""
        return self.seeds[task_trial] if self.seeds else seed_base + task_trial


@dataclass(frozen=True)
class TrialSlot:
    """A counted trial of the plan: plan-wide ``number`` (1-based) and its task."""

    number: int
    spec: TaskSpec
    task_trial: int  # 0-based index within the task


@dataclass(frozen=True)
class TrialPlan:
    """A validated plan."""

    name: str
    tasks: tuple[TaskSpec, ...]
    policy: str = ""
    model: str = ""
    notes: str = ""
    seed_base: int = 0
    source: str = ""  # file it came from

    @property
    def total(self) -> int:
        """Number of counted trials in the plan."""
        return sum(t.trials for t in self.tasks)

    def slots(self) -> list[TrialSlot]:
        """All counted trials in run order (task by task, as listed)."""
        out, number = [], 1
        for spec in self.tasks:
            for i in range(spec.trials):
                out.append(TrialSlot(number, spec, i))
                number += 1
        return out

    def task(self, task_id: str) -> TaskSpec:
        """The task with id ``task_id``."""
        for spec in self.tasks:
            if spec.id == task_id:
                return spec
        raise PlanError(f"plan.tasks: no task with id {task_id!r}")

    def check_mode(self, mode: str) -> None:
        """Raise :class:`PlanError` if the plan cannot run in ``mode`` (``sim`` or ``real``)."""
        if mode not in ("sim", "real"):
            raise PlanError(f"mode: {mode!r} is not one of 'sim', 'real'")
        if mode == "real":
            return
        from roboalign_ros.sim.tasks import TASKS

        for i, spec in enumerate(self.tasks):
            if not spec.task:
                raise PlanError(f"plan.tasks[{i}].task: required in sim mode (a sim task name "
                                f"to reset to; known: {sorted(TASKS)})")
            if spec.task not in TASKS:
                raise PlanError(f"plan.tasks[{i}].task: unknown sim task {spec.task!r}; "
                                f"known: {sorted(TASKS)}")


def load_plan(path: str | Path) -> TrialPlan:
    """Read and validate a YAML plan file."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan: file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PlanError(f"plan: {path} is not valid YAML: {exc}") from exc
    return parse_plan(data, source=str(path))


def parse_plan(data: object, source: str = "") -> TrialPlan:
    """Validate a plan given as a mapping (the parsed YAML)."""
    if not isinstance(data, dict):
        raise PlanError(f"plan: expected a mapping with {PLAN_FIELDS}, got {type(data).__name__}")
    _unknown(data, PLAN_FIELDS, "plan")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PlanError(f"plan.name: required, letters/digits/_.- (used as a directory name), "
                        f"got {name!r}")
    texts = {k: _text(data.get(k, ""), f"plan.{k}") for k in ("policy", "model", "notes")}
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise PlanError(f"plan.defaults: expected a mapping, got {defaults!r}")
    _unknown(defaults, DEFAULT_FIELDS, "plan.defaults")
    default_trials = _trials(defaults.get("trials", 1), "plan.defaults.trials")
    default_limit = _limit(defaults.get("time_limit", 60.0), "plan.defaults.time_limit")
    seed_base = _int(data.get("seed_base", 0), "plan.seed_base")
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise PlanError("plan.tasks: required, a non-empty list of tasks")
    specs, ids = [], set()
    for i, entry in enumerate(tasks):
        spec = _task(entry, f"plan.tasks[{i}]", default_trials, default_limit)
        if spec.id in ids:
            raise PlanError(f"plan.tasks[{i}].id: duplicate {spec.id!r} (give the entries "
                            f"distinct `id:`s)")
        ids.add(spec.id)
        specs.append(spec)
    return TrialPlan(name=name, tasks=tuple(specs), seed_base=seed_base, source=source, **texts)


def _task(entry: object, where: str, default_trials: int, default_limit: float) -> TaskSpec:
    if isinstance(entry, str):  # shorthand: a sim task name
        entry = {"task": entry}
    if not isinstance(entry, dict):
        raise PlanError(f"{where}: expected a mapping with {TASK_FIELDS}, got {entry!r}")
    _unknown(entry, TASK_FIELDS, where)
    task = _text(entry.get("task", ""), f"{where}.task")
    instruction = " ".join(_text(entry.get("instruction", ""), f"{where}.instruction").split())
    if not instruction:
        if not task:
            raise PlanError(f"{where}.instruction: required (or a sim `task:` to take it from)")
        from roboalign_ros.sim.tasks import TASKS

        if task not in TASKS:
            raise PlanError(f"{where}.instruction: required, {task!r} is not a sim task to "
                            f"take it from (known: {sorted(TASKS)})")
        instruction = TASKS[task].instruction
    trials = _trials(entry.get("trials", default_trials), f"{where}.trials")
    limit = _limit(entry.get("time_limit", default_limit), f"{where}.time_limit")
    seeds = entry.get("seeds", [])
    if not isinstance(seeds, list):
        raise PlanError(f"{where}.seeds: expected a list of integers, got {seeds!r}")
    seeds = tuple(_int(s, f"{where}.seeds[{k}]") for k, s in enumerate(seeds))
    if seeds and len(seeds) < trials:
        raise PlanError(f"{where}.seeds: {len(seeds)} seeds for {trials} trials (one per trial)")
    task_id = _text(entry.get("id", "") or task or _slug(instruction), f"{where}.id")
    if not _NAME.match(task_id):
        raise PlanError(f"{where}.id: letters/digits/_.- only, got {task_id!r}")
    return TaskSpec(id=task_id, instruction=instruction, trials=trials, time_limit=limit,
                    task=task, seeds=seeds, notes=_text(entry.get("notes", ""), f"{where}.notes"))


def _unknown(data: dict, known: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in known:
            raise PlanError(f"{where}.{key}: unknown field; known: {', '.join(known)}")


def _text(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PlanError(f"{where}: expected text, got {value!r}")
    return value.strip()


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{where}: expected an integer, got {value!r}")
    return value


def _trials(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{where}: must be an integer >= 1, got {value!r}")
    return value


def _limit(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or value <= 0:
        raise PlanError(f"{where}: must be a number of seconds > 0, got {value!r}")
    return float(value)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "task"
