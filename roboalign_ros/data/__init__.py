"""Episode datasets in the LeRobot v3.0 layout (ROS-free): writer, reader, stats.

>>> w = DatasetWriter.create(root, fps=30, state_names=[...], action_names=[...],
...                          cameras={"scene": (480, 640)}, robot_type="ur5e")
>>> w.start_episode("pick up the red cube", operator="ana", source="teleop")
>>> w.add_frame(state, action, {"scene": rgb}, timestamp=stamp)
>>> w.save_episode(success=True)
>>> DatasetReader(root).episode(0).frames["scene"].shape
"""

from .errors import DatasetError, DatasetFormatError, DiskFullError, RecordingError
from .lerobot_format import CODEBASE_VERSION, EpisodeInfo
from .reader import DatasetReader, Episode, TrainingSample
from .writer import DatasetWriter

__all__ = [
    "CODEBASE_VERSION",
    "DatasetError",
    "DatasetFormatError",
    "DatasetReader",
    "DatasetWriter",
    "DiskFullError",
    "Episode",
    "EpisodeInfo",
    "RecordingError",
    "TrainingSample",
]
