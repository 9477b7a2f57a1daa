"""Stage 4, ``head``: train the flow-matching action head on the frozen (aligned) backbone.

1. Load the aligned policy; freeze the backbone.
2. Extract the hidden states of ``policy.feature_layer`` for every sample's context
   ``prompt(images, instruction) + reasoning + "</think><answer>"`` (the same context
   ``VLAPolicy.predict`` gives the head) and cache them to safetensors under
   ``<output_dir>/features/`` (keyed by checkpoint, layer, context mode and sample list, so a
   rerun or resume reuses them).
3. Train the head with the flow-matching loss on normalized chunks (+ normalized state).
4. Evaluate on held-out episodes: MSE of sampled chunks vs. the truth, next to the baseline
   that always predicts the mean training chunk (``<output_dir>/head_metrics.json``).

Context reasoning (``context``): "generated" (the policy's own greedy reasoning, as at
inference; slow on big data), "rationale" (teacher rationale of the frame, see
:mod:`.samples`), "none" (empty think block), "auto" = "generated" if the policy reasons
(``reasoning_every > 0``) else "none".

Checkpoints (``checkpoint-<step>/``, final ``policy/``) use the ``VLAPolicy`` layout; the
frozen backbone is hard-linked from the input checkpoint (copied if links are impossible).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..data.scene_state import ENV_STATE_KEY as SCENE_STATE
from .build import PolicyInitConfig, load_or_build_policy
from .common import progress
from .config import ConfigError, DataConfig, RunConfig, check, load_config
from .loop import Trainer
from .samples import FrameSamples, check_compatible, open_datasets, split_episodes

log = logging.getLogger(__name__)


@dataclasses.dataclass
class HeadStageConfig:
    """``head`` stage.

    Fields:
        data, run: see :class:`DataConfig` / :class:`RunConfig` (``data.val_fraction`` holds
            out the last episodes for the held-out error; default 0.1).
        policy: the aligned policy (``checkpoint``).
        context: "auto", "generated", "rationale" or "none" (see module docstring).
        reinit_head: start from a freshly initialised head instead of the checkpoint's.
        head_overrides: ``HeadConfig`` fields of the fresh head (with ``reinit_head``), e.g.
            ``{keypoints: 16}``.
        learning_rate, weight_decay, lr_scheduler, warmup_ratio, max_grad_norm.
        batch_size: per device; epochs / max_steps (max_steps > 0 wins).
        feature_batch_size: samples per backbone forward during extraction.
        eval_every: steps between held-out evaluations (0 = only at the end);
        eval_samples: held-out samples evaluated (0 = all); eval_num_steps: denoising steps
            (null = the policy's).
    """

    section = "head"
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(val_fraction=0.1))
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="runs/head"))
    policy: PolicyInitConfig = dataclasses.field(default_factory=PolicyInitConfig)
    context: str = "auto"
    reinit_head: bool = False
    head_overrides: dict = dataclasses.field(default_factory=dict)
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    batch_size: int = 32
    epochs: float = 10.0
    max_steps: int = 0
    feature_batch_size: int = 8
    eval_every: int = 0
    eval_samples: int = 0
    eval_num_steps: int | None = None
    localization_weight: float = 0.0
    localization_token_targets: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        p = self.section
        self.data.validate(f"{p}.data")
        self.run.validate(f"{p}.run")
        self.policy.validate(f"{p}.policy")
        check(p, "policy.checkpoint", bool(self.policy.checkpoint),
              "the head stage needs the aligned policy checkpoint", self.policy.checkpoint)
        check(p, "context", self.context in ("auto", "generated", "rationale", "none"),
              "must be auto/generated/rationale/none", self.context)
        check(p, "learning_rate", self.learning_rate > 0, "must be > 0", self.learning_rate)
        check(p, "lr_scheduler", self.lr_scheduler in ("cosine", "linear", "constant"),
              "must be cosine/linear/constant", self.lr_scheduler)
        check(p, "warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)",
              self.warmup_ratio)
        check(p, "batch_size", self.batch_size >= 1, "must be >= 1", self.batch_size)
        check(p, "epochs", self.epochs > 0 or self.max_steps > 0, "must be > 0", self.epochs)
        check(p, "max_steps", self.max_steps >= 0, "must be >= 0", self.max_steps)
        from ..model.config import HeadConfig

        known = {f.name for f in dataclasses.fields(HeadConfig)}
        check(p, "head_overrides", set(self.head_overrides) <= known,
              f"unknown HeadConfig field(s); known: {sorted(known)}", self.head_overrides)
        check(p, "head_overrides", self.reinit_head or not self.head_overrides,
              "needs reinit_head: true (a trained head keeps its shape)", self.head_overrides)
        check(p, "feature_batch_size", self.feature_batch_size >= 1, "must be >= 1",
              self.feature_batch_size)
        check(p, "eval_every", self.eval_every >= 0, "must be >= 0", self.eval_every)
        check(p, "eval_num_steps", self.eval_num_steps is None or self.eval_num_steps >= 1,
              "must be >= 1 or null", self.eval_num_steps)
        check(p, "localization_weight", self.localization_weight >= 0, "must be >= 0",
              self.localization_weight)


# ---------------------------------------------------------------------------- features
@dataclasses.dataclass
class FeatureSet:
    """Cached head inputs: per-sample features [T_i, hidden], normalized state and chunk.

    ``scene``: each sample's ``observation.environment_state`` where the dataset has it.
    """

    features: list[torch.Tensor]
    state: torch.Tensor | None  # [N, state_dim]
    chunk: torch.Tensor  # [N, H, D] normalized
    scene: torch.Tensor | None = None  # [N, environment_state]

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, idx, device) -> tuple:
        """Padded ``(features [B, T, hid], mask [B, T], state, chunk)`` of items ``idx``."""
        feats = [self.features[i] for i in idx]
        t = max(f.shape[0] for f in feats)
        hid = feats[0].shape[1]
        out = torch.zeros(len(feats), t, hid, dtype=feats[0].dtype)
        mask = torch.zeros(len(feats), t, dtype=torch.long)
        for j, f in enumerate(feats):
            out[j, :f.shape[0]] = f
            mask[j, :f.shape[0]] = 1
        state = None if self.state is None else self.state[idx].to(device)
        return out.to(device), mask.to(device), state, self.chunk[idx].to(device)


def _context_mode(cfg: HeadStageConfig, policy) -> str:
    if cfg.context != "auto":
        return cfg.context
    return "generated" if policy.config.reasoning_every > 0 else "none"


def _cache_key(policy_dir: str, layer: int, mode: str, items) -> str:
    h = hashlib.sha256()
    root = Path(policy_dir).resolve()
    h.update(str(root).encode())
    for f in sorted((root / "backbone").glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(f"{layer}:{mode}:scene".encode())  # caches hold the scene states too
    h.update(json.dumps(items).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def extract_features(policy, samples: FrameSamples, mode: str, batch_size: int,
                     cache_file: Path | None = None, show: bool = True) -> FeatureSet:
    """Run the frozen backbone over ``samples`` (or load ``cache_file`` if it exists)."""
    from safetensors.torch import load_file, save_file

    if cache_file is not None and cache_file.is_file():
        data = load_file(cache_file)
        n = int(data["count"].item())
        return FeatureSet([data[f"f{i}"] for i in range(n)], data.get("state"), data["chunk"],
                          data.get("scene"))
    feats, states, chunks, scenes = [], [], [], []
    bar = progress(total=len(samples), desc=f"features ({mode})", enable=show)
    for start in range(0, len(samples), batch_size):
        batch = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        obs = [s.observation for s in batch]
        if mode == "generated":
            reasons = []
            for o in obs:
                parsed, _ = policy.generate(policy.encode_observation(o))
                reasons.append(parsed.reasoning)
        elif mode == "rationale":
            reasons = [s.reasoning for s in batch]
        else:
            reasons = [None] * len(batch)
        inputs = policy.encode_observation(obs, [policy.feature_suffix(r) for r in reasons])
        hidden, mask = policy.backbone_features(inputs)
        for j, s in enumerate(batch):
            n = int(mask[j].sum())
            feats.append(hidden[j, :n].float().cpu().contiguous())
            chunks.append(policy.normalizer.normalize("action", s.chunk))
            if policy.config.state_dim:
                states.append(policy.normalizer.normalize("state", s.observation.state))
            if s.scene_state is not None:
                scenes.append(np.asarray(s.scene_state, np.float32))
        bar.update(len(batch))
    bar.close()
    fs = FeatureSet(feats, torch.as_tensor(np.stack(states)) if states else None,
                    torch.as_tensor(np.stack(chunks)),
                    torch.as_tensor(np.stack(scenes)) if len(scenes) == len(feats) else None)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"f{i}": f for i, f in enumerate(fs.features)}
        tensors["chunk"] = fs.chunk.contiguous()
        tensors["count"] = torch.tensor([len(fs)])
        if fs.state is not None:
            tensors["state"] = fs.state.contiguous()
        if fs.scene is not None:
            tensors["scene"] = fs.scene.contiguous()
        tmp = cache_file.with_suffix(".tmp")
        save_file(tensors, tmp)
        os.replace(tmp, cache_file)
    return fs


@torch.no_grad()
def evaluate(head, fs: FeatureSet, mean_chunk: torch.Tensor, device, seed: int = 0,
             num_steps: int | None = None, batch_size: int = 32, limit: int = 0) -> dict:
    """Held-out MSE (normalized units) of sampled chunks vs. the mean-chunk baseline."""
    was_training = head.training
    head.eval()
    n = len(fs) if not limit else min(limit, len(fs))
    gen = torch.Generator(device=device).manual_seed(seed)
    se, base, count = 0.0, 0.0, 0
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        feats, mask, state, chunk = fs.batch(idx, device)
        pred = head.sample(feats, state, mask, num_steps=num_steps, generator=gen)
        se += float(((pred - chunk.float()) ** 2).sum())
        base += float(((mean_chunk.to(device)[None] - chunk.float()) ** 2).sum())
        count += chunk.numel()
    head.train(was_training)
    return {"mse": se / max(count, 1), "baseline_mse": base / max(count, 1), "samples": n}


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` into ``dst`` (copy where links are impossible)."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


# ---------------------------------------------------------------------------- run
def run_head(config, overrides=()) -> Path:
    """Train the action head; returns the final policy directory (``<output_dir>/policy``).

    Metrics (held-out MSE vs. mean-chunk baseline, normalized units) go to
    ``<output_dir>/head_metrics.json`` and TensorBoard.
    """
    from ..model import backbone as bb
    from ..model.head import FlowMatchingHead

    cfg = load_config(HeadStageConfig, config, overrides)
    trainer = Trainer("head", cfg.run)
    acc, out_dir = trainer.acc, trainer.out_dir
    readers = open_datasets(cfg.data.roots)
    splits = [split_episodes(len(r), cfg.data.val_fraction, cfg.data.episodes) for r in readers]
    src = Path(cfg.policy.checkpoint)
    if not (src / "backbone").is_dir():
        raise ConfigError(f"head.policy.checkpoint: {src} has no backbone/ directory (pass the "
                          "align stage's policy/ or a checkpoint-<step>/)")
    policy = load_or_build_policy(cfg.policy, readers, acc.device, cfg.run.seed)
    pc = policy.config
    check_compatible(readers, cfg.data.roots, pc.action_dim, pc.state_dim, pc.camera_names)
    policy.backbone.requires_grad_(False)
    policy.backbone.eval()
    mode = _context_mode(cfg, policy)
    # the policy's action path must read the context the head was trained on
    policy.config.head_context = "none" if mode == "none" else "reasoning"
    reasoning = "latest" if mode == "rationale" else "none"

    def samples(split: int):
        eps = [s[split] for s in splits]
        if not any(eps):
            return None
        return FrameSamples(readers, cfg.data.roots, pc.horizon, pc.camera_names, pc.state_dim,
                            eps, cfg.data.frame_stride, cfg.data.max_samples, reasoning, False,
                            cfg.data.episode_cache)

    train_s, val_s = samples(0), samples(1)
    sets = {}
    for name, s in (("train", train_s), ("val", val_s)):
        if s is None:
            continue
        key = _cache_key(str(src), policy.feature_layer, mode, s.items)
        cache = out_dir / "features" / f"{name}-{key}.safetensors"
        if trainer.is_main:
            extract_features(policy, s, mode, cfg.feature_batch_size, cache, cfg.run.progress)
        acc.wait_for_everyone()
        sets[name] = extract_features(policy, s, mode, cfg.feature_batch_size, cache, False)
    train_fs = sets["train"]
    mean_chunk = train_fs.chunk.float().mean(dim=0)

    head = policy.head
    if cfg.reinit_head:
        torch.manual_seed(cfg.run.seed)
        try:
            pc.head = dataclasses.replace(pc.head, **cfg.head_overrides)
            pc.validate()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"head.head_overrides: {exc}") from exc
        head = FlowMatchingHead(pc.head, pc.horizon, pc.action_dim, pc.state_dim,
                                bb.text_config(policy.backbone).hidden_size).to(acc.device)
        if pc.head.keypoints:
            head.set_token_grid(policy.token_grid())
        policy.head = head
    head.float().train()
    probe, points = _localization(cfg, policy, head, readers, train_fs, trainer)
    batches_per_epoch = math.ceil(len(train_fs) / cfg.batch_size)
    total, _ = trainer.total_steps(batches_per_epoch, cfg.epochs, cfg.max_steps)
    clipped = list(head.parameters())  # the head's; the probe's regressor is not clipped
    params = clipped + ([] if probe is None else list(probe.out.parameters()))
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    head = trainer.prepare(head, opt, total, extra=[] if probe is None else [probe.out],
                           lr_scheduler=cfg.lr_scheduler, warmup_ratio=cfg.warmup_ratio,
                           max_grad_norm=cfg.max_grad_norm, clip=clipped)
    unwrapped = acc.unwrap_model(head)
    backbone_src = src / "backbone"
    rank, world = trainer.rank, trainer.num_processes

    def loss(step: int):
        # per-step, seeded choice of the global batch (deterministic, the same after a
        # resume); each process takes every N-th sample of it, with that sample's noise
        g = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)
        perm = torch.randperm(len(train_fs), generator=g)
        idx = perm[: cfg.batch_size * world][rank::world].tolist()
        feats, mask, state, chunk = train_fs.batch(idx, acc.device)
        noise_gen = torch.Generator(device=acc.device).manual_seed(cfg.run.seed + 7919 * step)
        value = flow_matching_loss(head, feats, state, chunk, mask, noise_gen, rank, world)
        if probe is None:
            return value, {}
        l_loc, err = probe.loss(feats, unwrapped.token_grid, mask, train_fs.scene[idx].numpy(),
                                None if points is None else points[idx])
        return value + cfg.localization_weight * l_loc, {"localization_error": err}

    evaluations = {}

    def evaluate_val(step: int) -> dict:
        evaluations[step] = evaluate(unwrapped, sets["val"], mean_chunk, acc.device,
                                     cfg.run.seed, cfg.eval_num_steps, cfg.batch_size,
                                     cfg.eval_samples)
        return {"val_mse": evaluations[step]["mse"],
                "val_baseline_mse": evaluations[step]["baseline_mse"]}

    def save(path: Path):
        if trainer.is_main:
            policy.head = unwrapped
            policy.save_pretrained(path, save_backbone=False)
            link_tree(backbone_src, path / "backbone")
        acc.wait_for_everyone()

    trainer.fit(itertools.count(trainer.step), loss, total, save=save,
                evaluate=evaluate_val if "val" in sets else None,
                eval_every=cfg.eval_every or total)
    metrics = {}
    if "val" in sets:
        # the last step's evaluation (a run resumed at its end evaluates now)
        metrics = evaluations.get(trainer.step) or evaluate(
            unwrapped, sets["val"], mean_chunk, acc.device, cfg.run.seed, cfg.eval_num_steps,
            cfg.batch_size, cfg.eval_samples)
        metrics["train_samples"] = len(train_fs)
        if trainer.is_main:
            log.info("head: held-out MSE %.4f vs mean-chunk baseline %.4f", metrics["mse"],
                     metrics["baseline_mse"])
    final = trainer.finish(save)
    if trainer.is_main:
        (out_dir / "head_metrics.json").write_text(json.dumps(metrics, indent=1))
    return final


def _localization(cfg: HeadStageConfig, policy, head, readers, train_fs: FeatureSet,
                  trainer):
    """``(probe, token-grid points or None)`` of ``localization_weight`` (``(None, None)``: off).

    The probe's keypoint detector *is* the head's (shared module), so its loss shapes the
    keypoints the head reads.
    """
    from .localization import localization_probe, sim_token_points

    if cfg.localization_weight <= 0:
        return None, None
    field = "head.localization_weight"
    pc = policy.config
    if not pc.head.keypoints:
        raise ConfigError(f"{field}: the head has no keypoints (set head_overrides.keypoints)")
    if trainer.num_processes > 1:
        raise ConfigError(f"{field}: runs in one process only (the probe reads the head's "
                          "keypoint detector outside its wrapped forward)")
    if train_fs.scene is None:
        raise ConfigError(f"{field}: the samples have no observation.environment_state "
                          "(record the dataset with `roboalign record bulk`, or "
                          "--set localization_weight=0)")
    probe = localization_probe(readers, policy, pc.head.keypoints, field).to(trainer.device)
    probe.logits = head.keypoint_logits
    points = None
    if cfg.localization_token_targets:
        names = readers[0].features[SCENE_STATE]["names"]
        points = torch.as_tensor(sim_token_points(names, train_fs.scene.numpy(),
                                                  policy.token_grid(), pc.image_size))
    return probe, points


def flow_matching_loss(head, feats, state, chunk, mask, gen, rank: int = 0, world: int = 1):
    """``FlowMatchingHead.loss`` through the (possibly wrapped) ``head``'s forward.

    Through the forward, so that DDP averages the gradients. Noise and times are drawn for the
    global batch (``world`` x this process's) and this process takes its share
    (``[rank::world]``), so every sample gets the noise it gets on one process.
    """
    x0 = chunk.float()
    shape = (x0.shape[0] * world, *x0.shape[1:])
    noise = torch.randn(shape, generator=gen, device=x0.device)[rank::world]
    sigma = torch.rand((shape[0],), generator=gen, device=x0.device)[rank::world]
    s = sigma[:, None, None]
    inner = getattr(head, "module", head)
    pred = head((1 - s) * x0 + s * noise, sigma * inner.cfg.num_train_timesteps, feats, state,
                mask)
    return torch.mean((pred.float() - (noise - x0)) ** 2)


def main(argv=None) -> int:
    """CLI: ``head --config X [--set key=value ...]``."""
    from . import stages

    return stages.main("head", argv)


if __name__ == "__main__":
    raise SystemExit(main())
