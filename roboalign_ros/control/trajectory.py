"""Commands as joint trajectories a real joint_trajectory_controller executes (no rclpy).

What a JTC does with a message (ros2_controllers, kilted, ``joint_trajectory_controller.cpp``
and ``trajectory.cpp``): it refuses an empty one (``validate_trajectory_msg``) and one stamped
so that it ends in the past; it replaces the running trajectory with the new one at its next
update; it interpolates linearly between points that carry positions only (a velocity step
at every message of a positions-only stream) and with a cubic between points with velocities
(``interpolate_between_points``). Before the first point it starts from the measured state,
or from its last command (``interpolate_from_desired_state``), which it labels one period
early (``update``: ``last_commanded_state_`` is the command for ``time + period`` but is kept
with ``time``): either way each new message would begin with a jump.

So every command the executor sends is stamped with the executor's time and begins *at* that
time, where the reference is (position and velocity): the JTC samples inside our points and
never uses its own start state. A track coasts at the stream's velocity for ``lead_time`` (a
message that arrives late still finds the reference moving) and then brakes to rest at the
acceleration limit, which is also what makes it end at zero velocity, as a JTC requires by
default (``allow_nonzero_velocity_at_trajectory_end: false``). A stop brakes from where the
reference is. The executor and the controller must share a clock (one machine, or PTP/chrony).
"""

from __future__ import annotations

import numpy as np


def cubic_segment(t0: float, p0, v0, t1: float, p1, v1, t: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity at ``t`` of the cubic from (p0, v0) at t0 to (p1, v1) at t1.

    Outside [t0, t1] the end point holds (velocity ``v1`` after, ``v0`` before).
    """
    p0, v0, p1, v1 = (np.asarray(x, float) for x in (p0, v0, p1, v1))
    h = t1 - t0
    if t >= t1 or h <= 0:
        return p1.copy(), v1.copy()
    if t <= t0:
        return p0.copy(), v0.copy()
    s = t - t0
    a2 = (3 * (p1 - p0) - (2 * v0 + v1) * h) / h**2
    a3 = (2 * (p0 - p1) + (v0 + v1) * h) / h**3
    return p0 + v0 * s + a2 * s**2 + a3 * s**3, v0 + 2 * a2 * s + 3 * a3 * s**2


def braking(q, v, acc_max, lower, upper, min_time: float = 0.1,
            margin: float = 1.5) -> tuple[np.ndarray, float]:
    """Where and how soon an arm at ``q`` moving at ``v`` comes to rest: ``(rest, seconds)``.

    All joints stop together in ``T = max(min_time, margin * max(|v| / acc_max))`` at
    ``q + v T / 2``: the cubic from (q, v) to that point with zero end velocity decelerates
    uniformly at |v| / T. ``margin`` covers the controller's reference trailing ``q`` when
    the stop arrives (it starts from where it is, not from ``q``); ``min_time`` keeps a stop
    from a crawl from being a jolt. The rest position stays inside the joint limits.
    """
    q, v = np.asarray(q, float), np.asarray(v, float)
    acc = np.broadcast_to(np.asarray(acc_max, float), v.shape)
    need = np.divide(np.abs(v), acc, out=np.zeros_like(v), where=acc > 0)
    seconds = float(max(min_time, margin * float(np.max(need, initial=0.0))))
    return np.clip(q + v * seconds / 2, lower, upper), seconds


def braking_points(q, v, acc_max, lower, upper, min_time: float = 0.1) -> tuple:
    """The stop of an arm at ``q`` moving at ``v``: ``((0, q, v), (T, rest, 0))`` points."""
    rest, seconds = braking(q, v, acc_max, lower, upper, min_time)
    v = np.asarray(v, float)
    return ((0.0, np.asarray(q, float), v), (seconds, rest, np.zeros_like(v)))


def points_at(points, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity at ``t`` (from the stamp) along ``(time, q, v)`` points.

    The points are joined by cubics, as a JTC samples them; the last point holds after it.
    """
    t0, q0, v0 = points[0]
    if t <= t0:
        return np.array(q0, float), np.array(v0, float)
    for (ta, qa, va), (tb, qb, vb) in zip(points, points[1:]):
        if t < tb:
            return cubic_segment(ta, qa, va, tb, qb, vb, t)
    _, q, v = points[-1]
    return np.array(q, float), np.array(v, float)


def trajectory_points(command) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
    """``(times_from_start, positions, velocities)`` of a joint-space track or stop command.

    The times count from ``command.stamp`` (the header stamp to send).
    """
    return ([float(t) for t, _, _ in command.points], [q for _, q, _ in command.points],
            [v for _, _, v in command.points])
