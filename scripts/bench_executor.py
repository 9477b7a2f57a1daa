#!/usr/bin/env python3
"""Benchmark the executor core's control loop (no ROS).

Runs ``ChunkExecutor.tick`` in a ``time.perf_counter`` deadline loop at ``--rate`` Hz for
``--seconds``, submitting a fresh chunk every ``--chunk-period`` s (stamped ``--latency`` s
in the past, like a policy's observation time), and prints per-tick compute time and
command-period jitter percentiles. With the package's robot config and pinocchio available
the workspace check uses the real forward kinematics, else a numpy toy chain.

    python scripts/bench_executor.py --seconds 10 --blend rtc
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roboalign_ros.control import (  # noqa: E402
    Chunk,
    ChunkExecutor,
    ExecutorConfig,
    SafetyEnvelope,
    SafetyLimits,
)


def toy_robot(n: int = 6):
    """A planar-ish n-joint chain with a numpy fk, for when the real robot is unavailable."""
    links = np.full(n, 0.6 / n)

    def fk(q):
        a = np.cumsum(q)
        r = np.sum(links * np.cos(a))
        return np.array([0.2 + 0.5 * r, 0.5 * np.sum(links * np.sin(a)), 0.3])

    joints = tuple(f'joint{i + 1}' for i in range(n))
    limits = SafetyLimits(lower=-2.5 * np.ones(n), upper=2.5 * np.ones(n), vel_max=2.0,
                          joint_names=joints, workspace_min=[-1.0, -1.0, 0.0],
                          workspace_max=[1.0, 1.0, 1.0])
    return joints, limits, fk, np.zeros(n), 'toy numpy chain'


def real_robot(name: str, period: float):
    from roboalign_ros.control.kinematics import Kinematics
    from roboalign_ros.robot import load_robot_config

    spec = load_robot_config(name)
    kin = Kinematics(spec)
    env = SafetyEnvelope.from_robot(spec, period, fk=kin.fk_position)
    return tuple(spec.arm_joints), env.limits, kin.fk_position, np.asarray(spec.home, float), \
        f'{name} + pinocchio fk'


def pct(x, p):
    return float(np.percentile(np.asarray(x), p))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign bench executor``; ``func`` runs the benchmark."""
    ap.add_argument('--seconds', type=float, default=10.0)
    ap.add_argument('--rate', type=float, default=100.0)
    ap.add_argument('--chunk-period', type=float, default=0.1)
    ap.add_argument('--horizon', type=int, default=50)
    ap.add_argument('--dt', type=float, default=0.02)
    ap.add_argument('--latency', type=float, default=0.05)
    ap.add_argument('--blend', default='rtc', choices=['latest', 'temporal_ensemble', 'rtc'])
    ap.add_argument('--robot', default='sim_arm', help="robot config, or 'toy'")
    ap.add_argument('--estop-at', type=float, default=0.9,
                    help='fraction of the run at which another thread engages the e-stop')
    ap.add_argument('--baseline', action='store_true',
                    help='run the same deadline loop without the executor (host jitter)')
    ap.set_defaults(func=run_cli)


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line) and run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_arguments(ap)
    run_cli(ap.parse_args(argv))


def run_cli(args: argparse.Namespace) -> None:
    """Run the executor's deadline loop with parsed options and print the percentiles."""
    period = 1.0 / args.rate
    try:
        if args.robot == 'toy':
            raise ImportError
        joints, limits, fk, q, label = real_robot(args.robot, period)
    except Exception as exc:  # noqa: BLE001 - any failure: fall back to the toy robot
        if args.robot != 'toy':
            print(f'(robot {args.robot!r} unavailable: {exc!r}; using the toy chain)')
        joints, limits, fk, q, label = toy_robot()
    n = len(joints)
    cfg = ExecutorConfig(joints + ('gripper',), rate_hz=args.rate, blend=args.blend,
                         ensemble_k=1.0, max_horizon=max(200, args.horizon))
    ex = ChunkExecutor(cfg, SafetyEnvelope(limits, period, fk))

    rng = np.random.default_rng(0)
    phase = rng.uniform(0, 2 * np.pi, n)
    q0 = q.copy()

    def plan(stamp: float, seq: int) -> Chunk:
        # A slow sinusoid around the start pose plus per-chunk noise (plans disagree).
        t = stamp + args.dt * np.arange(args.horizon)[:, None]
        arm = q0 + 0.3 * np.sin(0.5 * t + phase) + rng.normal(0, 0.005, (1, n))
        grip = 0.5 + 0.5 * np.sin(0.3 * t)
        return Chunk(stamp, args.dt, np.hstack([arm, grip]), cfg.dimension_names,
                     sequence=seq)

    ticks = int(args.seconds * args.rate)
    compute = np.empty(ticks)
    stamps = np.empty(ticks)
    submit_cost, kinds = [], {}
    t0 = time.perf_counter()
    next_chunk, seq, measured = t0, 0, q.copy()
    late = np.empty(ticks)
    deadline, skipped = t0, 0
    estop_call, estop_seen = [], None

    def engage():  # like the /roboalign/estop callback on another executor thread
        estop_call.append(time.perf_counter())
        ex.estop(True)

    # Off the tick grid on purpose (+3.7 ms) so the latency includes a random phase.
    timer = threading.Timer(args.estop_at * args.seconds + 0.0037, engage)
    timer.start()
    for k in range(ticks):
        while (now := time.perf_counter()) < deadline:
            if deadline - now > 0.002:
                time.sleep(deadline - now - 0.001)  # sleep most of it, spin the last ms
        stamps[k], late[k] = now, now - deadline
        deadline += period
        if now > deadline:  # over a period behind: skip the missed ticks, as a ROS timer does
            missed = int((now - deadline) // period) + 1
            deadline += missed * period
            skipped += missed
        if args.baseline:
            compute[k] = 0.0
            continue
        if now >= next_chunk:  # in the node this is the subscription callback
            seq += 1
            c = plan(now - args.latency, seq)
            s = time.perf_counter()
            ex.submit(c, now)
            submit_cost.append(time.perf_counter() - s)
            next_chunk += args.chunk_period
        s = time.perf_counter()
        cmd = ex.tick(now, measured)
        compute[k] = time.perf_counter() - s
        kinds[cmd.kind] = kinds.get(cmd.kind, 0) + 1
        if cmd.kind == 'estop' and estop_seen is None:
            estop_seen = time.perf_counter()
        measured = cmd.arm  # perfect tracking

    jitter = np.abs(np.diff(stamps) - period)
    us = 1e6
    if args.baseline:
        timer.cancel()
        print(f'baseline loop, no executor: period jitter p50 {pct(jitter, 50) * us:.1f} us '
              f'p99 {pct(jitter, 99) * us:.1f} us; lateness p99 {pct(late, 99) * us:.1f} us; '
              f'skipped ticks {skipped}')
        return
    print(f'robot: {label}, {n} joints, blend={args.blend}, {args.rate:.0f} Hz, '
          f'{args.seconds:.0f} s, chunk every {args.chunk_period * 1e3:.0f} ms '
          f'(H={args.horizon}, dt={args.dt})')
    print(f'ticks: {kinds}')
    print(f'tick compute   p50 {pct(compute, 50) * us:7.1f} us   '
          f'p99 {pct(compute, 99) * us:7.1f} us   max {compute.max() * us:7.1f} us')
    print(f'submit compute p50 {pct(submit_cost, 50) * us:7.1f} us   '
          f'p99 {pct(submit_cost, 99) * us:7.1f} us')
    print(f'period jitter  p50 {pct(jitter, 50) * us:7.1f} us   '
          f'p99 {pct(jitter, 99) * us:7.1f} us   max {jitter.max() * us:7.1f} us')
    print(f'tick lateness  p50 {pct(late, 50) * us:7.1f} us   '
          f'p99 {pct(late, 99) * us:7.1f} us   (start vs. deadline), skipped ticks {skipped}')
    if estop_call and estop_seen is not None:
        print(f'e-stop: call -> first estop command {(estop_seen - estop_call[0]) * 1e3:.2f} ms '
              f'(control period {period * 1e3:.1f} ms)')
    timer.cancel()
    print(f'safety counters: {dict(ex.envelope.counters)}')
    print(f'executor counters: {dict(ex.counters)}')


if __name__ == '__main__':
    main()
