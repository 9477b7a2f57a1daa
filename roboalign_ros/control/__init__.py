"""Pure control logic (no rclpy): chunk scheduling, blending, safety limits, kinematics."""

from .blending import ActionBlender
from .chunk import Chunk, ChunkError, ChunkLimits, validate_chunk
from .executor import ChunkExecutor, Command, ExecutorConfig, ExecutorStatus
from .safety import SafetyEnvelope, SafetyLimits

__all__ = ['ActionBlender', 'Chunk', 'ChunkError', 'ChunkExecutor', 'ChunkLimits', 'Command',
           'ExecutorConfig', 'ExecutorStatus', 'SafetyEnvelope', 'SafetyLimits',
           'validate_chunk']
