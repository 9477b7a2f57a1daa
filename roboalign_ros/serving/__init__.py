"""Serving a VLA policy (no rclpy): the model, its gate and bounds, its threads.

The model loaded and checked, the observation gate, the input bounds, and the threads of the
dual-rate action and reasoning paths. :func:`build_service` builds all of it from
policy_node's parameters, for policy_node, the headless evaluator and any future server.
"""

from .build import (
    PolicyService,
    build_service,
    camera_topics,
    check_policy,
    input_limits,
    load_checked,
    observation,
    observation_gate,
    reasoning_mode,
)
from .gate import (
    IMAGE,
    INSTRUCTION,
    JOINT_STATE,
    GateLimits,
    InputLimits,
    ObservationGate,
    Snapshot,
    image_problem,
    instruction_problem,
    min_period,
    preview,
    tokenizer_counter,
)
from .loading import TINY, checkpoint_cameras, load_policy
from .stats import Outcome, ServingStats, health, outcome
from .workers import (
    AttentionWorker,
    Decision,
    PolicyWorker,
    ReasoningResult,
    ReasoningWorker,
    attention_overlays,
)

__all__ = ["IMAGE", "INSTRUCTION", "JOINT_STATE", "TINY", "AttentionWorker", "Decision",
           "GateLimits", "InputLimits", "ObservationGate", "Outcome", "PolicyService",
           "PolicyWorker", "ReasoningResult", "ReasoningWorker", "ServingStats", "Snapshot",
           "attention_overlays", "build_service", "camera_topics", "check_policy",
           "checkpoint_cameras", "health", "image_problem", "input_limits", "instruction_problem",
           "load_checked", "load_policy", "min_period", "observation", "observation_gate",
           "outcome", "preview", "reasoning_mode", "tokenizer_counter"]
