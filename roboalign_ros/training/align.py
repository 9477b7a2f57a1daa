"""Stage 3, ``align``: RoboAlign GRPO with TRL's ``GRPOTrainer`` (all parameters by default).

For each prompt (camera images + instruction, a small fraction of the SFT data) the policy
samples ``group_size`` completions ``<think>..</think><answer><ACTION_START>..<ACTION_END>
</answer>``; each gets ``r = (r_format + r_action) / 2`` (see :mod:`.rewards` for the prefix
reward and its edge cases, and the optional decoded-action distance term). GRPO normalises
rewards within the group and updates the policy, with a KL penalty of weight ``beta`` to the
starting model. Paper defaults: group 5, constant lr 1e-6.

TRL drives the VLM directly: the dataset has a conversational ``prompt`` with image
placeholders and an ``images`` column (PIL), and the processor is the policy's own. Two small
adapters are needed:

* the policy's prompt pre-fills ``<think>`` after the assistant header; GRPO gets a processor
  whose chat template appends ``<think>`` to the generation prompt (the saved processor keeps
  the original template);
* TRL decodes completions with ``skip_special_tokens=True``, which drops the action tokens, so
  the reward reads ``completion_ids`` (:class:`~.rewards.GRPOReward`).

Checkpoints: TRL's ``checkpoint-<step>/`` (resumable with ``run.resume``) also get the policy
files and a ``backbone/`` of hard links, so each loads with ``VLAPolicy.from_pretrained``;
the final policy goes to ``<output_dir>/policy/``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np

from .build import PolicyInitConfig, load_or_build_policy
from .common import (
    FINAL_DIR,
    checkpoints,
    cpu_processes,
    mark_complete,
    mixed_precision,
    resolve_resume,
    save_policy,
    seed_everything,
)
from .config import ConfigError, DataConfig, RunConfig, check, load_config
from .rewards import GRPOReward
from .samples import FrameSamples, check_compatible, open_datasets, split_episodes

log = logging.getLogger(__name__)

THINK_PREFILL = "{% if add_generation_prompt %}<think>{% endif %}"


@dataclasses.dataclass
class AlignConfig:
    """``align`` stage.

    Fields:
        data, run: see :class:`DataConfig` / :class:`RunConfig`; ``data.max_samples`` or
            ``fraction`` pick the small subset GRPO uses (paper: 0.56 % of the SFT data).
        policy: the starting policy, normally the SFT stage's ``policy/`` (``checkpoint``).
        fraction: fraction of the selected frames used (0 = all / ``data.max_samples``).
        group_size: completions per prompt (G; paper 5).
        prompts_per_step: prompts per process per optimizer step (the global batch is
            ``group_size x prompts_per_step x processes`` completions).
        learning_rate: paper 1e-6 (constant schedule); beta: KL weight to the start model
            (0 disables the reference model); temperature / top_p: sampling.
        max_completion_length: generated tokens per completion (reasoning + actions).
        epochs / max_steps: training length (max_steps > 0 wins).
        num_iterations: GRPO updates per generation batch (mu); epsilon: PPO clip.
        loss_type: TRL loss ("grpo" as in the paper, or "dapo", "dr_grpo", "bnpo").
        scale_rewards: "group" (GRPO), "batch" or "none".
        distance_weight / distance_scale: optional decoded-action distance term (0 = paper).
        gradient_accumulation_steps, max_grad_norm, gradient_checkpointing: as in TRL.
        freeze_vision: keep the vision tower fixed (paper: all parameters; default False).
    """

    section = "align"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="runs/align"))
    policy: PolicyInitConfig = dataclasses.field(default_factory=PolicyInitConfig)
    fraction: float = 0.0
    group_size: int = 5
    prompts_per_step: int = 1
    learning_rate: float = 1e-6
    lr_scheduler: str = "constant"
    beta: float = 0.04
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 256
    epochs: float = 1.0
    max_steps: int = 0
    num_iterations: int = 1
    epsilon: float = 0.2
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    distance_weight: float = 0.0
    distance_scale: float = 0.25
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    freeze_vision: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        p = self.section
        self.data.validate(f"{p}.data")
        self.run.validate(f"{p}.run")
        self.policy.validate(f"{p}.policy")
        check(p, "fraction", 0 <= self.fraction <= 1, "must be in [0, 1]", self.fraction)
        check(p, "group_size", self.group_size >= 2, "must be >= 2 (GRPO compares a group)",
              self.group_size)
        check(p, "prompts_per_step", self.prompts_per_step >= 1, "must be >= 1",
              self.prompts_per_step)
        check(p, "learning_rate", self.learning_rate > 0, "must be > 0", self.learning_rate)
        check(p, "lr_scheduler", self.lr_scheduler in ("constant", "cosine", "linear"),
              "must be constant/cosine/linear", self.lr_scheduler)
        check(p, "beta", self.beta >= 0, "must be >= 0", self.beta)
        check(p, "temperature", self.temperature > 0, "must be > 0 (GRPO samples)",
              self.temperature)
        check(p, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]", self.top_p)
        check(p, "max_completion_length", self.max_completion_length >= 4, "must be >= 4",
              self.max_completion_length)
        check(p, "epochs", self.epochs > 0 or self.max_steps > 0, "must be > 0", self.epochs)
        check(p, "max_steps", self.max_steps >= 0, "must be >= 0", self.max_steps)
        check(p, "num_iterations", self.num_iterations >= 1, "must be >= 1", self.num_iterations)
        check(p, "loss_type", self.loss_type in ("grpo", "dapo", "dr_grpo", "bnpo"),
              "must be grpo/dapo/dr_grpo/bnpo", self.loss_type)
        check(p, "scale_rewards", self.scale_rewards in ("group", "batch", "none"),
              "must be group/batch/none", self.scale_rewards)
        check(p, "distance_weight", 0 <= self.distance_weight <= 1, "must be in [0, 1]",
              self.distance_weight)
        check(p, "distance_scale", self.distance_scale > 0, "must be > 0", self.distance_scale)


def grpo_processor(processor):
    """A shallow copy of ``processor`` whose generation prompt ends with ``<think>``."""
    proc = copy.copy(processor)
    template = processor.chat_template
    if not template:
        raise ValueError("the backbone processor has no chat template")
    proc.chat_template = template + THINK_PREFILL
    return proc


def resize_images(policy, images: dict) -> list:
    """PIL images of the policy's cameras, resized like ``VLAPolicy.encode_observation``."""
    from PIL import Image

    out = []
    for name in policy.config.camera_names:
        im = Image.fromarray(np.asarray(images[name]))
        if policy.config.image_size:
            h, w = policy.config.image_size
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
        out.append(im)
    return out


def build_prompt_rows(policy, samples, with_chunk: bool = False) -> list[dict]:
    """GRPO dataset rows: conversational prompt, images, target FAST tokens (+ chunk)."""
    rows = []
    for s in samples:
        obs = s.observation
        policy.check_observation(obs)
        row = {"prompt": policy.prompt_messages(obs.instruction),
               "images": resize_images(policy, obs.images),
               "target_tokens": policy.tokenize_chunk(s.chunk)}
        if with_chunk:
            row["target_chunk"] = policy.normalizer.normalize("action", s.chunk).tolist()
        rows.append(row)
    return rows


def _policy_checkpoint_callback(policy):
    from transformers import TrainerCallback

    model_files = ("config.json", "generation_config.json", "model.safetensors",
                   "model.safetensors.index.json")

    class PolicyLayout(TrainerCallback):
        """Make every TRL checkpoint loadable with ``VLAPolicy.from_pretrained``."""

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not ckpt.is_dir():
                return
            policy.save_pretrained(ckpt, save_backbone=False)
            bdir = ckpt / "backbone"
            bdir.mkdir(exist_ok=True)
            for f in ckpt.iterdir():
                if f.is_file() and (f.name in model_files or (f.name.startswith("model-") and
                                                              f.suffix == ".safetensors")):
                    target = bdir / f.name
                    if target.exists():
                        target.unlink()
                    try:
                        os.link(f, target)
                    except OSError:
                        shutil.copy2(f, target)
            policy.processor.save_pretrained(bdir)
            mark_complete(ckpt, {"stage": "align", "step": state.global_step})

    return PolicyLayout()


def run_align(config, overrides=()) -> Path:
    """Run GRPO alignment; returns the final policy directory (``<output_dir>/policy``).

    The trainer's ``log_history`` is written to ``<output_dir>/align_history.json`` (mean
    reward per step under ``reward``, components under ``reward/format`` etc.).
    """
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from datasets import Dataset

    cfg = load_config(AlignConfig, config, overrides)
    seed_everything(cfg.run.seed)
    out_dir = Path(cfg.run.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    readers = open_datasets(cfg.data.roots)
    train_eps = [split_episodes(len(r), cfg.data.val_fraction, cfg.data.episodes)[0]
                 for r in readers]
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    policy = load_or_build_policy(cfg.policy, readers, device, cfg.run.seed, train_eps)
    pc = policy.config
    check_compatible(readers, cfg.data.roots, pc.action_dim, pc.state_dim, pc.camera_names)
    samples = FrameSamples(readers, cfg.data.roots, pc.horizon, pc.camera_names, pc.state_dim,
                           train_eps, cfg.data.frame_stride, cfg.data.max_samples, "none",
                           False, cfg.data.episode_cache)
    if cfg.fraction:
        keep = max(1, math.ceil(cfg.fraction * len(samples)))
        pick = np.unique(np.round(np.linspace(0, len(samples) - 1, keep)).astype(int))
        samples.items = [samples.items[i] for i in pick]
    rows = build_prompt_rows(policy, [samples[i] for i in range(len(samples))],
                             with_chunk=cfg.distance_weight > 0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if len(rows) < cfg.prompts_per_step * world:  # TRL would stop at step 0, silently
        raise ConfigError(f"align.prompts_per_step: {cfg.prompts_per_step} prompts per process "
                          f"x {world} processes is more than the {len(rows)} prompts selected")
    dataset = Dataset.from_list(rows)
    log.info("align: %d prompts, group %d", len(rows), cfg.group_size)

    model = policy.backbone
    if cfg.freeze_vision:
        from .sft import vision_tower

        vision_tower(model).requires_grad_(False)
    model.train()
    processor = grpo_processor(policy.processor)
    reward = GRPOReward(policy.tokenizer, policy.action_tokenizer, cfg.distance_weight,
                        cfg.distance_scale)
    batch = cfg.group_size * cfg.prompts_per_step
    args = GRPOConfig(
        output_dir=str(out_dir), seed=cfg.run.seed, data_seed=cfg.run.seed,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=0,
        per_device_train_batch_size=batch, num_generations=cfg.group_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
        top_p=cfg.top_p, beta=cfg.beta, num_iterations=cfg.num_iterations,
        epsilon=cfg.epsilon, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.run.log_every, report_to=["tensorboard"],
        save_strategy="steps" if cfg.run.save_every else "no",
        save_steps=cfg.run.save_every or 500,
        save_total_limit=cfg.run.keep_checkpoints or None,
        bf16=mixed_precision(cfg.run) == "bf16", fp16=mixed_precision(cfg.run) == "fp16",
        remove_unused_columns=False, disable_tqdm=not cfg.run.progress,
        dataloader_num_workers=0, log_completions=False, use_cpu=cpu_processes(),
    )
    old_tb = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out_dir / "tb")  # read by TRL's TB callback
    try:
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args,
                              train_dataset=dataset, processing_class=processor,
                              callbacks=[_policy_checkpoint_callback(policy)])
    finally:
        if old_tb is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old_tb
    resume = resolve_resume(cfg.run)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = out_dir / FINAL_DIR
    if trainer.accelerator.is_main_process and final.exists():
        shutil.rmtree(final)
    save_policy(policy, final, trainer.accelerator, trainer.model_wrapped)
    if trainer.accelerator.is_main_process:
        (out_dir / "align_history.json").write_text(json.dumps(trainer.state.log_history))
    return final


def reward_curve(history: list[dict]) -> list[float]:
    """Mean reward per logged step from a trainer ``log_history``."""
    return [h["reward"] for h in history if "reward" in h]


def main(argv=None) -> int:
    """CLI: ``align --config X [--set key=value ...]``."""
    from . import stages

    return stages.main("align", argv)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["AlignConfig", "GRPOReward", "build_prompt_rows", "checkpoints", "grpo_processor",
           "reward_curve", "run_align"]
