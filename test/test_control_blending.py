"""Blend modes: latest, temporal ensemble (weighted mean), rtc (continuous switch)."""

import math

import numpy as np
import pytest

from roboalign_ros.control.blending import ActionBlender
from roboalign_ros.control.chunk import Chunk

NAMES = ('j1', 'gripper')


def const(stamp, value, h=20, dt=0.05):
    return Chunk(stamp, dt, np.full((h, 2), value, np.float32), NAMES)


def test_none_when_nothing_covers():
    b = ActionBlender(2, 'latest')
    assert b.sample(0.0) is None
    b.add(const(1.0, 0.0))
    assert b.sample(0.5) is None          # not started
    assert b.sample(1.2) is not None
    assert b.sample(5.0) is None          # ran out
    assert len(b) == 0                    # and was dropped


def test_latest_switches_immediately_and_drops_superseded():
    b = ActionBlender(2, 'latest')
    b.add(const(0.0, 1.0))
    b.add(const(0.3, 2.0))
    assert b.sample(0.2)[0] == 1.0
    assert b.sample(0.3)[0] == 2.0
    assert len(b) == 1


def test_temporal_ensemble_is_weighted_average():
    k = 3.0
    b = ActionBlender(2, 'temporal_ensemble', ensemble_k=k)
    stamps, values = [0.0, 0.2, 0.4], [1.0, 4.0, -2.0]
    for s, v in zip(stamps, values):
        b.add(const(s, v))
    now = 0.5
    w = [math.exp(-k * (now - s)) for s in stamps]
    expected = sum(wi * vi for wi, vi in zip(w, values)) / sum(w)
    np.testing.assert_allclose(b.sample(now), [expected, expected])
    # k = 0: plain mean; only covering chunks vote
    b0 = ActionBlender(2, 'temporal_ensemble')
    b0.add(const(0.0, 1.0, h=5))          # ends at 0.2
    b0.add(const(0.1, 3.0))
    b0.add(const(0.15, 5.0))
    np.testing.assert_allclose(b0.sample(0.18)[0], 3.0)
    np.testing.assert_allclose(b0.sample(0.3)[0], 4.0)


@pytest.mark.parametrize('shape', ['linear', 'smooth'])
def test_rtc_crossfade_has_no_jump(shape):
    period, blend = 0.01, 0.2
    b = ActionBlender(2, 'rtc', rtc_blend_s=blend, rtc_shape=shape)
    ramp = np.linspace(0, 1, 40, dtype=np.float32)[:, None] * np.ones((1, 2))
    b.add(Chunk(0.0, 0.05, ramp, NAMES))                  # old plan: slope 0.5/s
    b.add(Chunk(0.25, 0.05, 5.0 + ramp, NAMES))           # new plan: offset by 5
    out, t = [], 0.0
    while t < 1.0:
        out.append(b.sample(t)[0])
        t += period
    out = np.array(out)
    steps = np.abs(np.diff(out))
    # A 5-unit disagreement is spread over the fade: max step ~ 5 * period/blend (* 1.5 smooth)
    bound = 5.0 * period / blend * (1.5 if shape == 'smooth' else 1.0) + 0.01
    assert steps.max() <= bound + 1e-6
    # after the fade the new plan is tracked exactly and the old chunk is gone
    np.testing.assert_allclose(b.sample(0.6)[0], Chunk(0.25, 0.05, 5.0 + ramp, NAMES)
                               .sample(0.6)[0], rtol=1e-6)
    assert len(b) == 1
    # the latest mode jumps by the whole disagreement
    lb = ActionBlender(2, 'latest')
    lb.add(Chunk(0.0, 0.05, ramp, NAMES))
    lb.add(Chunk(0.25, 0.05, 5.0 + ramp, NAMES))
    before = lb.sample(0.24)[0]
    assert lb.sample(0.25)[0] - before > 4.5


def test_rtc_fade_never_outlasts_old_plan():
    b = ActionBlender(2, 'rtc', rtc_blend_s=1.0, rtc_shape='linear')
    b.add(const(0.0, 0.0, h=5, dt=0.05))     # ends at 0.2
    b.add(const(0.1, 1.0))
    vals = [b.sample(t)[0] for t in np.arange(0.1, 0.3, 0.01)]
    assert vals[0] == 0.0                    # starts on the old plan
    assert max(np.abs(np.diff(vals))) <= 0.1 + 1e-9   # fade squeezed into 0.1 s, 10 ticks
    assert vals[-1] == 1.0


def test_chunks_out_of_order_rejected():
    b = ActionBlender(2)
    b.add(const(1.0, 0.0))
    with pytest.raises(ValueError, match='stamp'):
        b.add(const(0.5, 0.0))
