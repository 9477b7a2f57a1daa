"""Stats: per-episode stats aggregate to the stats of the whole dataset."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hst

from roboalign_ros.data import stats as st


@settings(max_examples=40, deadline=None)
@given(
    lengths=hst.lists(hst.integers(1, 40), min_size=1, max_size=6),
    dim=hst.integers(1, 4),
    seed=hst.integers(0, 2**31 - 1),
)
def test_aggregate_matches_concatenation(lengths: list[int], dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    episodes = [rng.normal(rng.normal(), rng.uniform(0.1, 3), (n, dim)) for n in lengths]
    agg = st.aggregate([{"x": st.feature_stats(e)} for e in episodes])["x"]
    full = np.concatenate(episodes)
    np.testing.assert_allclose(agg["mean"], full.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(agg["std"], full.std(0), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(agg["min"], full.min(0))
    np.testing.assert_array_equal(agg["max"], full.max(0))
    assert agg["count"].tolist() == [len(full)]
    assert np.all(agg["min"] <= agg["q01"]) and np.all(agg["q01"] <= agg["q99"])
    assert np.all(agg["q99"] <= agg["max"])
    if len(episodes) == 1:  # quantiles are exact for one episode, approximate otherwise
        np.testing.assert_allclose(agg["q99"], np.quantile(full, 0.99, axis=0))


def test_image_stats_per_channel() -> None:
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 0, 255, 51
    acc = st.ImageStatsAccumulator(48, 64)
    for _ in range(3):
        acc.add(frame)
    res = acc.result()
    assert res["mean"].shape == (3, 1, 1) and res["count"].tolist() == [3]
    np.testing.assert_allclose(res["mean"].ravel(), [0.0, 1.0, 0.2])
    np.testing.assert_allclose(res["std"].ravel(), 0.0, atol=1e-12)
    round_trip = st.from_json(st.to_json({"img": res}))["img"]
    np.testing.assert_array_equal(round_trip["q01"], res["q01"])
