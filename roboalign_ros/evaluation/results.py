"""Trial results: one JSON line per finished trial, written atomically after every trial.

Each write replaces ``results.jsonl`` with a complete new copy (temporary file, fsync,
``os.replace``, fsync of the directory), so after a crash or power loss the file holds every
trial that was labelled before it, never a half line. A restarted evaluation reads it back and
resumes with the first trial that has no success/failure record.

Record fields (see :func:`make_record`): plan, mode, task (the plan's task id), sim_task,
instruction, trial (plan-wide number, 1-based), task_trial (0-based within the task), attempt
(1 + earlier aborted attempts of the same trial), seed (sim) or null, outcome
(success | failure | aborted), progress in [0, 1], duration (s, from start of the trial to its
end), end_reason, notes, operator, label_source (auto | manual), started_at / ended_at /
labelled_at (ISO 8601 UTC), policy, model.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

OUTCOMES = ("success", "failure", "aborted")
COUNTED = ("success", "failure")  # aborted trials are repeated, not counted
RESULTS_FILE = "results.jsonl"


def iso(t: float | None) -> str | None:
    """Seconds since the epoch -> ISO 8601 UTC (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class ResultsStore:
    """The results of one plan in ``directory/results.jsonl``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()
        self.path = self.directory / RESULTS_FILE
        self.records: list[dict] = load_records(self.path) if self.path.exists() else []

    def append(self, record: dict) -> None:
        """Add one finished trial and persist all records atomically."""
        check_record(record, f"record {len(self.records) + 1}")
        self.records.append(dict(record))
        self._write()

    def counted(self, task_id: str) -> set[int]:
        """``task_trial`` indices of ``task_id`` that have a counted (success/failure) record."""
        return {r["task_trial"] for r in self.records
                if r["task"] == task_id and r["outcome"] in COUNTED}

    def attempts(self, task_id: str, task_trial: int) -> int:
        """How many attempts of this trial are on record (aborted ones included)."""
        return sum(1 for r in self.records
                   if r["task"] == task_id and r["task_trial"] == task_trial)

    def _write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_records(path: str | Path) -> list[dict]:
    """Read a results file; a damaged line raises ``ValueError`` naming the line.

    A last line without its newline (a copy cut short by some other tool) is dropped with no
    error: it was never a complete record.
    """
    path = Path(path)
    text = path.read_text()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # no trailing newline: an incomplete final line
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {n}: not JSON ({exc.msg})") from exc
        check_record(record, f"{path}: line {n}")
        records.append(record)
    return records


def check_record(record: dict, where: str) -> None:
    """Raise ``ValueError`` if a record lacks a field or has an out-of-range value."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object")
    for key in ("task", "instruction", "trial", "task_trial", "outcome", "progress"):
        if key not in record:
            raise ValueError(f"{where}: field {key!r} missing")
    if record["outcome"] not in OUTCOMES:
        raise ValueError(f"{where}: outcome {record['outcome']!r} not one of {OUTCOMES}")
    if not 0.0 <= float(record["progress"]) <= 1.0:
        raise ValueError(f"{where}: progress {record['progress']!r} outside [0, 1]")


def make_record(*, plan, mode: str, spec, trial: int, task_trial: int, attempt: int,
                seed: int | None, outcome: str, progress: float, started_at: float | None,
                ended_at: float, labelled_at: float, end_reason: str, notes: str,
                operator: str, label_source: str) -> dict:
    """Build one result line (all fields documented in the module docstring)."""
    duration = 0.0 if started_at is None else max(0.0, ended_at - started_at)
    return {
        "plan": plan.name, "mode": mode, "task": spec.id, "sim_task": spec.task,
        "instruction": spec.instruction, "trial": trial, "task_trial": task_trial,
        "attempt": attempt, "seed": seed, "outcome": outcome, "progress": float(progress),
        "duration": round(duration, 3), "end_reason": end_reason, "notes": notes,
        "operator": operator, "label_source": label_source, "started_at": iso(started_at),
        "ended_at": iso(ended_at), "labelled_at": iso(labelled_at), "policy": plan.policy,
        "model": plan.model,
    }
