"""Stage 1, ``sft``: supervised fine-tuning of the MLLM on reasoning + FAST action tokens.

Target per sample: ``<think>{rationale}</think><answer><ACTION_START>{FAST}<ACTION_END></answer>``
(the prompt is masked). ReFineVLA's loss

    L = L_action + lambda_r * L_reasoning            (lambda_r = ``lambda_reasoning``, 0.3)

splits the labelled tokens of each row at its ``<ACTION_START>`` token: tokens before it (the
reasoning and the ``</think><answer>`` tags) form the reasoning span, ``<ACTION_START>``, the
action tokens, ``<ACTION_END></answer>`` and the end-of-turn token the action span; each is a
token-mean cross-entropy. Options: freeze the vision tower (paper default), the embeddings,
the lower N decoder layers (ReFineVLA: 24); LoRA (peft) on the language model's projections,
merged into the saved backbone.

Trains in the shared loop (:mod:`.loop`), so it runs under ``accelerate launch`` (DDP / FSDP /
DeepSpeed; docs/training.md): ``batch_size`` is per process, and each span's token mean is taken
over the global batch. Checkpoints: ``<output_dir>/checkpoint-<step>/`` (the ``VLAPolicy``
layout + ``trainer_state/`` for resume), final policy in ``<output_dir>/policy/``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from .build import PolicyInitConfig, load_or_build_policy
from .common import save_policy
from .config import DataConfig, RunConfig, check, load_config
from .localization import localization_probe
from .loop import Trainer
from .samples import (
    FrameSamples,
    SeededSampler,
    check_compatible,
    collate,
    open_datasets,
    split_episodes,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoraConfig:
    """LoRA (peft) on the language model. ``target_modules``: projection names to adapt."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclasses.dataclass
class SFTConfig:
    """``sft`` stage.

    Fields:
        data, run, policy: see :class:`DataConfig`, :class:`RunConfig`, :class:`PolicyInitConfig`.
        reasoning: reasoning target per frame: "latest" teacher rationale at or before the
            frame, "exact" (annotated frames only), "none" (empty think block).
        only_annotated: train only on frames that have a rationale.
        lambda_reasoning: lambda_r of ReFineVLA (0.3).
        learning_rate (paper 2e-5), lr_scheduler ("cosine", "linear", "constant"),
        warmup_ratio (0.03), weight_decay, max_grad_norm, adam_beta2.
        batch_size: per device; gradient_accumulation_steps.
        epochs: passes over the data; max_steps > 0 overrides it (optimizer steps).
        freeze_vision / freeze_embeddings / freeze_lower_layers: what is not trained.
        gradient_checkpointing: trade compute for memory (large backbones).
        lora: see :class:`LoraConfig`.
        localization_weight: weight of an auxiliary loss that asks the backbone's feature
            layer where the objects are (0 = off): spatial-softmax keypoints over each
            camera's image tokens regress the objects' base-frame x, y from the dataset's
            ``observation.environment_state`` (sim datasets; standardized by its stats). It
            is the signal a vision tower trained from scratch lacks: the action and
            reasoning losses say where objects are only through a few tokens. The probe is
            training-only: not saved with the policy, kept in checkpoints for resume.
        localization_keypoints: keypoints per camera of that probe.
    """

    section = "sft"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="runs/sft"))
    policy: PolicyInitConfig = dataclasses.field(default_factory=PolicyInitConfig)
    reasoning: str = "latest"
    only_annotated: bool = False
    lambda_reasoning: float = 0.3
    learning_rate: float = 2e-5
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    epochs: float = 1.0
    max_steps: int = 0
    freeze_vision: bool = True
    freeze_embeddings: bool = False
    freeze_lower_layers: int = 0
    gradient_checkpointing: bool = False
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    localization_weight: float = 0.0
    localization_keypoints: int = 16

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        p = self.section
        self.data.validate(f"{p}.data")
        self.run.validate(f"{p}.run")
        self.policy.validate(f"{p}.policy")
        check(p, "reasoning", self.reasoning in ("latest", "exact", "none"),
              "must be 'latest', 'exact' or 'none'", self.reasoning)
        check(p, "lambda_reasoning", self.lambda_reasoning >= 0, "must be >= 0",
              self.lambda_reasoning)
        check(p, "learning_rate", self.learning_rate > 0, "must be > 0", self.learning_rate)
        check(p, "lr_scheduler", self.lr_scheduler in ("cosine", "linear", "constant"),
              "must be cosine/linear/constant", self.lr_scheduler)
        check(p, "warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)",
              self.warmup_ratio)
        check(p, "batch_size", self.batch_size >= 1, "must be >= 1", self.batch_size)
        check(p, "gradient_accumulation_steps", self.gradient_accumulation_steps >= 1,
              "must be >= 1", self.gradient_accumulation_steps)
        check(p, "epochs", self.epochs > 0 or self.max_steps > 0, "must be > 0", self.epochs)
        check(p, "max_steps", self.max_steps >= 0, "must be >= 0", self.max_steps)
        check(p, "freeze_lower_layers", self.freeze_lower_layers >= 0, "must be >= 0",
              self.freeze_lower_layers)
        check(p, "max_grad_norm", self.max_grad_norm >= 0, "must be >= 0", self.max_grad_norm)
        check(p, "lora.r", self.lora.r >= 1, "must be >= 1", self.lora.r)
        check(p, "localization_weight", self.localization_weight >= 0, "must be >= 0",
              self.localization_weight)
        check(p, "localization_keypoints", self.localization_keypoints >= 1, "must be >= 1",
              self.localization_keypoints)


# ---------------------------------------------------------------------------- model surgery
def vision_tower(model):
    """The vision encoder module of an image-text-to-text model (None if not found)."""
    for owner in (getattr(model, "model", None), model):
        for name in ("visual", "vision_tower", "vision_model"):
            mod = getattr(owner, name, None) if owner is not None else None
            if isinstance(mod, torch.nn.Module):
                return mod
    return None


def apply_freezing(model, freeze_vision: bool, freeze_embeddings: bool, lower_layers: int) -> dict:
    """Set ``requires_grad``; returns counts of trainable / total parameters."""
    from ..model import backbone as bb
    from .config import ConfigError

    if freeze_vision:
        tower = vision_tower(model)
        if tower is None:
            raise ConfigError("sft.freeze_vision: cannot find the vision tower of this backbone")
        tower.requires_grad_(False)
    if freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    if lower_layers:
        layers = bb.decoder_layers(model)
        if layers is None or lower_layers > len(layers):
            raise ConfigError(f"sft.freeze_lower_layers: {lower_layers} > decoder layers "
                              f"({None if layers is None else len(layers)})")
        for layer in layers[:lower_layers]:
            layer.requires_grad_(False)
    return count_parameters(model)


def count_parameters(model) -> dict:
    """``{"trainable": n, "total": n}``."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": train, "total": total}


def apply_lora(model, cfg: LoraConfig):
    """Wrap the backbone with LoRA adapters on the language model (new-token rows trainable)."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    pattern = r".*language_model.*\.(" + "|".join(cfg.target_modules) + r")$"
    pc = PeftLora(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                  target_modules=pattern, modules_to_save=["embed_tokens", "lm_head"])
    return get_peft_model(model, pc)


def merged_backbone_state(model) -> dict:
    """Plain backbone state dict with LoRA merged (the peft model itself is left unchanged)."""
    base = model.get_base_model()
    model.merge_adapter()
    try:
        state = {}
        for k, v in base.state_dict().items():
            if "lora_" in k or ".original_module." in k:
                continue
            k = k.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
            state[k] = v.detach().clone().cpu()
    finally:
        model.unmerge_adapter()
    return state


# ---------------------------------------------------------------------------- loss
def split_losses(logits: torch.Tensor, labels: torch.Tensor, action_start_id: int,
                 span_tokens=None):
    """Token-mean CE over the reasoning span and the action span (see module docstring).

    ``span_tokens(counts)``: what the spans' CE sums are divided by, from this batch's token
    counts ``[action, reasoning]`` (default: the counts, at least 1; under N processes the
    stage passes the global counts / N). Returns ``(loss_action, loss_reasoning,
    n_action_tokens, n_reasoning_tokens)``.
    """
    logits, target = logits[:, :-1].float(), labels[:, 1:]
    valid = target != -100
    ce = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
    after = (target == action_start_id).long().cumsum(dim=1) > 0
    act, rea = valid & after, valid & ~after
    counts = torch.stack([act.sum(), rea.sum()])
    denominator = counts.clamp(min=1) if span_tokens is None else span_tokens(counts)
    l_act = (ce * act).sum() / denominator[0]
    l_rea = (ce * rea).sum() / denominator[1]
    return l_act, l_rea, int(counts[0]), int(counts[1])


def sft_loss(model, policy, batch, lambda_reasoning: float, probe=None,
             probe_weight: float = 0.0, token_grid=None, span_tokens=None):
    """``(loss, metrics)`` of one batch of :class:`~.samples.Sample`.

    ``span_tokens``: see :func:`split_losses`.
    """
    inputs = policy.sft_inputs([s.observation for s in batch], [s.reasoning for s in batch],
                               [s.chunk for s in batch])
    labels = inputs.pop("labels")
    use_probe = probe is not None and probe_weight > 0
    out = model(**inputs, use_cache=False, output_hidden_states=use_probe)
    l_act, l_rea, n_act, n_rea = split_losses(out.logits, labels,
                                              policy.token_ids["action_start"], span_tokens)
    loss = l_act + lambda_reasoning * l_rea
    metrics = {"loss_action": float(l_act.detach()), "loss_reasoning": float(l_rea.detach()),
               "tokens_action": n_act, "tokens_reasoning": n_rea}
    if use_probe:
        if any(s.scene_state is None for s in batch):
            raise ValueError("sft.localization_weight > 0 but a sample has no "
                             "observation.environment_state")
        l_loc, err = probe.loss(out.hidden_states[policy.feature_layer], token_grid,
                                inputs["attention_mask"], [s.scene_state for s in batch])
        loss = loss + probe_weight * l_loc
        metrics.update(loss_localization=float(l_loc.detach()), localization_error=err)
    return loss, {"loss": float(loss.detach()), **metrics}


# ---------------------------------------------------------------------------- run
def run_sft(config, overrides=()) -> Path:
    """Run SFT; returns the final policy directory (``<output_dir>/policy``)."""
    cfg = load_config(SFTConfig, config, overrides)
    trainer = Trainer("sft", cfg.run, cfg.gradient_accumulation_steps)
    readers = open_datasets(cfg.data.roots)
    splits = [split_episodes(len(r), cfg.data.val_fraction, cfg.data.episodes) for r in readers]
    train_eps = [s[0] for s in splits]
    init = cfg.policy if trainer.resume is None else dataclasses.replace(
        cfg.policy, checkpoint=str(trainer.resume), backbone="")
    policy = load_or_build_policy(init, readers, trainer.device, cfg.run.seed, train_eps)
    pc = policy.config
    check_compatible(readers, cfg.data.roots, pc.action_dim, pc.state_dim, pc.camera_names)
    data = FrameSamples(readers, cfg.data.roots, pc.horizon, pc.camera_names, pc.state_dim,
                        train_eps, cfg.data.frame_stride, cfg.data.max_samples, cfg.reasoning,
                        cfg.only_annotated, cfg.data.episode_cache)

    model = policy.backbone
    model.train()
    counts = apply_freezing(model, cfg.freeze_vision, cfg.freeze_embeddings,
                            cfg.freeze_lower_layers)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
        counts = count_parameters(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if trainer.is_main:
        log.info("sft: %d samples, trainable %d / %d parameters", len(data),
                 counts["trainable"], counts["total"])

    sampler = SeededSampler(len(data), cfg.run.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, sampler=sampler,
                                         collate_fn=collate,
                                         num_workers=cfg.data.num_workers, drop_last=False)
    total, steps_per_epoch = trainer.total_steps(len(loader), cfg.epochs, cfg.max_steps)
    probe = token_grid = None
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.localization_weight > 0:
        probe = localization_probe(readers, policy, cfg.localization_keypoints).to(
            trainer.device)
        token_grid = policy.token_grid().to(trainer.device)
        params += list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            betas=(0.9, cfg.adam_beta2))
    model, loader = trainer.prepare(model, opt, total, loader=loader,
                                    extra=[probe] if probe is not None else [],
                                    lr_scheduler=cfg.lr_scheduler,
                                    warmup_ratio=cfg.warmup_ratio,
                                    max_grad_norm=cfg.max_grad_norm)

    def span_tokens(counts):
        # divide each span's sum by the global token count / N: the gradient DDP averages over
        # the N processes is then the token mean over the global batch, as on one process
        if trainer.num_processes == 1:
            return counts.clamp(min=1)
        return trainer.acc.reduce(counts, "sum").clamp(min=1) / trainer.num_processes

    def loss(batch):
        return sft_loss(model, policy, batch, cfg.lambda_reasoning, probe,
                        cfg.localization_weight, token_grid, span_tokens)

    def save(path: Path):
        if cfg.lora.enabled:
            state = merged_backbone_state(trainer.acc.unwrap_model(model))
            if trainer.is_main:
                policy.save_pretrained(path, save_backbone=False)
                policy.backbone.save_pretrained(path / "backbone", state_dict=state)
                policy.processor.save_pretrained(path / "backbone")
        else:
            save_policy(policy, path, trainer.acc, model)

    trainer.fit(epoch_batches(trainer, loader, sampler, steps_per_epoch), loss, total,
                save=save)
    return trainer.finish(save)


def epoch_batches(trainer, loader, sampler: SeededSampler, steps_per_epoch: int):
    """Micro-batches of ``loader`` from the trainer's step on, epoch after epoch.

    Each epoch is a fresh permutation reseeded from its number, and a resumed run skips the
    batches its steps used, so it sees the data in the uninterrupted run's order.
    """
    epoch, skip = divmod(trainer.step, steps_per_epoch)
    skip *= trainer.acc.gradient_accumulation_steps
    while True:
        sampler.select_epoch(epoch)
        yield from trainer.acc.skip_first_batches(loader, skip) if skip else loader
        epoch, skip = epoch + 1, 0


def main(argv=None) -> int:
    """CLI: ``sft --config X [--set key=value ...]``."""
    from . import stages

    return stages.main("sft", argv)


if __name__ == "__main__":
    raise SystemExit(main())
