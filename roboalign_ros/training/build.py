"""Where a stage's policy comes from: an existing checkpoint, or a backbone + the dataset."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .config import ConfigError, check


@dataclasses.dataclass
class PolicyInitConfig:
    """The starting policy of a stage.

    Give ``checkpoint`` (a ``VLAPolicy.save_pretrained`` directory, e.g. the previous stage's
    ``policy/``; its action tokenizer and normalization stats are kept) or ``backbone`` (a
    local image-text-to-text model directory; a fresh policy is built on it: normalization
    stats from the datasets' ``meta/stats.json``, the FAST tokenizer fitted on their chunks).

    Fields used only with ``backbone``:
        horizon: chunk length; action_space: "joint_position" or "ee_delta".
        camera_names: image keys in prompt order (empty = all cameras of the first dataset).
        image_size: [height, width] images are resized to (null = as recorded).
        action_tokenizer: "fast" (paper) or "binning"; fast_scale / action_vocab_size: FAST
            quantization scale and BPE vocabulary (~2K in the paper); binning_bins.
        feature_layer: backbone layer the head reads (null = scaled paper choice, 18/28).
        head_width / head_layers / head_heads: flow-matching head size.
        policy_overrides: any other ``VLAConfig`` field (e.g. ``max_new_tokens``).
    Always:
        dtype: weights dtype for training ("float32"; mixed precision comes from accelerate).
        attn_implementation: "auto", "sdpa", "eager" or "flash_attention_2".
    """

    checkpoint: str = ""
    backbone: str = ""
    horizon: int = 16
    action_space: str = "joint_position"
    camera_names: list[str] = dataclasses.field(default_factory=list)
    image_size: list[int] | None = dataclasses.field(default_factory=lambda: [224, 224])
    action_tokenizer: str = "fast"
    fast_scale: float = 10.0
    action_vocab_size: int = 1024
    binning_bins: int = 256
    feature_layer: int | None = None
    head_width: int = 512
    head_layers: int = 8
    head_heads: int = 8
    policy_overrides: dict = dataclasses.field(default_factory=dict)
    dtype: str = "float32"
    attn_implementation: str = "auto"

    def validate(self, prefix: str = "policy") -> None:
        """Raise ConfigError naming the first bad field."""
        check(prefix, "checkpoint", bool(self.checkpoint) != bool(self.backbone),
              "exactly one of policy.checkpoint / policy.backbone must be set", self.checkpoint)
        check(prefix, "horizon", self.horizon >= 1, "must be >= 1", self.horizon)
        check(prefix, "action_tokenizer", self.action_tokenizer in ("fast", "binning"),
              "must be 'fast' or 'binning'", self.action_tokenizer)
        check(prefix, "image_size", self.image_size is None or len(self.image_size) == 2,
              "must be [height, width] or null", self.image_size)
        check(prefix, "dtype", self.dtype in ("auto", "float32", "bfloat16", "float16"),
              "must be auto/float32/bfloat16/float16", self.dtype)


def load_or_build_policy(init: PolicyInitConfig, readers, device, seed: int = 0,
                         train_episodes=None):
    """The stage's starting :class:`VLAPolicy` on ``device``."""
    from ..model import VLAConfig, VLAPolicy
    from ..model import backbone as bb
    from ..model.action_tokenizer import BinningActionTokenizer, FastActionTokenizer
    from ..model.config import HeadConfig
    from .samples import dataset_chunks, dataset_normalizer

    device = torch.device(device)
    if init.checkpoint:
        return VLAPolicy.from_pretrained(init.checkpoint, device=device, dtype=init.dtype)
    r0 = readers[0]
    cams = list(init.camera_names) or list(r0.cameras)
    fields = dict(
        backbone=init.backbone, horizon=init.horizon, action_dim=len(r0.action_names),
        dimension_names=list(r0.action_names), action_space=init.action_space,
        dt=1.0 / r0.fps, state_dim=len(r0.state_names), camera_names=cams,
        image_size=tuple(init.image_size) if init.image_size else None,
        feature_layer=init.feature_layer,
        head=HeadConfig(width=init.head_width, layers=init.head_layers, heads=init.head_heads),
        dtype=init.dtype, attn_implementation=init.attn_implementation, seed=seed)
    unknown = sorted(set(init.policy_overrides) - {f.name for f in dataclasses.fields(VLAConfig)})
    if unknown:
        raise ConfigError(f"policy.policy_overrides: unknown VLAConfig field(s) {unknown}")
    fields.update(init.policy_overrides)
    try:
        config = VLAConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"policy: bad policy configuration: {exc}") from exc
    normalizer = dataset_normalizer(readers)
    eps = train_episodes or [list(range(len(r))) for r in readers]
    chunks = normalizer.normalize("action", dataset_chunks(readers, init.horizon, eps))
    if init.action_tokenizer == "fast":
        tok = FastActionTokenizer(init.horizon, config.action_dim, scale=init.fast_scale,
                                  bpe_vocab_size=init.action_vocab_size).fit(
            np.asarray(chunks, np.float32))
    else:
        tok = BinningActionTokenizer(init.horizon, config.action_dim, n_bins=init.binning_bins)
    model, processor = bb.load_backbone(init.backbone, device, bb.resolve_dtype(init.dtype, device),
                                        init.attn_implementation)
    return VLAPolicy.build(config, model, processor, tok, normalizer)
