"""The training stages, in pipeline order: the one list the CLI, ``repro`` and the docs read.

Each stage is a module ``roboalign_ros.training.<name>`` with ``run_<name>(config,
overrides=())`` and ``main(argv)``; every stage takes the same options (``--config``,
``--set``), defined here. Importing this module imports neither torch nor any stage, so
``roboalign --help`` stays fast and works on machines without a GPU stack.

Adding a stage: write ``training/<name>.py`` (``run_<name>`` and ``main(argv)`` returning
``stages.main("<name>", argv)``), its YAML under ``config/training/``, and a :class:`Stage`
line below; ``roboalign train <name>`` and its help follow.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage."""

    name: str
    summary: str              # one line, for ``roboalign train --help``
    config: str | None        # full-size recipe (package-relative), None where only mini exists
    mini: str                 # the recipe ``roboalign repro mini`` runs

    @property
    def module(self) -> str:
        """The module implementing the stage."""
        return f"{__package__}.{self.name}"

    @property
    def configs(self) -> tuple[str, ...]:
        """Every shipped config of the stage."""
        return tuple(c for c in (self.config, self.mini) if c)

    def run(self, config, overrides=()):
        """``run_<name>(config, overrides)``: imports the stage (and torch) only now."""
        return getattr(importlib.import_module(self.module), f"run_{self.name}")(config, overrides)


# Pipeline order: rationales first (the mini backbone's tokenizer learns their words), then
# grounding of that backbone, SFT on it, GRPO on the SFT policy, the head on the aligned one.
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("rationale", "teacher rationales (ReFineVLA's four sections) for every frame",
          "config/training/rationale.yaml", "config/training/mini/rationale.yaml"),
    Stage("ground", "localization pretraining of a from-scratch vision tower on sim scenes",
          None, "config/training/mini/ground.yaml"),
    Stage("sft", "supervised fine-tuning on reasoning + FAST action tokens",
          "config/training/sft.yaml", "config/training/mini/sft.yaml"),
    Stage("align", "RoboAlign GRPO on the FAST action tokens of the SFT policy",
          "config/training/align.yaml", "config/training/mini/align.yaml"),
    Stage("head", "flow-matching action head on the frozen (aligned) backbone",
          "config/training/head.yaml", "config/training/mini/head.yaml"),
)}


def add_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """The options of ``roboalign train <stage>``; ``func`` runs the stage."""
    parser.add_argument("--config", default=None,
                        help=f"stage YAML config, e.g. {STAGES[stage].configs[0]} "
                             "(default: built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys, YAML values); repeatable")
    parser.set_defaults(func=lambda args: run_from_args(stage, args))


def run_from_args(stage: str, args: argparse.Namespace) -> int:
    """Run ``stage`` with parsed options and print its result (a path or counts)."""
    result = STAGES[stage].run(args.config, args.set)
    if os.environ.get("RANK", "0") == "0":  # once, under accelerate launch
        print(json.dumps(result) if isinstance(result, dict) else result)
    return 0


def main(stage: str, argv: list[str] | None = None) -> int:
    """``python -m roboalign_ros.training.<stage> --config X [--set key=value ...]``."""
    parser = argparse.ArgumentParser(prog=f"roboalign train {stage}",
                                     description=STAGES[stage].summary)
    add_arguments(parser, stage)
    args = parser.parse_args(argv)
    return args.func(args)
