"""Training pipeline (ROS-free): rationales, grounding, SFT, GRPO alignment, action head.

Stages (each ``run_<stage>(config, overrides=())`` + ``main(argv)``; config = YAML path, dict
or dataclass; see ``config/training/*.yaml`` and README.md in this directory), listed with
their order and configs in :data:`STAGES` (:mod:`.stages`)::

    rationale -> ground -> sft -> align -> head

>>> from roboalign_ros.training import run_sft
>>> run_sft("config/training/sft.yaml", ["run.output_dir=runs/sft"])

The names below are imported on first use: importing the package (for :data:`STAGES`, say)
does not import torch.
"""

import importlib

from .stages import STAGES

_LAZY = {"AlignConfig": "align", "run_align": "align", "ConfigError": "config",
         "load_config": "config", "HeadStageConfig": "head", "run_head": "head",
         "RationaleConfig": "rationale", "RationaleStore": "rationale", "Teacher": "rationale",
         "run_rationale": "rationale", "validate_rationale": "rationale",
         "action_prefix_reward": "rewards", "roboalign_reward": "rewards", "SFTConfig": "sft",
         "run_sft": "sft", "run_ground": "ground"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def main(argv=None) -> int:
    """``roboalign train <stage> --config X [--set key=value]`` dispatcher."""
    import sys

    from . import stages

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: roboalign train {{{','.join(STAGES)}}} --config FILE [--set KEY=VALUE]",
              file=sys.stderr)
        return 2
    return stages.main(argv[0], argv[1:])


__all__ = ["STAGES", "main", *_LAZY]
