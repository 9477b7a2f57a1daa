"""What the e-stop process decides about each trajectory, and its stop (no rclpy).

The e-stop process (:mod:`roboalign_ros.nodes.estop_guard`) is the only publisher of
executor_node's trajectories. :class:`GateState` is its memory and its rules:

- a trajectory goes out unless an e-stop is engaged (until executor_node releases it);
- an e-stop brakes from the last trajectory it published, if that one is still in force;
- a track that goes on from the previous track goes out only if it still *joins* the trajectory
  in force: a JTC samples a stamped trajectory at the time it takes it, so one that arrives
  late (this process or executor_node starved of CPU) takes over at a point the running
  trajectory never reached, and the reference jumps (and one that ends before it arrives is
  refused). Such tracks are held back, and executor_node goes on from the trajectory in force
  (:meth:`ChunkExecutor.adopt_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .trajectory import braking_points, points_at

# A trajectory of ours that ended this recently is what the controller still holds (a stream
# sends one every period, and one at rest ends where it begins); an older one may have been
# replaced by another publisher, so the e-stop process leaves that stop to executor_node, and
# executor_node brakes from the measured position instead (ChunkExecutor._reference).
RECENT = 0.25   # s


@dataclass(frozen=True)
class GateLimits:
    """The arm's limits as the executor's envelope has them (per joint)."""

    acc_max: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    brake_time_min: float
    # largest gap (rad, per joint) between a continuing track and the trajectory in force at
    # the time it is published: an on-time successor differs by at most acc_max * period *
    # lead_time, so executor_node sets acc_max * (period + lead_time)^2 (4.5x that)
    join_tolerance: tuple[float, ...]


class GateState:
    """The last trajectory published, the e-stop, and what was held back.

    Not thread-safe: the e-stop process calls it under one lock.
    """

    def __init__(self, limits: GateLimits):
        self.limits = limits
        self.reference: tuple[float, tuple] | None = None   # (stamp, (t, q, v) points)
        self.engaged = False
        self.released_after_ns = -1
        self.declined = ""   # why the last engage sent no stop
        self.held_back = 0   # continuing tracks that no longer joined the trajectory in force
        self.gap = 0.0       # how far the last one held back was from it (rad)

    def command(self, stamp: float, points, estop: bool = False, continues: bool = False,
                now: float | None = None) -> bool:
        """executor_node's trajectory: publish it (True), or not (False).

        Not: an e-stop is engaged, or ``continues`` and at ``now`` it is over
        ``join_tolerance`` away from the trajectory in force or over already (counted in
        :attr:`held_back`).
        """
        if self.engaged:
            return False
        if continues and now is not None and self.reference is not None:
            gap = self.gap_to_reference(stamp, points, now)
            # one that ends before now a JTC refuses anyway (validate_trajectory_msg)
            if (np.any(gap > np.asarray(self.limits.join_tolerance))
                    or stamp + points[-1][0] < now):
                self.held_back += 1
                self.gap = float(np.max(gap))
                return False
        self.reference = (stamp, tuple(points))
        self.engaged = estop
        return True

    def gap_to_reference(self, stamp: float, points, now: float) -> np.ndarray:
        """Per joint, how far ``points`` is from the trajectory in force (rad).

        Taken where a JTC that receives ``points`` at ``now`` would switch from one to the other.
        """
        t = max(now, stamp)
        ref_stamp, ref_points = self.reference
        q, _ = points_at(points, t - stamp)
        q_ref, _ = points_at(ref_points, t - ref_stamp)
        return np.abs(q - q_ref)

    def engage(self, now: float, source_ns: int) -> tuple:
        """An e-stop published at ``source_ns``: the stop to publish.

        ``()``: none from us (:attr:`declined` says why, unless it was stopped already).
        """
        self.declined = ""
        if self.engaged or source_ns <= self.released_after_ns:
            return ()   # stopped already, or an engage older than the last release
        if self.reference is None:
            self.declined = "no trajectory of ours since the last reset or MoveItPy move"
            return ()
        stamp, points = self.reference
        if now - stamp - points[-1][0] > RECENT:
            self.declined = f"our last trajectory ended {now - stamp - points[-1][0]:.3f} s ago"
            return ()
        lim = self.limits
        stop = braking_points(*points_at(points, now - stamp), np.array(lim.acc_max),
                              np.array(lim.lower), np.array(lim.upper), lim.brake_time_min)
        self.reference, self.engaged = (now, stop), True
        return stop

    def release(self, source_ns: int) -> None:
        """executor_node released the e-stop (an engage published before it is stale)."""
        self.engaged = False
        self.released_after_ns = max(self.released_after_ns, int(source_ns))

    def forget(self) -> None:
        """Something else moves the arm now (MoveItPy, a scene reset): no reference."""
        self.reference = None
