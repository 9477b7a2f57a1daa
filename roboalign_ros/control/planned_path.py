"""The tool path of an accepted chunk, for RViz: forward kinematics of its joint targets (ROS-free).

:func:`planned_path` turns a joint-position chunk into the tool positions it asks for (the
same URDF model and tool frame as the safety envelope, in the robot's base frame, REP-103),
with each row's time and whether the envelope's static limits (joint limits minus the margin,
the tool workspace box) change it, and where they put it instead. :class:`ExecutedPath` keeps
the tool positions of the commands actually sent. ``executor_node`` publishes both as a
``visualization_msgs/MarkerArray`` (``nodes/markers.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .chunk import Chunk
from .safety import SafetyEnvelope


@dataclass(frozen=True)
class PlannedPath:
    """Tool positions [H, 3] (m, base frame) of a chunk's rows, their times, the clamped rows."""

    times: np.ndarray       # [H] s, the rows' target times (chunk stamp + i * dt)
    positions: np.ndarray   # [H, 3] tool position each row asks for
    clamped: np.ndarray     # [H] bool: the envelope's static limits change that row
    safe_positions: np.ndarray  # [H, 3] where the static limits put the tool instead
    sequence: int = 0


def planned_path(chunk: Chunk, envelope: SafetyEnvelope) -> PlannedPath:
    """The tool path of a joint-position ``chunk`` (ValueError for another action space)."""
    if chunk.action_space != "joint_position":
        raise ValueError(f"planned path: needs joint_position chunks, got {chunk.action_space}")
    if envelope.fk is None:
        raise ValueError("planned path: the envelope has no forward kinematics")
    n = envelope.n
    targets = np.asarray(chunk.actions[:, :n], np.float64)
    lim = envelope.limits
    lo, hi = lim.lower + lim.margin, lim.upper - lim.margin
    safe = np.clip(targets, lo, hi)
    positions = np.stack([envelope.tool_position(q) for q in targets])
    safe_positions = np.stack([envelope.tool_position(q) for q in safe])
    clamped = np.any(safe != targets, axis=1)
    if envelope.has_workspace:
        clamped |= np.array([envelope.box_violation(p) > 0 for p in safe_positions])
        safe_positions = np.clip(safe_positions, lim.workspace_min, lim.workspace_max)
    times = chunk.stamp + np.arange(len(targets)) * chunk.dt
    return PlannedPath(times, positions, clamped, safe_positions, chunk.sequence)


class ExecutedPath:
    """The tool positions of the last ``maxlen`` joint commands sent (oldest first).

    ``add`` only keeps the joint position (it runs in the control loop); the forward
    kinematics run when the path is read, at the chunk rate.
    """

    def __init__(self, envelope: SafetyEnvelope, maxlen: int = 300):
        self.envelope = envelope
        self._points: deque[np.ndarray] = deque(maxlen=maxlen)

    def add(self, q: np.ndarray) -> None:
        """Record one commanded arm position."""
        self._points.append(np.array(q, np.float64))

    def clear(self) -> None:
        """Forget the path (a hold, an e-stop, a new task)."""
        self._points.clear()

    @property
    def positions(self) -> np.ndarray:
        """[N, 3] tool positions, oldest first."""
        points = list(self._points)  # one atomic copy: the control thread appends meanwhile
        if not points:
            return np.zeros((0, 3))
        return np.stack([self.envelope.tool_position(q) for q in points])
