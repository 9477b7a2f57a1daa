"""Where the policy looks: attention maps onto the image patches (ReFineVLA's inspection).

For one observation, :class:`AttentionExplainer` measures two things:

* **Reasoning** (and the FAST action tokens the MLLM writes): one forward pass of the backbone
  over the prompt and the generated text with the attention weights returned. For the query
  tokens of each rationale section (``<Observation>`` ... ``<Task Planning>``) and of the
  action tokens, the weights onto the image tokens are averaged over the heads and over the
  chosen decoder layers: a plain mean, not a rollout. A rollout multiplies the layers'
  matrices through the residual stream; in a causal decoder with one image block early in
  the sequence it mostly smears every map onto the first image tokens. The default layers
  are those up to the policy's ``feature_layer``, the ones whose output the head reads.
* **The action head**: the flow head's cross-attention from its action tokens onto its
  context, averaged over heads, blocks and denoising steps. Context tokens that are image
  tokens count for their patch; the head's keypoint tokens, each a spatial softmax over one
  camera's image tokens, hand their share back to the patches by those softmax weights.

Each map is a distribution over the image tokens of all cameras (it sums to 1): it says where
the attention that went to the image went, not how much went to the image (``image_share``
does). Maps are cut per camera into its grid of merged patches, then upsampled to pixels.

The weights come from a private copy of the backbone and the head that shares their
parameters (no extra memory for weights) but runs eager attention and records its
probabilities. The policy's own modules keep SDPA and are never touched, so the action path
does not slow down, and an explainer on another thread does not race it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from . import backbone as bb
from .reasoning import THINK_START, section_spans

ACTION_TOKENS = "action tokens"
ACTION_HEAD = "action head"


@dataclass
class AttentionMaps:
    """Attention of one observation onto its images.

    ``maps[source][camera]`` is a ``[rows, cols]`` array over that camera's merged patches;
    over all cameras a source's maps sum to 1. Sources: the rationale sections found in the
    reasoning, ``"reasoning"`` (all of it), ``"action tokens"`` (FAST tokens, if generated)
    and ``"action head"``.
    """

    images: dict[str, np.ndarray]
    maps: dict[str, dict[str, np.ndarray]]
    image_share: dict[str, float] = field(default_factory=dict)
    """Per source, the fraction of its attention that went to image tokens at all."""
    reasoning_text: str | None = None

    @property
    def sources(self) -> list[str]:
        """The sources in display order."""
        return list(self.maps)

    def heat(self, source: str, camera: str) -> np.ndarray:
        """``source``'s map on ``camera`` upsampled to the image: ``[H, W]``, sums to its mass."""
        grid = torch.as_tensor(self.maps[source][camera], dtype=torch.float32)
        h, w = self.images[camera].shape[:2]
        up = torch.nn.functional.interpolate(grid[None, None], size=(h, w), mode="bilinear",
                                             align_corners=False)[0, 0].clamp_min(0)
        total = float(up.sum())
        return (up * (float(grid.sum()) / total) if total > 0 else up).numpy()

    def overlay(self, source: str, camera: str, alpha: float = 0.55) -> np.ndarray:
        """The camera image with ``source``'s heat map blended on top (``[H, W, 3]`` uint8)."""
        from matplotlib import colormaps

        heat = self.heat(source, camera)
        peak = float(heat.max())
        rgb = colormaps["inferno"](heat / peak if peak > 0 else heat)[..., :3]
        image = self.images[camera].astype(np.float32) / 255.0
        return (255 * ((1 - alpha) * image + alpha * rgb)).clip(0, 255).astype(np.uint8)

    def mass_within(self, source: str, camera: str, pixel, radius: float) -> float:
        """Share of ``source``'s attention in a disk of ``radius`` px around ``pixel`` (u, v)."""
        heat = self.heat(source, camera)
        v, u = np.mgrid[:heat.shape[0], :heat.shape[1]]
        inside = (u + 0.5 - pixel[0]) ** 2 + (v + 0.5 - pixel[1]) ** 2 <= radius ** 2
        return float(heat[inside].sum())


class AttentionExplainer:
    """Attention maps of a :class:`~roboalign_ros.model.VLAPolicy` (see the module docstring).

    ``layers``: 1-based decoder layers to average for the reasoning maps (None: 1 ..
    ``policy.feature_layer``).
    """

    def __init__(self, policy, layers: list[int] | None = None) -> None:
        self.policy = policy
        n_layers = len(bb.decoder_layers(policy.backbone) or []) or \
            bb.text_config(policy.backbone).num_hidden_layers
        self.layers = list(layers) if layers else list(range(1, policy.feature_layer + 1))
        bad = [i for i in self.layers if not 1 <= i <= n_layers]
        if bad:
            raise ValueError(f"layers: {bad} outside 1..{n_layers} (the backbone's decoder layers)")
        self.backbone = _shared_copy(policy.backbone)
        self.backbone.set_attn_implementation("eager")
        self.head = _shared_copy(policy.head)
        self.head._compiled = None
        self._head_probs: list[torch.Tensor] = []
        self._capture_head_attention()
        self._grid = policy.token_grid()

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def explain(self, observation, reasoning_text: str | None = None, generate: bool = True,
                seed: int = 0, head_only: bool = False) -> AttentionMaps:
        """Attention maps of ``observation``.

        ``reasoning_text``: the generated text (``Reasoning.text``, starting with ``<think>``)
        to explain; None with ``generate`` runs the policy's generation first, None without it
        gives only the action head's map. ``head_only``: skip the reasoning pass (the text
        still conditions the head if the policy's head reads reasoning).
        """
        policy = self.policy
        policy.check_observation(observation)
        if reasoning_text is None and generate:
            reasoning_text = policy.reason(observation).text
        maps, share = {}, {}
        if reasoning_text and not head_only:
            for name, (m, s) in self._reasoning_maps(observation, reasoning_text).items():
                maps[name], share[name] = m, s
        if policy.config.action_source != "tokens" or not maps:
            maps[ACTION_HEAD], share[ACTION_HEAD] = self._head_map(observation, reasoning_text,
                                                                   seed)
        images = dict(zip(policy.config.camera_names, policy._images(observation)))
        return AttentionMaps(images, maps, share, reasoning_text)

    # ------------------------------------------------------------------ reasoning
    def _reasoning_maps(self, obs, text: str):
        policy = self.policy
        suffix = text[len(THINK_START):] if text.startswith(THINK_START) else text
        inputs = policy.encode_observation(obs, suffix)
        enc = policy.tokenizer(suffix, add_special_tokens=False, return_offsets_mapping=True)
        n_suffix = len(enc["input_ids"])
        total = inputs["input_ids"].shape[1]
        start = total - n_suffix
        out = self.backbone(**{k: v for k, v in inputs.items() if k != "labels"},
                            output_attentions=True, use_cache=False)
        # [T, T] per chosen layer, mean over heads, then over layers
        att = torch.stack([out.attentions[i - 1][0].float().mean(0) for i in self.layers]).mean(0)
        queries: dict[str, list[int]] = {}
        offsets = enc["offset_mapping"]
        spans = section_spans(suffix)
        action_ids = set(policy.token_ids["actions"].tolist())
        ids = enc["input_ids"]
        think_end = suffix.find("</think>")
        for j, (a, _b) in enumerate(offsets):
            if ids[j] in action_ids:
                queries.setdefault(ACTION_TOKENS, []).append(start + j)
                continue
            if think_end >= 0 and a >= think_end:
                continue
            queries.setdefault("reasoning", []).append(start + j)
            for name, (s0, s1) in spans.items():
                if s0 <= a < s1:
                    queries.setdefault(name, []).append(start + j)
        order = [*spans, "reasoning", ACTION_TOKENS]
        return {name: self._image_distribution(att[queries[name]].mean(0))
                for name in order if queries.get(name)}

    # ------------------------------------------------------------------ head
    def _head_map(self, obs, reasoning_text: str | None, seed: int):
        from .reasoning import parse_generation

        policy, cfg = self.policy, self.policy.config
        context = None
        if reasoning_text and cfg.head_context == "reasoning":
            context = parse_generation(reasoning_text).reasoning
        inputs = policy.encode_observation(obs, policy.feature_suffix(context))
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        features = bb.layer_hidden_states(self.backbone, model_inputs, policy.feature_layer)
        mask = inputs["attention_mask"]
        state = None
        if cfg.state_dim:
            state = torch.as_tensor(policy.normalizer.normalize("state", obs.state),
                                    device=policy.device)[None]
        gen = torch.Generator(device=policy.device).manual_seed(seed)
        self._head_probs.clear()
        self.head.sample(features, state, mask, generator=gen)
        heads = self.head.cfg.heads
        # [B * heads, Q, K] per block and step -> mean over heads, steps, blocks and the
        # action queries (the proprioception token, if any, comes first)
        probs = torch.stack([p.float().reshape(-1, heads, *p.shape[1:])[0].mean(0)
                             for p in self._head_probs]).mean(0)
        weights = probs[-self.head.horizon:].mean(0)                       # [T + keypoints]
        n = features.shape[1]
        on_tokens = weights[:n].clone()
        if self.head.keypoint_logits is not None and weights.shape[0] > n:
            on_tokens += self._keypoint_weights(features, mask) @ weights[n:]
        return self._image_distribution(on_tokens)

    @torch.no_grad()
    def _keypoint_weights(self, features, mask) -> torch.Tensor:
        """``[T, C * K]``: each keypoint token's softmax weights over its camera's image tokens."""
        from .head import pad_token_grid

        head = self.head
        grid = pad_token_grid(head.token_grid, features.shape[1]).cpu()
        k = head.cfg.keypoints
        logits = head.keypoint_logits(features.to(head.pos.dtype))[0, :, :k].float().cpu()
        cams = int(grid[:, 0].max().item()) + 1
        cols = []
        for c in range(cams):
            valid = (grid[:, 0] == c) & mask[0].bool().cpu()
            cols.append(torch.softmax(logits.masked_fill(~valid[:, None], float("-inf")), dim=0))
        return torch.cat(cols, dim=1).to(features.device)

    def _capture_head_attention(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor

        for block in self.head.blocks:
            attn = block.attn2
            attn.set_processor(AttnProcessor())   # the processor that materialises the weights
            scores = attn.get_attention_scores

            def recorded(query, key, attention_mask=None, _scores=scores):
                probs = _scores(query, key, attention_mask)
                self._head_probs.append(probs.detach())
                return probs

            attn.get_attention_scores = recorded

    # ------------------------------------------------------------------ common
    def _image_distribution(self, weights: torch.Tensor):
        """Per-token weights -> ({camera: [rows, cols]} summing to 1 overall, image share)."""
        weights = weights.detach().float().cpu()
        grid = self._grid[:weights.shape[0]]
        names = self.policy.config.camera_names
        per_camera, total = {}, 0.0
        for c, name in enumerate(names):
            idx = (grid[:, 0] == c).nonzero()[:, 0]
            xs, ys = grid[idx, 1], grid[idx, 2]
            cols, rows = len(torch.unique(xs)), len(torch.unique(ys))
            values = weights[idx]
            # image tokens are laid out row-major (VLAPolicy.token_grid)
            per_camera[name] = values.reshape(rows, cols).numpy()
            total += float(values.sum())
        all_weights = float(weights.sum())
        if total > 0:
            per_camera = {k: v / total for k, v in per_camera.items()}
        return per_camera, (total / all_weights if all_weights > 0 else 0.0)


def _shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with new submodules and config but the same parameter tensors."""
    memo = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return copy.deepcopy(module, memo)
