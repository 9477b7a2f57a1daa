"""visualization_msgs/MarkerArray of the planned and executed tool path, for RViz."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from roboalign_ros.control.planned_path import PlannedPath
from roboalign_ros.conversions import seconds_to_stamp

NAMESPACE = "planned_path"
PLANNED, EXECUTED, CLAMPED, CLAMPED_TO = 0, 1, 2, 3  # marker ids
LIFETIME_S = 2  # a path nobody refreshes fades (a stopped policy leaves no stale plan)


def _points(positions: np.ndarray) -> list[Point]:
    return [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in positions]


def _marker(kind: int, marker_id: int, frame: str, stamp: float, width: float,
            rgba=(1.0, 1.0, 1.0, 1.0)) -> Marker:
    m = Marker(ns=NAMESPACE, id=marker_id, type=kind, action=Marker.ADD)
    m.header.frame_id = frame
    seconds_to_stamp(stamp, m.header.stamp)
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = width
    m.color = ColorRGBA(r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3])
    m.lifetime = Duration(sec=LIFETIME_S)
    return m


def path_markers(path: PlannedPath, executed: np.ndarray, frame: str, stamp: float
                 ) -> MarkerArray:
    """The MarkerArray of one accepted chunk.

    The planned path coloured by time (blue first, green last), the executed part (grey), and
    the rows the safety envelope clamps (red) with where it puts them (orange).
    """
    out = MarkerArray()
    planned = _marker(Marker.LINE_STRIP, PLANNED, frame, stamp, 0.006)
    planned.points = _points(path.positions)
    s = np.linspace(0.0, 1.0, len(path.positions))
    planned.colors = [ColorRGBA(r=0.1, g=float(0.3 + 0.7 * t), b=float(1.0 - 0.8 * t), a=1.0)
                      for t in s]
    out.markers.append(planned)
    done = _marker(Marker.LINE_STRIP, EXECUTED, frame, stamp, 0.004, (0.6, 0.6, 0.6, 0.8))
    done.points = _points(executed)
    out.markers.append(done)
    for marker_id, positions, rgba in ((CLAMPED, path.positions, (1.0, 0.1, 0.1, 1.0)),
                                       (CLAMPED_TO, path.safe_positions, (1.0, 0.6, 0.0, 1.0))):
        m = _marker(Marker.SPHERE_LIST, marker_id, frame, stamp, 0.015, rgba)
        m.points = _points(positions[path.clamped])
        out.markers.append(m)
    return out
