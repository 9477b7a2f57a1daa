"""Training pipeline (ROS-free): SFT, teacher rationales, GRPO alignment, action head.

Stages (each ``run_<stage>(config, overrides=())`` + ``main(argv)``; config = YAML path, dict
or dataclass; see ``config/training/*.yaml`` and README.md in this directory)::

    rationale -> sft -> align -> head

>>> from roboalign_ros.training import run_sft
>>> run_sft("config/training/sft.yaml", ["run.output_dir=runs/sft"])
"""

from .align import AlignConfig, run_align
from .config import ConfigError, load_config
from .head import HeadStageConfig, run_head
from .rationale import RationaleConfig, RationaleStore, Teacher, run_rationale, validate_rationale
from .rewards import action_prefix_reward, roboalign_reward
from .sft import SFTConfig, run_sft

STAGES = {"sft": "roboalign_ros.training.sft", "rationale": "roboalign_ros.training.rationale",
          "align": "roboalign_ros.training.align", "head": "roboalign_ros.training.head"}


def main(argv=None) -> int:
    """``roboalign train <stage> --config X [--set key=value]`` dispatcher."""
    import importlib
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: roboalign train {{{','.join(STAGES)}}} --config FILE [--set KEY=VALUE]",
              file=sys.stderr)
        return 2
    return importlib.import_module(STAGES[argv[0]]).main(argv[1:])


__all__ = ["AlignConfig", "ConfigError", "HeadStageConfig", "RationaleConfig", "RationaleStore",
           "SFTConfig", "STAGES", "Teacher", "action_prefix_reward", "load_config", "main",
           "roboalign_reward", "run_align", "run_head", "run_rationale", "run_sft",
           "validate_rationale"]
