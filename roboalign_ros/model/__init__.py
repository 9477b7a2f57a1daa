"""The VLA policy (ROS-free): backbone + action tokenizer + reasoning format + flow head.

Import the public API from here::

    from roboalign_ros.model import VLAPolicy, Observation, VLAConfig, build_tiny_policy
"""

from .action_tokenizer import (
    ActionTokenizer,
    BinningActionTokenizer,
    DecodeResult,
    FastActionTokenizer,
    load_action_tokenizer,
)
from .config import BackboneNotFoundError, CheckpointError, HeadConfig, VLAConfig
from .head import FlowMatchingHead
from .normalization import Normalizer, Stats
from .policy import Observation, PolicyOutput, Reasoning, VLAPolicy
from .reasoning import ParsedGeneration, format_target, parse_generation
from .tiny import build_tiny_policy, write_tiny_policy

__all__ = [
    "ActionTokenizer", "BackboneNotFoundError", "BinningActionTokenizer", "CheckpointError",
    "DecodeResult", "FastActionTokenizer", "FlowMatchingHead", "HeadConfig", "Normalizer",
    "Observation", "ParsedGeneration", "PolicyOutput", "Reasoning", "Stats", "VLAConfig",
    "VLAPolicy", "build_tiny_policy", "format_target", "load_action_tokenizer", "parse_generation",
    "write_tiny_policy",
]
