"""What ``roboalign repro mini`` runs and compares: its stages and its configurations.

Shared by :mod:`.repro` (which runs the stages) and :mod:`.repro_report` (which reports on
them), so that neither imports the other's names: repro -> repro_report -> repro_plan.
The training stages are :data:`roboalign_ros.training.stages.STAGES`; :data:`TRAINS` says
which pipeline stage runs which.
"""

from __future__ import annotations

# the pipeline, in order; each Repro.stage_<name> runs one
STAGES = ("record", "rationale", "backbone", "ground", "untrained", "sft_plain", "sft", "align",
          "head_plain", "head_sft", "head_align", "offline", "evaluate", "graph", "report")

# pipeline stage -> the training stage it runs (every registered one, in the registry's order)
TRAINS = {"rationale": "rationale", "ground": "ground", "sft_plain": "sft", "sft": "sft",
          "align": "align", "head_plain": "head", "head_sft": "head", "head_align": "head"}

# evaluated configurations: name -> (policy directory under out/, SimEvalConfig overrides)
# The heads read the prompt and image features only (head_context "none", see stage_head_*),
# so their action path never waits for generation: they run without reasoning here, and the
# MLLM's reasoning is judged where it acts, through its own action tokens (*_tokens).
CONFIGURATIONS = {
    "untrained": ("untrained", {"reasoning_every": 0}),
    "sft_plain": ("head_plain/policy", {"reasoning_every": 0}),
    "sft": ("head_sft/policy", {"reasoning_every": 0}),
    "align": ("head_align/policy", {"reasoning_every": 0}),
    "sft_tokens": ("head_sft/policy", {"action_source": "tokens"}),
    "align_tokens": ("head_align/policy", {"action_source": "tokens"}),
}
LABELS = {
    "untrained": "1. untrained",
    "sft_plain": "2. SFT, no reasoning (+ head)",
    "sft": "3. SFT + teacher reasoning (+ head)",
    "align": "4. SFT + GRPO (RoboAlign, + head)",
    "sft_tokens": "3. as 3, MLLM action tokens",
    "align_tokens": "4. as 4, MLLM action tokens",
}


def evaluation_seeds(cfg, name: str) -> list[int]:
    """The held-out seeds configuration ``name`` is evaluated on under ``cfg`` (a ReproConfig).

    Every configuration gets the same first seeds; the slow ones fewer of them.
    """
    from roboalign_ros.evaluation.headless import eval_seeds

    slow = name in cfg.slow_configurations
    return eval_seeds(cfg.eval_seeds_slow if slow else cfg.eval_seeds)
