"""Which sim seeds a dataset trained on and which are held out for evaluation (meta/split.json).

A sim episode is fully determined by its task and seed, so the train/evaluation split is a
split of seeds: training episodes use seeds below :data:`EVAL_FIRST_SEED`, evaluation uses
seeds from it on, and every dataset recorded from the sim writes down the seeds it used::

    {
      "split_seed": 0,
      "train": {"pick_red_cube": [8417, 301, ...]},        # seeds of the saved episodes
      "failed": {"pick_red_cube": [77]},                    # tried, expert failed, not saved
      "episodes": [["pick_red_cube", 8417], ...],           # (task, seed) per episode index
      "eval": {"first_seed": 100000, "last_seed": 199999}   # held out: never recorded
    }
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import storage

SPLIT_PATH = "meta/split.json"
EVAL_FIRST_SEED = 100_000
EVAL_LAST_SEED = 199_999


def train_seed_stream(task: str, split_seed: int = 0) -> Iterator[int]:
    """Training seeds of ``task`` in recording order: a seeded permutation of [0, EVAL_FIRST_SEED).

    Each task has its own order (so tasks do not share layouts by accident), fixed by
    ``split_seed``; appending to a dataset continues the same order.
    """
    rng = np.random.default_rng([int(split_seed), zlib.crc32(task.encode())])
    yield from (int(s) for s in rng.permutation(EVAL_FIRST_SEED))


@dataclasses.dataclass
class SeedSplit:
    """The seeds of one dataset (see the module docstring)."""

    split_seed: int = 0
    train: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    failed: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    episodes: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    eval_first_seed: int = EVAL_FIRST_SEED
    eval_last_seed: int = EVAL_LAST_SEED

    def tried(self, task: str) -> set[int]:
        """Seeds of ``task`` already recorded or failed."""
        return set(self.train.get(task, ())) | set(self.failed.get(task, ()))

    def add(self, task: str, seed: int, saved: bool) -> None:
        """Record the outcome of one attempted episode (saved = appended to the dataset)."""
        if self.eval_first_seed <= seed <= self.eval_last_seed:
            raise ValueError(f"seed: {seed} is an evaluation seed "
                             f"[{self.eval_first_seed}, {self.eval_last_seed}]")
        (self.train if saved else self.failed).setdefault(task, []).append(int(seed))
        if saved:
            self.episodes.append((task, int(seed)))

    def truncate(self, n_episodes: int) -> None:
        """Forget the training episodes after the first ``n_episodes`` (never saved)."""
        for task, seed in self.episodes[n_episodes:]:
            self.train[task].remove(seed)
        del self.episodes[n_episodes:]

    def eval_seeds(self, n: int) -> list[int]:
        """The first ``n`` held-out evaluation seeds (the same for every task)."""
        if not 0 <= n <= self.eval_last_seed - self.eval_first_seed + 1:
            raise ValueError(f"n: {n} evaluation seeds do not fit the held-out range")
        return list(range(self.eval_first_seed, self.eval_first_seed + n))

    def check(self) -> None:
        """Raise ValueError if a training seed is in the evaluation range or appears twice."""
        for task, seeds in self.train.items():
            bad = [s for s in seeds if self.eval_first_seed <= s <= self.eval_last_seed]
            if bad:
                raise ValueError(f"train[{task!r}]: evaluation seeds {bad[:5]} used for training")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"train[{task!r}]: a seed was recorded twice")
        if len(self.episodes) != sum(len(s) for s in self.train.values()):
            raise ValueError("episodes: does not list every training episode once")

    def to_json(self) -> dict:
        """The JSON object of meta/split.json."""
        return {"split_seed": self.split_seed, "train": self.train, "failed": self.failed,
                "episodes": [list(e) for e in self.episodes],
                "eval": {"first_seed": self.eval_first_seed, "last_seed": self.eval_last_seed}}

    @classmethod
    def from_json(cls, obj: dict) -> SeedSplit:
        """Inverse of :meth:`to_json`."""
        ev = obj.get("eval", {})
        return cls(split_seed=int(obj.get("split_seed", 0)),
                   train={k: [int(s) for s in v] for k, v in obj.get("train", {}).items()},
                   failed={k: [int(s) for s in v] for k, v in obj.get("failed", {}).items()},
                   episodes=[(str(t), int(s)) for t, s in obj.get("episodes", [])],
                   eval_first_seed=int(ev.get("first_seed", EVAL_FIRST_SEED)),
                   eval_last_seed=int(ev.get("last_seed", EVAL_LAST_SEED)))


def load_split(root: str | Path) -> SeedSplit | None:
    """Read ``<root>/meta/split.json`` (None if the dataset has none)."""
    path = Path(root) / SPLIT_PATH
    if not path.is_file():
        return None
    return SeedSplit.from_json(json.loads(path.read_text()))


def save_split(root: str | Path, split: SeedSplit) -> None:
    """Check and atomically write ``<root>/meta/split.json``."""
    split.check()
    # one line per field: thousands of seeds stay readable
    obj = split.to_json()
    data = ("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items())
            + "\n}\n").encode()
    storage.write_atomic(Path(root) / SPLIT_PATH, data)
