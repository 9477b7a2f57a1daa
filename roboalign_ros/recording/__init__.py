"""Demonstration recording (ROS-free core of recorder_node): sampling, episodes, sim demos."""

from .actions import ACTION_SOURCES, ChunkTarget, TrajectoryParser, TrajectoryTarget
from .sampler import FrameSampler, SampledFrame
from .session import RecorderState, RecordingSession, Result, SessionConfig, Status

__all__ = [
    "ACTION_SOURCES",
    "ChunkTarget",
    "FrameSampler",
    "RecorderState",
    "RecordingSession",
    "Result",
    "SampledFrame",
    "SessionConfig",
    "Status",
    "TrajectoryParser",
    "TrajectoryTarget",
]
