"""ChunkExecutor: submit/tick, watchdog, e-stop latch, instruction flush, envelope property."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roboalign_ros.control.chunk import Chunk
from roboalign_ros.control.executor import ChunkExecutor, ExecutorConfig
from roboalign_ros.control.safety import SafetyEnvelope, SafetyLimits

JOINTS = ('a', 'b')
NAMES = JOINTS + ('gripper',)
PERIOD = 0.01


def planar_fk(q):
    return np.array([0.5 * np.cos(q[0]) + 0.5 * np.cos(q[0] + q[1]),
                     0.5 * np.sin(q[0]) + 0.5 * np.sin(q[0] + q[1]), 0.0])


LIMITS = dict(lower=[-2.0, -2.0], upper=[2.0, 2.0], vel_max=[2.0, 2.0], joint_names=JOINTS,
              margin=0.05, velocity_scale=0.5, max_step=0.05)


def make_exec(blend='latest', fk=None, box=None, **cfg):
    lim = SafetyLimits(**LIMITS, **(box or {}))
    config = ExecutorConfig(NAMES, rate_hz=1 / PERIOD, blend=blend, **cfg)
    return ChunkExecutor(config, SafetyEnvelope(lim, PERIOD), fk=fk)


def ramp_chunk(stamp, seq, start=0.0, slope=0.5, h=20, dt=0.05, grip=0.5):
    t = np.arange(h) * dt
    arm = start + slope * t
    a = np.stack([arm, -arm, np.full(h, grip)], axis=1)
    return Chunk(stamp, dt, a, NAMES, sequence=seq)


Q0 = np.zeros(2)


def test_hold_is_the_controllers_stop_before_any_chunk_then_track_from_measured():
    ex = make_exec()
    measured = np.array([0.1, -0.1])
    cmd = ex.tick(0.0, measured)
    assert cmd.kind == 'hold' and cmd.stop and cmd.gripper is None
    np.testing.assert_allclose(cmd.arm, measured)       # informational: where the arm is
    cmd = ex.tick(0.01, measured)
    assert cmd.kind == 'hold' and not cmd.stop           # the stop is sent once
    ok, why = ex.submit(ramp_chunk(0.0, 1, start=0.1, slope=0.1), now=0.05)
    assert ok, why
    t = 0.1
    cmd = ex.tick(t, measured)
    assert cmd.kind == 'track' and cmd.gripper == pytest.approx(0.5)
    assert 0.1 < cmd.arm[0] < 0.11                      # starts from rest (acceleration)
    assert cmd.duration >= ex.config.lead_time
    for _ in range(20):
        t += PERIOD
        cmd = ex.tick(t, measured)
    np.testing.assert_allclose(cmd.arm, [0.1 + 0.1 * t, -0.1 - 0.1 * t], atol=1e-3)


def test_no_joint_state_is_no_state_not_a_hold():
    ex = make_exec()
    cmd = ex.tick(0.0, None)
    assert cmd.kind == 'no_state' and np.isnan(cmd.arm).all()
    assert cmd.reasons == ('no joint state',)


def test_rejections_counted_with_reason():
    ex = make_exec(max_horizon=30)
    bad = np.zeros((5, 3), np.float32)
    ok, why = ex.submit(ramp_chunk(0.0, 1, h=31, dt=0.01), now=0.0)
    assert not ok and 'max_horizon' in why
    ok, why = ex.submit(ramp_chunk(-5.0, 2), now=0.0)
    assert not ok and why.startswith('stamp')
    ok, why = ex.submit(Chunk(0.0, 0.1, bad, ('x', 'y', 'gripper'), sequence=3), now=0.0)
    assert not ok and why.startswith('dimension_names')
    assert ex.submit(ramp_chunk(0.0, 4), now=0.0)[0]
    ok, why = ex.submit(ramp_chunk(0.0, 4), now=0.0)
    assert not ok and why.startswith('sequence')
    c = ex.status().counters
    assert c['rejected_oversized'] == c['rejected_stale'] == c['rejected_out_of_order'] == 1
    assert c['accepted'] == 1


def test_watchdog_holds_after_chunk_runs_out_and_after_timeout():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0)
    ex.submit(ramp_chunk(0.0, 1, slope=0.2, h=5, dt=0.05), now=0.0)   # ends at 0.2
    t, kinds = 0.0, []
    while t < 0.3:
        cmd = ex.tick(t, Q0)
        kinds.append((cmd.kind, cmd.stop))
        t += PERIOD
    assert cmd.kind == 'hold' and 'no chunk covers now' in cmd.reasons[0]
    holds = kinds[kinds.index(('hold', True)):]
    assert holds[0] == ('hold', True) and all(k == ('hold', False) for k in holds[1:])
    # timeout: a long chunk still covers now, but the policy went silent
    ex = make_exec(watchdog_timeout=0.2)
    ex.tick(0.0, Q0)
    ex.submit(ramp_chunk(0.0, 1, slope=0.1, h=100, dt=0.05), now=0.0)
    assert ex.tick(0.19, Q0).kind == 'track'
    cmd = ex.tick(0.21, Q0)
    assert cmd.kind == 'hold' and cmd.stop and cmd.reasons[0].startswith('watchdog')
    assert ex.status().counters['watchdog_trips'] == 1


def test_ee_delta_hold_is_zero_twist():
    names = ('vx', 'vy', 'vz', 'wx', 'wy', 'wz', 'gripper')
    lim = SafetyLimits(**LIMITS)
    ex = ChunkExecutor(ExecutorConfig(names, action_space='ee_delta', rate_hz=100),
                       SafetyEnvelope(lim, PERIOD))
    a = np.tile(np.array([0.1, 0, 0, 0, 0, 0, 1.0], np.float32), (5, 1))
    assert ex.submit(Chunk(0.0, 0.05, a, names, 'ee_delta', 1), 0.0)[0]
    cmd = ex.tick(0.1, Q0)
    assert cmd.kind == 'track' and cmd.arm[0] == pytest.approx(0.1)
    cmd = ex.tick(0.5, Q0)
    assert cmd.kind == 'hold' and np.all(cmd.arm == 0) and cmd.arm.shape == (6,)


def test_estop_stops_latched_and_release_resumes_from_where_the_arm_is():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0)
    ex.submit(ramp_chunk(0.0, 1, slope=0.5, h=100), now=0.0)
    t = 0.0
    for _ in range(10):
        assert ex.tick(t, Q0).kind == 'track'
        t += PERIOD
    assert ex.estop(True) is True
    assert ex.estop(True) is False                   # repeated: no change
    cmd = ex.tick(t, Q0 + 0.03)                      # the very next tick: within one period
    assert cmd.kind == 'estop' and cmd.stop
    for _ in range(50):                              # latched: nothing streamed, no re-stop
        t += PERIOD
        cmd = ex.tick(t, Q0 + 0.01)
        assert cmd.kind == 'estop' and not cmd.stop
    assert not ex.submit(ramp_chunk(t, 2), now=t)[0]  # refused while engaged
    assert ex.estop(False, now=t) is True
    assert ex.estop(False, now=t) is False            # release without an engaged e-stop
    t += PERIOD
    measured = np.array([0.06, -0.06])                # where the controller really stopped
    cmd = ex.tick(t, measured)                       # old chunk flushed: hold, not track
    assert cmd.kind == 'hold'
    ok, why = ex.submit(ramp_chunk(t - 0.05, 3), now=t)   # observed before release
    assert not ok and 'flush' in why
    assert ex.submit(ramp_chunk(t, 4, start=0.5), now=t)[0]
    cmd = ex.tick(t + PERIOD, measured)
    assert cmd.kind == 'track'
    step = np.abs(cmd.arm - measured)                 # from the measured state, at rest
    assert np.max(step) <= 0.01 + 1e-9
    assert np.all(step / cmd.duration <= np.asarray(LIMITS['vel_max']) + 1e-9)


def test_instruction_change_flushes():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0)
    ex.submit(ramp_chunk(0.0, 1, h=100), now=0.0)
    assert ex.tick(0.1, Q0).kind == 'track'
    ex.set_instruction_changed(now=0.1)
    assert ex.tick(0.11, Q0).kind == 'hold'
    assert not ex.submit(ramp_chunk(0.05, 2, h=100), now=0.12)[0]   # planned for the old one
    assert ex.submit(ramp_chunk(0.11, 3, h=100), now=0.12)[0]
    assert ex.tick(0.13, Q0).kind == 'track'


def test_rtc_executor_is_continuous_across_switches():
    ex = make_exec('rtc', rtc_blend_s=0.2, watchdog_timeout=10.0)
    ex.envelope.limits.velocity_scale = 1.0
    ex.tick(0.0, Q0)
    prev, t, seq, jumps = None, 0.0, 0, []
    rng = np.random.default_rng(0)
    while t < 2.0:
        if abs(t / 0.1 - round(t / 0.1)) < 1e-6:      # a new, disagreeing plan every 100 ms
            seq += 1
            assert ex.submit(ramp_chunk(t - 0.05, seq, start=0.1 * t + rng.uniform(-0.01, 0.01),
                                        slope=0.1), now=t)[0]
        cmd = ex.tick(t, Q0)
        if prev is not None:
            jumps.append(np.max(np.abs(cmd.arm - prev)))
        prev = cmd.arm
        t = round(t + PERIOD, 9)
    assert max(jumps) < 0.004   # far below the 0.02 plan disagreement


# -- property: no command ever leaves the envelope ---------------------------------------

BOX = dict(workspace_min=[0.4, -0.9, -0.1], workspace_max=[1.1, 0.9, 0.1])
row = st.lists(st.floats(-10, 10), min_size=3, max_size=3)
chunk_st = st.tuples(st.lists(row, min_size=1, max_size=30), st.floats(0.005, 0.2),
                     st.floats(-0.3, 0.05))


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(chunk_st, min_size=1, max_size=6),
       blend=st.sampled_from(['latest', 'temporal_ensemble', 'rtc']),
       mode=st.sampled_from(['hold', 'project']),
       q0=st.tuples(st.floats(-0.5, 0.5), st.floats(0.3, 1.5)),
       gaps=st.lists(st.floats(0.001, 0.3), min_size=15, max_size=15),
       lag=st.floats(0.0, 0.2))
def test_every_command_is_feasible_and_inside_the_envelope(chunks, blend, mode, q0, gaps, lag):
    """Whatever the tick timing (late ticks up to 0.3 s) and however far the arm lags."""
    ex = make_exec(blend, fk=planar_fk, box=dict(BOX, workspace_mode=mode), ensemble_k=2.0)
    env, lim, cfg = ex.envelope, ex.envelope.limits, ex.config
    q = np.array(q0)
    if env.box_violation(planar_fk(q)) > 0:
        return  # property is about starting inside the envelope
    v_hw = lim.vel_max
    prev, prev_t, v_prev, t, seq = None, None, np.zeros(2), 0.0, 0
    for rows, dt, chunk_lag in chunks:
        seq += 1
        ex.submit(Chunk(t + chunk_lag, dt, np.array(rows, np.float32), NAMES, sequence=seq),
                  now=t)
        for gap in gaps:
            measured = q if prev is None else prev + lag * (q - prev)  # somewhere behind
            cmd = ex.tick(t, measured)
            assert cmd.kind in ('track', 'hold')
            if cmd.kind == 'track':
                ref = measured if prev is None else prev
                elapsed = PERIOD if prev is None else min(t - prev_t, lim.max_tick_dt)
                assert env.joint_within(cmd.arm)
                assert np.all(np.abs(cmd.arm - ref) <= v_hw * lim.velocity_scale * elapsed
                              + 1e-9)
                assert np.all(np.abs(cmd.arm - ref) <= lim.max_step + 1e-9)
                # reachable in its duration from the previous command and from the arm
                for frm in (ref, measured):
                    assert np.all(np.abs(cmd.arm - frm) / cmd.duration
                                  <= v_hw * cfg.duration_margin + 1e-9)
                assert env.box_violation(planar_fk(cmd.arm)) <= 1e-9
                if prev is not None:
                    v = (cmd.arm - prev) / elapsed
                    within_acc = np.abs(v - v_prev) <= lim.acc_max * elapsed + 1e-6
                    at_limit = ~env.joint_within(cmd.arm + 1e-6 * np.sign(v)) | (v == 0)
                    assert np.all(within_acc | at_limit) or env.counters['workspace']
                    v_prev = v
                q = prev = cmd.arm
                prev_t = t
            else:
                prev, v_prev = None, np.zeros(2)   # after a stop: from the measured state
            assert cmd.gripper is None or 0.0 <= cmd.gripper <= 1.0
            t += gap


def test_late_ticks_take_longer_steps_with_longer_durations_not_faster_moves():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0)
    assert ex.submit(ramp_chunk(0.0, 1, start=0.0, slope=5.0, h=40, dt=0.05), now=0.0)[0]
    t, prev = 0.0, Q0.copy()
    speeds = []
    for gap in [0.01] * 30 + [0.09, 0.01, 0.2, 0.01, 0.04]:
        t += gap
        cmd = ex.tick(t, prev)
        assert cmd.kind == 'track'
        speeds.append(np.max(np.abs(cmd.arm - prev)) / cmd.duration)
        prev = cmd.arm
    # the envelope allows 1 rad/s (0.5 x 2.0): no command asks for more than the duration
    # margin of the hardware limit, even after the 90 ms and 200 ms gaps
    assert max(speeds) <= 2.0 * ex.config.duration_margin + 1e-9
    assert ex.envelope.counters['velocity_limit'] > 0


def test_state_watchdog_stops_and_resumes_only_from_a_fresh_state():
    ex = make_exec(watchdog_timeout=10.0, state_timeout=0.1)
    ex.tick(0.0, Q0, state_stamp=0.0)
    assert ex.submit(ramp_chunk(0.0, 1, slope=0.5, h=100), now=0.0)[0]
    assert ex.tick(0.05, Q0, state_stamp=0.04).kind == 'track'
    cmd = ex.tick(0.2, Q0, state_stamp=0.04)          # the driver went silent
    assert cmd.kind == 'no_state' and cmd.stop and 'watchdog' in cmd.reasons[0]
    assert not ex.tick(0.21, Q0, state_stamp=0.04).stop
    assert ex.status().counters['state_losses'] == 1
    new = np.array([0.2, -0.1])                        # the restarted driver's arm is here
    cmd = ex.tick(0.5, new, state_stamp=0.5)
    assert cmd.kind == 'hold'                          # plans from before the loss flushed
    assert not ex.submit(ramp_chunk(0.15, 2, slope=0.5, h=100), now=0.5)[0]  # before the loss
    assert ex.submit(ramp_chunk(0.5, 3, start=0.2, slope=0.5, h=100), now=0.5)[0]
    cmd = ex.tick(0.51, new, state_stamp=0.51)
    assert cmd.kind == 'track' and np.max(np.abs(cmd.arm - new)) <= 0.01 + 1e-9


def test_a_jump_in_the_joint_state_flushes_and_resumes_from_the_new_state():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0, state_stamp=0.0)
    assert ex.submit(ramp_chunk(0.0, 1, slope=0.2, h=100, grip=0.0), now=0.0)[0]
    cmd = ex.tick(0.01, Q0, state_stamp=0.01)
    assert cmd.kind == 'track' and cmd.gripper == 0.0   # the hand closed on something
    reset = np.array([0.8, -0.4])                      # the sim was reset: 0.8 rad in 10 ms
    cmd = ex.tick(0.02, reset, state_stamp=0.02)
    assert cmd.kind == 'no_state' and cmd.stop and 'jumped' in cmd.reasons[0]
    # the old plan is gone, and so is its gripper command: repeated, it would close the
    # hand the reset opened before the first new plan arrives
    cmd = ex.tick(0.03, reset, state_stamp=0.03)
    assert cmd.kind == 'hold' and cmd.gripper is None
    assert ex.status().counters['state_jumps'] == 1
    assert ex.submit(ramp_chunk(0.03, 2, start=0.8, slope=0.0, h=100), now=0.03)[0]
    cmd = ex.tick(0.04, reset, state_stamp=0.04)
    assert cmd.kind == 'track' and np.max(np.abs(cmd.arm - reset)) <= 0.01 + 1e-9
    assert cmd.gripper == 0.5


def test_pause_for_homing_then_hold_until_a_chunk_observed_after_it():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0)
    assert ex.submit(ramp_chunk(0.0, 1, slope=0.5, h=100), now=0.0)[0]
    assert ex.tick(0.1, Q0).kind == 'track'
    ex.pause(0.1, 2.1)
    cmd = ex.tick(0.2, Q0)
    assert cmd.kind == 'paused' and not cmd.stop       # the home trajectory owns the arm
    assert not ex.submit(ramp_chunk(1.0, 2, h=100), now=1.0)[0]   # observed while homing
    home = np.array([0.3, 0.3])
    cmd = ex.tick(2.2, home)
    assert cmd.kind == 'hold'                          # not the pre-home pose
    assert not ex.submit(ramp_chunk(2.05, 3, h=100), now=2.2)[0]
    assert ex.submit(ramp_chunk(2.2, 4, start=0.3, slope=0.0, h=100), now=2.2)[0]
    cmd = ex.tick(2.21, home)
    assert cmd.kind == 'track' and np.max(np.abs(cmd.arm - home)) <= 0.01 + 1e-9


def test_with_the_packaged_robot_and_pinocchio_fk():
    pytest.importorskip('pinocchio')
    from roboalign_ros.control.kinematics import Kinematics
    from roboalign_ros.robot import load_robot_config
    try:
        spec = load_robot_config('sim_arm')
    except Exception as exc:  # xacro missing, etc.
        pytest.skip(f'robot config unavailable: {exc}')
    kin = Kinematics(spec)
    env = SafetyEnvelope.from_robot(spec, PERIOD, fk=kin.fk_position)
    names = tuple(spec.arm_joints) + ('gripper',)
    ex = ChunkExecutor(ExecutorConfig(names, blend='rtc'), env)
    q = np.asarray(spec.home, float)
    assert env.box_violation(kin.fk_position(q)) == 0
    h = 30
    a = np.hstack([q + np.linspace(0, 3.0, h)[:, None], np.ones((h, 1))])  # runs into limits
    assert ex.submit(Chunk(0.0, 0.05, a, names, sequence=1), now=0.0)[0]
    t = 0.0
    for _ in range(150):
        cmd = ex.tick(t, q)
        assert env.joint_within(cmd.arm)
        assert env.box_violation(kin.fk_position(cmd.arm)) <= 1e-9
        q = cmd.arm
        t += PERIOD
    assert sum(env.counters.values()) > 0


def test_repeated_estop_false_is_a_noop_and_policy_restart_accepted():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0)
    assert ex.submit(ramp_chunk(0.0, 5, h=100), now=0.0)[0]
    ex.estop(False, now=0.05)               # heartbeat "not engaged": must not flush
    assert ex.tick(0.1, Q0).kind == 'track'
    assert ex.submit(ramp_chunk(0.1, 1, h=100), now=0.1)[0]   # restarted policy, newer stamp
    assert ex.status().counters['sequence_resets'] == 1


def test_clock_jump_back_starts_over():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(100.0, Q0)
    assert ex.submit(ramp_chunk(100.0, 7, h=100), now=100.0)[0]
    cmd = ex.tick(0.01, Q0)                 # sim restarted
    assert cmd.kind == 'hold'
    assert ex.submit(ramp_chunk(0.0, 1, h=100), now=0.02)[0]
    assert ex.tick(0.03, Q0).kind == 'track'
    assert ex.status().counters['clock_jumps_back'] == 1


def test_home_move_is_reachable_from_the_arm_and_from_the_last_command():
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0)
    assert ex.submit(ramp_chunk(0.0, 1, slope=0.5, h=100), now=0.0)[0]
    t, last = 0.0, Q0
    for _ in range(20):
        prev, last = last, ex.tick(t, Q0).arm      # the arm (measured) lags at Q0
        t += PERIOD
    home = np.array([-0.4, 0.4])
    seconds = ex.home_move(t, home, Q0, speed=0.3)
    # the slowest joint: from where the stream's reference is now (further than the arm: the
    # last command, one period on at its velocity) at 0.3 x 2 rad/s
    reference = last + (last - prev)
    assert seconds == pytest.approx(np.max(np.abs(home - reference)) / 0.6)
    assert ex.tick(t + 0.01, Q0).kind == 'paused'
    assert ex.home_move(t, Q0, Q0, speed=0.3) == 0.5      # never shorter than min_seconds


def test_resume_after_an_open_ended_pause_takes_chunks_observed_from_then_on():
    """A pause until inf (an inactive executor_node, MoveItPy homing) ended by resume(now):
    older chunks stay refused, newer ones are tracked (they were refused for an hour)."""
    ex = make_exec(watchdog_timeout=10.0)
    ex.tick(0.0, Q0)
    ex.pause(0.0, float('inf'), 'inactive')
    assert ex.tick(0.1, Q0).kind == 'paused'
    ex.resume(1.0)
    assert not ex.submit(ramp_chunk(0.9, 1, h=100), now=1.0)[0]
    assert ex.submit(ramp_chunk(1.0, 2, h=100), now=1.0)[0]
    assert ex.tick(1.01, Q0).kind == 'track'


def test_an_estop_long_after_the_last_hold_brakes_from_where_the_arm_is_not_back_to_it():
    # the last stop's rest point is only the controller's reference for a while: MoveIt,
    # teleop or another node may move the arm since (executor_node inactive). An e-stop then
    # must not command the arm back to that old point.
    ex = make_exec()
    first = ex.tick(0.0, np.array([0.1, -0.1]))
    assert first.stop
    moved = np.array([0.6, 0.4])             # someone else moved the arm meanwhile
    ex.estop(True, now=5.0)
    cmd = ex.tick(5.0, moved)
    assert cmd.kind == 'estop' and cmd.stop
    (_, q0, v0), (_, rest, _) = cmd.points
    np.testing.assert_allclose(q0, moved)
    np.testing.assert_allclose(rest, moved)
    assert not np.any(v0)
    # within RECENT of the last stop its reference still holds (the arm may lag behind it)
    ex = make_exec()
    ex.tick(0.0, np.array([0.1, -0.1]))
    ex.estop(True, now=0.05)
    (_, q0, _), _ = ex.tick(0.05, np.array([0.12, -0.1])).points
    np.testing.assert_allclose(q0, [0.1, -0.1])
