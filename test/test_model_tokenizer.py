"""Action tokenizers (FAST, binning) and normalization stats."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roboalign_ros.model import (
    BinningActionTokenizer,
    CheckpointError,
    FastActionTokenizer,
    Normalizer,
    load_action_tokenizer,
)
from roboalign_ros.model.tiny import synthetic_chunks


@pytest.fixture(scope="module")
def fast():
    return FastActionTokenizer(10, 7, scale=10.0, bpe_vocab_size=512).fit(
        synthetic_chunks(1000, 10, 7, seed=0))


def test_fast_bound_is_below_sqrt_h_over_2_scale():
    for h in (1, 4, 10, 16, 50):
        tok = FastActionTokenizer(h, 2, scale=10.0)
        assert tok.error_bound() <= math.sqrt(h) / 20 + 1e-12


def test_fast_round_trip_within_bound(fast):
    rng = np.random.default_rng(1)
    chunks = np.concatenate([synthetic_chunks(100, 10, 7, seed=2),
                             rng.uniform(-1, 1, (100, 10, 7))])
    bound = fast.error_bound()
    for c in chunks:
        result = fast.decode(fast.encode(c))
        assert result.problems == []
        assert result.chunk.dtype == np.float32 and result.chunk.shape == (10, 7)
        assert np.abs(result.chunk - c).max() <= bound + 1e-6


def test_fast_compresses_smooth_chunks(fast):
    lengths = [len(fast.encode(c)) for c in synthetic_chunks(50, 10, 7, seed=3)]
    assert np.mean(lengths) < 0.5 * 70
    assert fast.vocab_size > fast.alphabet_size  # merges were learned


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 20), d=st.integers(1, 8), scale=st.floats(2.0, 50.0),
       seed=st.integers(0, 10**6))
def test_fast_round_trip_property(h, d, scale, seed):
    tok = FastActionTokenizer(h, d, scale=scale)  # unfitted: alphabet only, still exact
    chunk = np.random.default_rng(seed).uniform(-1, 1, (h, d))
    out = tok.decode(tok.encode(chunk)).chunk
    assert np.abs(out - chunk).max() <= tok.error_bound() + 1e-6


@settings(max_examples=30, deadline=None)
@given(n_bins=st.integers(2, 512), seed=st.integers(0, 10**6))
def test_binning_round_trip_property(n_bins, seed):
    tok = BinningActionTokenizer(6, 3, n_bins=n_bins)
    chunk = np.random.default_rng(seed).uniform(-1, 1, (6, 3))
    out = tok.decode(tok.encode(chunk))
    assert out.problems == []
    assert np.abs(out.chunk - chunk).max() <= tok.error_bound() + 1e-9


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(-10**12, 10**12), max_size=200))
def test_decode_never_crashes(fast, ids):
    for tok in (fast, BinningActionTokenizer(10, 7)):
        out = tok.decode(ids)
        assert out.chunk.shape == (10, 7) and np.all(np.isfinite(out.chunk))


def test_decode_reports_wrong_length_and_unknown_ids(fast):
    ids = fast.encode(synthetic_chunks(1, 10, 7)[0])
    assert any("padded" in p for p in fast.decode(ids[:-3]).problems)
    assert any("truncated" in p for p in fast.decode(ids + ids).problems)
    assert any("unknown action token" in p for p in fast.decode([*ids, 10**6]).problems)
    assert fast.decode("not ids").problems


def test_out_of_range_values_are_clipped(fast):
    chunk = np.full((10, 7), 5.0)
    assert np.allclose(fast.decode(fast.encode(chunk)).chunk, 1.0, atol=fast.error_bound())
    with pytest.raises(ValueError, match="shape"):
        fast.encode(np.zeros((3, 7)))


def test_save_load(tmp_path, fast):
    chunk = synthetic_chunks(1, 10, 7, seed=9)[0]
    for tok in (fast, BinningActionTokenizer(10, 7, n_bins=100)):
        tok.save_pretrained(tmp_path / tok.kind)
        loaded = load_action_tokenizer(tmp_path / tok.kind)
        assert type(loaded) is type(tok) and loaded.encode(chunk) == tok.encode(chunk)
    (tmp_path / "fast" / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_action_tokenizer(tmp_path / "fast")
    with pytest.raises(CheckpointError, match="action_tokenizer.json"):
        load_action_tokenizer(tmp_path / "missing")


@pytest.mark.parametrize("mode", ["quantile", "mean_std"])
def test_normalizer_round_trip(tmp_path, mode):
    data = np.random.default_rng(0).normal(3.0, 2.0, (500, 4)).astype(np.float32)
    data[:, 3] = 1.0  # constant dimension must not blow up
    norm = Normalizer.fit(mode, action=data)
    x = norm.normalize("action", data)
    if mode == "quantile":
        assert np.all(np.quantile(x[:, :3], 0.99, axis=0) <= 1.0 + 1e-5)
    assert np.allclose(norm.unnormalize("action", x), data, atol=1e-4)
    norm.save(tmp_path)
    assert np.allclose(Normalizer.load(tmp_path).normalize("action", data), x)
    (tmp_path / "normalization.json").write_text('{"action": {"mode": "quantile"}}')
    with pytest.raises(CheckpointError, match="normalization.json"):
        Normalizer.load(tmp_path)
