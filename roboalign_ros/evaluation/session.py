"""The trial state machine, free of ROS: events and a clock in, actions out.

One trial goes ``PENDING -> RESETTING -> RUNNING -> AWAITING_LABEL -> DONE``, or to ``ABORTED``
(e-stop, or a technician's "aborted" label) from RESETTING / RUNNING / AWAITING_LABEL. Aborted
trials are stored but not counted: the same trial (same task, same seed) runs again.

RESETTING has steps: ``estop`` (an e-stop someone else engaged must be released first),
``policy`` (waiting for the policy to report ready), ``home`` (executor ``go_home``),
``reset`` (sim ``reset_task``) or ``operator`` (real mode: the technician resets the scene and
calls ``start_trial``).

RUNNING ends
- at the time limit: in sim with ``auto_label`` a failure (auto label); otherwise the robot is
  stopped (instruction cleared; in real mode also the e-stop engaged) and the trial waits for
  the technician's label;
- on the sim's success check: in sim with ``auto_label`` a success; otherwise it waits for a label;
- on a label (the technician ends the trial early);
- on an e-stop: ABORTED.

The driver (``eval_node``, or a test) calls :meth:`EvalSession.poll` periodically and the
``on_*`` / :meth:`~EvalSession.label` / :meth:`~EvalSession.start` methods on events, and
carries out the returned actions.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from roboalign_ros.evaluation.plan import TaskSpec, TrialPlan, TrialSlot
from roboalign_ros.evaluation.results import ResultsStore, make_record
from roboalign_ros.parameters import default

OUTCOME_CODES = {1: "success", 2: "failure", 3: "aborted"}  # LabelTrial.srv constants


class TrialState(enum.Enum):
    """States of one trial."""

    PENDING = "pending"
    RESETTING = "resetting"
    RUNNING = "running"
    AWAITING_LABEL = "awaiting_label"
    DONE = "done"
    ABORTED = "aborted"


# ---------------------------------------------------------------------------------- actions

@dataclass(frozen=True)
class Prompt:
    """A line for the technician (the node logs it at ``level``)."""

    text: str
    level: str = "info"  # info | warn | error


@dataclass(frozen=True)
class SendInstruction:
    """Publish an instruction; ``""`` clears it (policy blocks, executor flushes and holds)."""

    text: str


@dataclass(frozen=True)
class GoHome:
    """Call the executor's ``go_home``; answer with :meth:`EvalSession.on_home_done`."""


@dataclass(frozen=True)
class ResetSim:
    """Call the sim's ``reset_task``; answer with :meth:`EvalSession.on_reset_done`."""

    task: str
    seed: int


@dataclass(frozen=True)
class Estop:
    """Engage (True) or release (False) the software e-stop."""

    engage: bool


@dataclass(frozen=True)
class TrialFinished:
    """A trial's record was stored."""

    record: dict


@dataclass(frozen=True)
class EvaluationFinished:
    """Every trial of the plan is counted."""

    results_dir: str


# ---------------------------------------------------------------------------------- trial

@dataclass
class Trial:
    """The trial in progress."""

    slot: TrialSlot
    total: int
    attempt: int
    seed: int | None
    state: TrialState = TrialState.PENDING
    step: str = ""
    step_until: float = 0.0  # home: wait for the move; reset: retry time after a failure
    reset_done_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    prompted: set = field(default_factory=set)

    @property
    def spec(self) -> TaskSpec:
        """The trial's task."""
        return self.slot.spec

    @property
    def number(self) -> int:
        """Plan-wide trial number (1-based), what the prompts show and labels name."""
        return self.slot.number

    def title(self) -> str:
        """``Trial 3/10: <instruction>`` (+ attempt)."""
        again = f" (attempt {self.attempt})" if self.attempt > 1 else ""
        return f"Trial {self.number}/{self.total}{again}: '{self.spec.instruction}'"


@dataclass
class SessionConfig:
    """How trials are run (node parameters)."""

    mode: str = default("eval_node", "mode")  # sim | real
    operator: str = default("eval_node", "operator")
    go_home: bool = default("eval_node", "go_home")
    auto_label: bool = default("eval_node", "auto_label")
    wait_for_policy: bool = default("eval_node", "wait_for_policy")
    time_limit: float = default("eval_node", "time_limit")  # > 0 overrides the plan's time limits
    reset_retry: float = 2.0  # s between failed sim resets
    success_slack: float = 1.0  # s; a sim success older than the reset is stale


class EvalSession:
    """Runs the trials of a plan, storing each finished one in ``store``."""

    def __init__(self, plan: TrialPlan, store: ResultsStore, config: SessionConfig):
        plan.check_mode(config.mode)
        self.plan, self.store, self.config = plan, store, config
        self.current: Trial | None = None
        self.last_record: dict | None = None
        self.finished = False
        self.external_estop = False  # an e-stop this session did not engage is on
        self.own_estop = False  # this session engaged the e-stop (real mode, time up)
        self.policy_ready = not config.wait_for_policy
        self.policy_message = "no policy status yet"
        known = {s.id for s in plan.tasks}
        stray = sorted({r["task"] for r in store.records} - known)
        self.warnings = [f"results for tasks not in the plan are kept but ignored: {stray}"] \
            if stray else []

    # ------------------------------------------------------------------ progress

    def next_slot(self) -> TrialSlot | None:
        """The first trial of the plan without a counted result (None: all done)."""
        for slot in self.plan.slots():
            if slot.task_trial not in self.store.counted(slot.spec.id):
                return slot
        return None

    def counts(self) -> dict[str, int]:
        """Counted / successful / aborted trials so far, and the plan total."""
        ids = {s.id for s in self.plan.tasks}
        rs = [r for r in self.store.records if r["task"] in ids]
        return {"total": self.plan.total,
                "counted": sum(r["outcome"] != "aborted" for r in rs),
                "successes": sum(r["outcome"] == "success" for r in rs),
                "aborted": sum(r["outcome"] == "aborted" for r in rs)}

    def time_limit(self, spec: TaskSpec) -> float:
        """The trial time limit of ``spec`` (the override if set)."""
        return self.config.time_limit if self.config.time_limit > 0 else spec.time_limit

    def resume_message(self) -> str:
        """One line saying where this evaluation starts."""
        c = self.counts()
        slot = self.next_slot()
        where = f"next: trial {slot.number}" if slot else "nothing left to run"
        if c["counted"] or c["aborted"]:
            return (f"resuming '{self.plan.name}' from {self.store.path}: {c['counted']}/"
                    f"{c['total']} trials already counted ({c['aborted']} aborted); {where}")
        return f"starting '{self.plan.name}': {c['total']} trials, results in {self.store.path}"

    # ------------------------------------------------------------------ clock

    def poll(self, now: float) -> list:
        """Advance on the clock; call a few times per second."""
        if self.finished:
            return []
        trial = self.current
        if trial is None:
            slot = self.next_slot()
            if slot is None:
                self.finished = True
                return [Prompt(f"evaluation '{self.plan.name}' finished: all {self.plan.total} "
                               f"trials counted"), EvaluationFinished(str(self.store.directory))]
            attempt = self.store.attempts(slot.spec.id, slot.task_trial) + 1
            seed = slot.spec.seed(slot.task_trial, self.plan.seed_base) \
                if self.config.mode == "sim" else None
            trial = self.current = Trial(slot, self.plan.total, attempt, seed)
        if trial.state is TrialState.PENDING:
            return self._prepare(trial, now)
        if trial.state is TrialState.RESETTING:
            return self._resetting(trial, now)
        if trial.state is TrialState.RUNNING:
            if now - trial.started_at >= self.time_limit(trial.spec):
                return self._end_running(trial, now, "time limit", auto_outcome="failure")
        return []

    def _prepare(self, trial: Trial, now: float) -> list:
        out = []
        if self.external_estop:
            trial.step = "estop"
            return self._once(trial, "estop", f"{trial.title()} waits: the e-stop is engaged; "
                                              f"release it to continue", "warn")
        if not self.policy_ready:
            trial.step = "policy"
            return self._once(trial, "policy", f"{trial.title()} waits for the policy "
                                               f"({self.policy_message})", "warn")
        trial.state = TrialState.RESETTING
        out.append(Prompt(f"{trial.title()} (task {trial.spec.id}, trial "
                          f"{trial.slot.task_trial + 1}/{trial.spec.trials}"
                          + (f", seed {trial.seed}" if trial.seed is not None else "") + ")"))
        if self.config.go_home:
            trial.step, trial.step_until = "home", math.inf
            return out + [GoHome()]
        return out + self._after_home(trial, now)

    def _after_home(self, trial: Trial, now: float) -> list:
        if self.config.mode == "sim":
            trial.step, trial.step_until = "reset", math.inf
            return [ResetSim(trial.spec.task, trial.seed)]
        trial.step = "operator"
        return [Prompt(f"{trial.title()}. Reset the scene, then call /eval_node/start_trial "
                       f"(std_srvs/Trigger) to start; time limit "
                       f"{self.time_limit(trial.spec):g} s")]

    def _resetting(self, trial: Trial, now: float) -> list:
        if trial.step == "home" and now >= trial.step_until:
            return self._after_home(trial, now)
        if trial.step == "reset_retry" and now >= trial.step_until:
            trial.step, trial.step_until = "reset", math.inf
            return [ResetSim(trial.spec.task, trial.seed)]
        return []

    def _once(self, trial: Trial, key: str, text: str, level: str = "info") -> list:
        if key in trial.prompted:
            return []
        trial.prompted.add(key)
        return [Prompt(text, level)]

    def _start_running(self, trial: Trial, now: float) -> list:
        trial.state, trial.step, trial.started_at = TrialState.RUNNING, "", now
        return [SendInstruction(trial.spec.instruction),
                Prompt(f"{trial.title()} running, time limit "
                       f"{self.time_limit(trial.spec):g} s")]

    def _end_running(self, trial: Trial, now: float, reason: str, auto_outcome: str) -> list:
        trial.ended_at, trial.end_reason = now, reason
        if self.config.mode == "sim" and self.config.auto_label:
            progress = 1.0 if auto_outcome == "success" else 0.0
            return [SendInstruction("")] + self._finish(trial, auto_outcome, progress, "", now,
                                                        "auto")
        trial.state = TrialState.AWAITING_LABEL
        out = [SendInstruction("")]
        if self.config.mode == "real" and not self.own_estop:
            self.own_estop = True
            out.append(Estop(True))
        stopped = "robot stopped (e-stop engaged)" if self.config.mode == "real" \
            else "policy stopped"
        return out + [Prompt(f"{trial.title()}: {reason}, {stopped}. Label it: call "
                             f"/eval_node/label_trial (trial_index {trial.number} or -1, "
                             f"outcome 1 success / 2 failure / 3 aborted, progress 0..1, notes)",
                             "warn")]

    def _finish(self, trial: Trial, outcome: str, progress: float, notes: str, now: float,
                source: str) -> list:
        ended = trial.ended_at if trial.ended_at is not None else now
        record = make_record(plan=self.plan, mode=self.config.mode, spec=trial.spec,
                             trial=trial.number, task_trial=trial.slot.task_trial,
                             attempt=trial.attempt, seed=trial.seed, outcome=outcome,
                             progress=progress, started_at=trial.started_at, ended_at=ended,
                             labelled_at=now, end_reason=trial.end_reason or "label",
                             notes=notes, operator=self.config.operator, label_source=source)
        self.store.append(record)  # persisted before anything else happens
        trial.state = TrialState.ABORTED if outcome == "aborted" else TrialState.DONE
        self.current, self.last_record = None, record
        out = [TrialFinished(record)]
        if self.own_estop and not self.external_estop:
            self.own_estop = False
            out.append(Estop(False))
        c = self.counts()
        again = " (not counted: it will be repeated)" if outcome == "aborted" else ""
        out.append(Prompt(f"Trial {trial.number}/{trial.total} {outcome}{again}, progress "
                          f"{progress:.2f}, {record['duration']:.1f} s ({source} label); "
                          f"{c['successes']}/{c['counted']} successes so far"))
        return out

    # ------------------------------------------------------------------ events

    def on_home_done(self, ok: bool, message: str, now: float, wait: float = 0.0) -> list:
        """The executor answered ``go_home``; the move takes ``wait`` seconds."""
        trial = self.current
        if trial is None or trial.step != "home":
            return []
        trial.step_until = now + max(0.0, wait)
        out = [] if ok else [Prompt(f"go_home failed ({message}); continuing from where the "
                                    f"arm is", "warn")]
        return out + self._resetting(trial, now)

    def on_reset_done(self, ok: bool, message: str, now: float) -> list:
        """The sim answered ``reset_task``."""
        trial = self.current
        if trial is None or trial.step != "reset":
            return []
        if not ok:
            trial.step, trial.step_until = "reset_retry", now + self.config.reset_retry
            return [Prompt(f"sim reset failed: {message}; retrying in "
                           f"{self.config.reset_retry:.0f} s", "error")]
        trial.reset_done_at = now
        return self._start_running(trial, now)

    def start(self, now: float) -> tuple[bool, str, list]:
        """The technician says the scene is reset (``start_trial``)."""
        trial = self.current
        if self.config.mode != "real":
            return False, "mode is sim: trials start by themselves after the sim reset", []
        if self.finished:
            return False, "the evaluation is finished", []
        if trial is None or trial.step != "operator":
            what = ("no trial yet" if trial is None else
                    f"trial {trial.number} is {trial.state.value}"
                    + (f" ({trial.step})" if trial.step else ""))
            return False, f"no trial is waiting for a scene reset: {what}", []
        trial.reset_done_at = now
        return True, f"trial {trial.number} started", self._start_running(trial, now)

    def on_task_success(self, now: float, elapsed: float) -> list:
        """The sim's success check passed ``elapsed`` s (sim time) after its reset."""
        trial = self.current
        if (self.config.mode != "sim" or trial is None or trial.state is not TrialState.RUNNING
                or trial.reset_done_at is None
                or elapsed > now - trial.reset_done_at + self.config.success_slack):
            return []  # not running, or a status from before this trial's reset
        return self._end_running(trial, now, "sim success check", auto_outcome="success")

    def on_estop(self, engaged: bool, now: float) -> list:
        """An e-stop message from someone else (the node drops its own echoes)."""
        was, self.external_estop = self.external_estop, bool(engaged)
        trial = self.current
        if not engaged:
            if was:
                return [Prompt("e-stop released")]
            return []
        if trial is not None and trial.state in (TrialState.RESETTING, TrialState.RUNNING):
            trial.ended_at, trial.end_reason = now, "e-stop"
            stop = [SendInstruction(""), Prompt(f"{trial.title()}: E-STOP, trial aborted", "error")]
            return stop + self._finish(trial, "aborted", 0.0, "e-stop", now, "auto")
        if was:
            return []
        return [Prompt("e-stop engaged", "warn")]

    def on_policy_status(self, ready: bool, message: str) -> list:
        """The policy's state (ready = model loaded, not in error)."""
        self.policy_ready, self.policy_message = ready or not self.config.wait_for_policy, message
        return []

    def label(self, trial_index: int, outcome: int, progress: float, notes: str,
              now: float) -> tuple[bool, str, list]:
        """A technician's label (``label_trial``); returns (accepted, message, actions)."""
        if outcome not in OUTCOME_CODES:
            return False, (f"outcome: {outcome} is not one of 1 (success), 2 (failure), "
                           f"3 (aborted)"), []
        if not (isinstance(progress, int | float) and math.isfinite(progress)
                and 0.0 <= progress <= 1.0):
            return False, f"progress: {progress} is outside [0, 1]", []
        total = self.plan.total
        if trial_index != -1 and not 1 <= trial_index <= total:
            return False, (f"trial_index: {trial_index} is unknown: the plan has trials 1..{total} "
                           f"(-1 = the current trial)"), []
        trial = self.current
        if trial is None or trial.state not in (TrialState.RUNNING, TrialState.AWAITING_LABEL):
            state = ("the evaluation is finished" if self.finished else
                     f"trial {trial.number} is {trial.state.value}" if trial is not None else
                     f"trial {self.last_record['trial']} is labelled, the next one has not "
                     f"started" if self.last_record else "no trial started yet")
            return False, f"no trial awaits a label ({state})", []
        if trial_index not in (-1, trial.number):
            return False, (f"trial_index: {trial_index} is not the trial awaiting a label "
                           f"(trial {trial.number}; pass it or -1)"), []
        name = OUTCOME_CODES[outcome]
        out = []
        if trial.state is TrialState.RUNNING:
            trial.ended_at, trial.end_reason = now, "label"
            out.append(SendInstruction(""))
        note = ""
        if name == "success" and progress < 1.0:
            note, progress = " (progress set to 1.0 for a success)", 1.0
        out += self._finish(trial, name, float(progress), notes, now, "manual")
        return True, f"trial {trial.number} labelled {name}{note}", out

    # ------------------------------------------------------------------ status

    def status(self, now: float) -> dict:
        """A snapshot for the status topic and diagnostics."""
        trial = self.current
        c = self.counts()
        s = {"plan": self.plan.name, "mode": self.config.mode, **c,
             "state": "finished" if self.finished else "idle", "step": "", "trial": 0,
             "task": "", "instruction": "", "seed": -1, "elapsed": 0.0, "success": False,
             "estop": self.external_estop or self.own_estop}
        if trial is not None:
            s.update(state=trial.state.value, step=trial.step, trial=trial.number,
                     task=trial.spec.task or trial.spec.id, instruction=trial.spec.instruction,
                     seed=-1 if trial.seed is None else trial.seed,
                     elapsed=0.0 if trial.started_at is None else
                     (trial.ended_at or now) - trial.started_at)
        elif self.last_record is not None:
            r = self.last_record
            s.update(trial=r["trial"], task=r["sim_task"] or r["task"],
                     instruction=r["instruction"], seed=-1 if r["seed"] is None else r["seed"],
                     elapsed=r["duration"], success=r["outcome"] == "success")
        return s
