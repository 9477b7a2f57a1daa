"""Normalization statistics: per episode, then aggregated over the dataset.

Each feature gets mean/std/min/max/count and the quantiles q01/q10/q50/q90/q99 (LeRobot's
stats.json keys). Vectors have the feature's shape; images are per channel, shape (3, 1, 1),
on the [0, 1] scale. Aggregation is exact for count/mean/std/min/max; quantiles are the
count-weighted mean of the per-episode quantiles (LeRobot's approximation), so they are exact
for a single episode and close for many.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
Stats = dict[str, np.ndarray]


def feature_stats(values: np.ndarray) -> Stats:
    """Stats of one feature over one episode; `values` is (frames, dim) or (frames,)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] == 0:
        raise ValueError("values: need at least one frame to compute stats")
    out = {
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "count": np.array([x.shape[0]], dtype=np.int64),
    }
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)
    out.update({name: q for name, q in zip(QUANTILES, qs, strict=True)})
    return out


class ImageStatsAccumulator:
    """Per-channel stats of a camera stream, from a strided pixel sample of every frame.

    Keeps ~`pixels_per_frame` pixels per frame (uint8), so an episode of 1000 frames costs a
    few MB at most; the frames themselves are never buffered.
    """

    def __init__(self, height: int, width: int, pixels_per_frame: int = 1024,
                 depth: bool = False) -> None:
        self.stride = max(1, int(np.sqrt(height * width / pixels_per_frame)))
        self.depth = depth  # HxW uint16 depth (mm): one channel, stats in metres
        self._samples: list[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        """Sample one HxWx3 uint8 frame (a depth stream: HxW uint16)."""
        channels = 1 if self.depth else 3
        self._samples.append(
            frame[:: self.stride, :: self.stride].reshape(-1, channels).copy())

    @property
    def frames(self) -> int:
        """Number of frames sampled so far."""
        return len(self._samples)

    def result(self) -> Stats:
        """Stats over the frames added so far, per channel, shape (3, 1, 1), scale [0, 1].

        A depth stream: shape (1, 1, 1), in metres.
        """
        px = np.concatenate(self._samples).astype(np.float64) / (1000.0 if self.depth else 255.0)
        st = feature_stats(px)
        c = 1 if self.depth else 3
        st = {k: (v if k == "count" else v.reshape(c, 1, 1)) for k, v in st.items()}
        st["count"] = np.array([self.frames], dtype=np.int64)
        return st


def aggregate(per_episode: Sequence[Mapping[str, Stats]]) -> dict[str, Stats]:
    """Combine per-episode stats {feature: stats} into dataset stats (see module doc)."""
    if not per_episode:
        return {}
    out: dict[str, Stats] = {}
    for key in per_episode[0]:
        eps = [ep[key] for ep in per_episode if key in ep]
        n = np.array([float(e["count"][0]) for e in eps])
        w = (n / n.sum()).reshape(-1, *([1] * np.ndim(eps[0]["mean"])))
        means = np.stack([e["mean"] for e in eps])
        mean = (w * means).sum(axis=0)
        var = (w * (np.stack([e["std"] for e in eps]) ** 2 + (means - mean) ** 2)).sum(axis=0)
        agg = {
            "mean": mean,
            "std": np.sqrt(np.maximum(var, 0.0)),
            "min": np.min(np.stack([e["min"] for e in eps]), axis=0),
            "max": np.max(np.stack([e["max"] for e in eps]), axis=0),
            "count": np.array([int(n.sum())], dtype=np.int64),
        }
        for q in QUANTILES:
            agg[q] = (w * np.stack([e[q] for e in eps])).sum(axis=0)
        out[key] = agg
    return out


def to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Stats as nested lists (for stats.json and parquet columns)."""
    return {k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in stats.items()}


def from_json(obj: Mapping[str, Mapping[str, Any]]) -> dict[str, Stats]:
    """Inverse of `to_json`."""
    return {k: {s: np.asarray(v) for s, v in st.items()} for k, st in obj.items()}
