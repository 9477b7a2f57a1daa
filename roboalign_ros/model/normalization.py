"""Per-dimension normalization statistics, stored as JSON next to the weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import CheckpointError

NORMALIZATION_NAME = "normalization.json"
_EPS = 1e-8


@dataclass
class Stats:
    """Statistics of one array field (e.g. "action" or "state"), one value per dimension.

    ``mode="quantile"`` maps [q01, q99] to [-1, 1]; ``mode="mean_std"`` maps to zero mean and
    unit variance. Dimensions with (near) zero spread pass through unscaled around the centre.
    """

    mode: str
    q01: np.ndarray
    q99: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, data: np.ndarray, mode: str = "quantile") -> Stats:
        """Compute the statistics of ``data`` shaped [..., D]."""
        if mode not in ("quantile", "mean_std"):
            raise ValueError(f"normalization mode must be 'quantile' or 'mean_std', got {mode!r}")
        flat = np.asarray(data, dtype=np.float64).reshape(-1, np.shape(data)[-1])
        return cls(
            mode=mode,
            q01=np.quantile(flat, 0.01, axis=0),
            q99=np.quantile(flat, 0.99, axis=0),
            mean=flat.mean(axis=0),
            std=flat.std(axis=0),
        )

    def _center_scale(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "quantile":
            center, scale = (self.q99 + self.q01) / 2, (self.q99 - self.q01) / 2
        else:
            center, scale = self.mean, self.std
        return center, np.where(scale > _EPS, scale, 1.0)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Robot units -> normalized units (float32)."""
        center, scale = self._center_scale()
        return ((np.asarray(x, np.float64) - center) / scale).astype(np.float32)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """Normalized units -> robot units (float32)."""
        center, scale = self._center_scale()
        return (np.asarray(x, np.float64) * scale + center).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        arrays = {k: getattr(self, k).tolist() for k in ("q01", "q99", "mean", "std")}
        return {"mode": self.mode, **arrays}

    @classmethod
    def from_dict(cls, data: dict) -> Stats:
        """Inverse of :meth:`to_dict`."""
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("q01", "q99", "mean", "std")}
        if len({a.shape for a in arrays.values()}) != 1:
            raise ValueError("normalization stats arrays differ in length")
        return cls(mode=data["mode"], **arrays)


class Normalizer:
    """Named :class:`Stats` (keys "action", "state"); identity for keys without stats."""

    def __init__(self, stats: dict[str, Stats] | None = None):
        self.stats = dict(stats or {})

    @classmethod
    def fit(cls, mode: str = "quantile", **arrays: np.ndarray) -> Normalizer:
        """``Normalizer.fit(action=chunks, state=states)`` with arrays shaped [..., D]."""
        return cls({k: Stats.fit(v, mode) for k, v in arrays.items() if v is not None})

    def normalize(self, key: str, x: np.ndarray) -> np.ndarray:
        """Normalize ``x`` with the stats stored under ``key`` (identity if none)."""
        return self.stats[key].normalize(x) if key in self.stats else np.asarray(x, np.float32)

    def unnormalize(self, key: str, x: np.ndarray) -> np.ndarray:
        """Undo :meth:`normalize`."""
        return self.stats[key].unnormalize(x) if key in self.stats else np.asarray(x, np.float32)

    def save(self, directory: str | Path) -> Path:
        """Write ``normalization.json`` into ``directory``."""
        path = Path(directory) / NORMALIZATION_NAME
        path.write_text(json.dumps({k: s.to_dict() for k, s in self.stats.items()}, indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Normalizer:
        """Read ``normalization.json``; a missing or malformed file raises CheckpointError."""
        path = Path(directory) / NORMALIZATION_NAME
        if not path.is_file():
            raise CheckpointError(f"missing normalization stats file: {path}")
        try:
            return cls({k: Stats.from_dict(v) for k, v in json.loads(path.read_text()).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"bad normalization stats file {path}: {exc!r}") from exc
