"""Commands as joint trajectories a real joint_trajectory_controller executes (no rclpy).

What a JTC does with a message (ros2_controllers, kilted, ``joint_trajectory_controller.cpp``
and ``trajectory.cpp``): it refuses an empty one (``validate_trajectory_msg``), replaces the
running trajectory with the new one at its next update, starts it from the measured state (or
the last commanded one with ``interpolate_from_desired_state``), and interpolates between
points linearly when they carry positions only and with a cubic when they carry velocities
(``interpolate_between_points``). A positions-only stream is therefore a new linear ramp per
message, with a velocity step at each; with velocities, the reference is continuous in
velocity across messages.

So every command the executor sends is one or two points with velocities: the target with the
stream's velocity, then rest (zero velocity) after braking at the acceleration limit. If no
newer message comes, the arm comes to rest by itself; and a trajectory that ends at rest is
also what a JTC accepts with its default ``allow_nonzero_velocity_at_trajectory_end: false``.
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


def trajectory_points(command, lead_time: float = 0.0
                      ) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
    """``(times_from_start, positions, velocities)`` of a joint-space track or stop command.

    Track: the target at ``max(duration, lead_time)`` with its velocity, then the braking tail
    (rest, zero velocity) ``brake_time`` later (one point when the target is already at rest).
    Stop: rest at ``duration`` with zero velocity.
    """
    n = len(command.arm)
    zero = np.zeros(n)
    if command.kind != "track":
        return [max(command.duration, lead_time)], [command.arm], [zero]
    first = max(command.duration, lead_time)
    velocity = zero if command.velocity is None else command.velocity
    if command.brake is None or not np.any(velocity):
        return [first], [command.arm], [zero]
    return ([first, first + command.brake_time], [command.arm, command.brake],
            [velocity, zero])
