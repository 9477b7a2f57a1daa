"""Chunk validation, delay compensation and interpolation."""

import numpy as np
import pytest

from roboalign_ros.control.chunk import Chunk, ChunkError, ChunkLimits, validate_chunk

NAMES = ('j1', 'j2', 'gripper')


def make(stamp=0.0, dt=0.1, h=10, actions=None, names=NAMES, **kw):
    if actions is None:
        actions = np.arange(h, dtype=np.float32)[:, None] * np.ones((1, len(names)))
    return Chunk(stamp, dt, actions, names, **kw)


LIMITS = ChunkLimits(NAMES, max_horizon=50, max_duration=3.0, max_future=0.05, max_age=0.5)


def field_of(fn):
    with pytest.raises(ChunkError) as err:
        fn()
    return err.value.field, err.value.code


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_nonfinite_rejected_naming_field(bad):
    a = np.zeros((5, 3), np.float32)
    a[3, 1] = bad
    assert field_of(lambda: make(actions=a)) == ('actions', 'nonfinite')


def test_shape_and_dt_and_names_errors():
    assert field_of(lambda: make(actions=np.zeros(3)))[0] == 'actions'
    assert field_of(lambda: make(actions=np.zeros((0, 3))))[0] == 'actions'
    assert field_of(lambda: make(actions=np.zeros((4, 0)), names=()))[0] == 'actions'
    assert field_of(lambda: make(dt=0.0))[0] == 'dt'
    assert field_of(lambda: make(dt=-0.1))[0] == 'dt'
    assert field_of(lambda: make(stamp=float('nan')))[0] == 'stamp'
    two_names = ('a', 'b')
    assert field_of(lambda: make(actions=np.zeros((4, 3)), names=two_names))[0] == 'dimension_names'
    assert field_of(lambda: make(action_space='torque'))[0] == 'action_space'
    assert issubclass(ChunkError, ValueError)


def test_validate_against_robot_and_clock():
    now = 100.0
    ok = make(stamp=now - 0.1)
    validate_chunk(ok, now, LIMITS)
    cases = {
        'oversized': make(stamp=now, h=51, dt=0.01),
        'duration': make(stamp=now, h=40, dt=0.1),
        'future': make(stamp=now + 0.2),
        'stale': make(stamp=now - 0.6),
        'dimension_names': make(stamp=now, names=('a', 'b', 'gripper')),
        'action_space': make(stamp=now, action_space='ee_delta'),
    }
    for code, chunk in cases.items():
        assert field_of(lambda c=chunk: validate_chunk(c, now, LIMITS))[1] == code, code
    # all rows in the past although the stamp is young enough
    short = make(stamp=now - 0.3, h=2, dt=0.1)
    assert field_of(lambda: validate_chunk(short, now, LIMITS)) == ('stamp', 'stale')


def test_chunk_is_an_immutable_float32_copy():
    src = np.ones((4, 3))
    c = make(actions=src)
    src[:] = 7
    assert c.actions.dtype == np.float32 and c.actions[0, 0] == 1
    with pytest.raises(ValueError):
        c.actions[0, 0] = 2


def test_delay_compensation_drops_past_rows():
    c = make(stamp=10.0, dt=0.1, h=10)           # rows at 10.0, 10.1, ..., 10.9
    times, rows = c.remaining(10.25)              # 3 rows (10.0..10.2) already past
    assert c.first_future_row(10.25) == 3
    np.testing.assert_allclose(times, 10.0 + 0.1 * np.arange(3, 10))
    np.testing.assert_array_equal(rows[:, 0], np.arange(3, 10))
    assert c.first_future_row(10.3) == 3          # a row exactly at now is not past
    assert c.first_future_row(9.0) == 0 and c.first_future_row(20.0) == 10


def test_interpolation_between_rows():
    a = np.array([[0.0, 10.0, 0.0], [1.0, 20.0, 1.0], [3.0, 20.0, 1.0]], np.float32)
    c = make(stamp=1.0, dt=0.5, actions=a)
    np.testing.assert_allclose(c.sample(1.0), a[0])
    np.testing.assert_allclose(c.sample(1.25), [0.5, 15.0, 0.5])
    np.testing.assert_allclose(c.sample(1.875), [2.5, 20.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(c.sample(2.0), a[2])
    assert c.sample(0.99) is None and c.sample(2.01) is None
