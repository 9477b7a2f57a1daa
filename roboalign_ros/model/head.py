"""Flow-matching DiT action head (GR00T-N1.5 / pi0 style), built from diffusers blocks.

Tokens: one proprioception token (if ``state_dim > 0``) followed by ``horizon`` noisy action
tokens with learned positions. Each block (diffusers ``BasicTransformerBlock``, PixArt adaLN-single
timestep modulation) does self-attention over these tokens and cross-attention to projected
backbone hidden states. Flow matching follows diffusers' ``FlowMatchEulerDiscreteScheduler``:
``x_sigma = (1 - sigma) * x0 + sigma * noise``, the network predicts the velocity
``noise - x0`` at timestep ``sigma * num_train_timesteps``, and sampling integrates from
``sigma=1`` (pure noise) to 0 with the scheduler's Euler steps.
"""

from __future__ import annotations

import copy

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from .config import HeadConfig


def spatial_keypoints(logits: torch.Tensor, token_grid: torch.Tensor,
                      feature_mask: torch.Tensor | None = None,
                      offsets: torch.Tensor | None = None,
                      cameras: int | None = None) -> torch.Tensor:
    """Spatial-softmax keypoints: expected image position of each logit channel, per camera.

    Args:
        logits: [B, T, K] per-token scores (K keypoints).
        token_grid: [T, 5] per token ``(camera index or -1 for text, x, y, cell width, cell
            height)``, x and y in [-1, 1] on the camera's token grid (``VLAPolicy.token_grid``).
        feature_mask: [B, T], 1 for real tokens.
        offsets: [B, T, K, 2] in [-1, 1]: where in its cell each token puts the keypoint (in
            half cells). A merged Qwen2.5-VL token covers 28x28 pixels; the offsets give
            the keypoint the finer position the token's features know.
        cameras: the number of cameras in ``token_grid`` when the caller knows it (None: read
            from the grid, a host-device sync that ``torch.compile`` cannot trace).
    Returns ``[B, C * K, 2]``: for every camera ``c`` and keypoint ``k`` the softmax-weighted
    mean ``(x, y)`` of camera c's image tokens.
    """
    if cameras is None:
        cameras = int(token_grid[:, 0].max().item()) + 1 if token_grid.numel() else 0
    xy = token_grid[:, 1:3].to(logits.dtype)[None, :, None]  # [1, T, 1, 2]
    if offsets is not None:
        xy = xy + offsets * token_grid[:, 3:5].to(logits.dtype)[None, :, None] / 2
    out = []
    for c in range(cameras):
        valid = (token_grid[:, 0] == c)[None].expand(logits.shape[0], -1)
        if feature_mask is not None:
            valid = valid & feature_mask.bool()
        scores = logits.float().masked_fill(~valid[..., None], float("-inf"))
        weights = torch.softmax(scores, dim=1).to(logits.dtype)  # [B, T, K]
        out.append((weights[..., None] * xy).sum(dim=1))
    return torch.cat(out, dim=1)


def keypoints_from_features(scores: torch.Tensor, grid: torch.Tensor,
                            feature_mask: torch.Tensor | None,
                            cameras: int | None = None) -> torch.Tensor:
    """Keypoints from per-token ``scores`` [B, T, 3K]: K logits, then K (dx, dy) offsets."""
    k = scores.shape[-1] // 3
    offsets = torch.tanh(scores[..., k:].float()).unflatten(-1, (k, 2)).to(scores.dtype)
    return spatial_keypoints(scores[..., :k], grid, feature_mask, offsets, cameras)


def pad_token_grid(grid: torch.Tensor, length: int) -> torch.Tensor:
    """``grid`` cut or extended to ``length`` tokens (tokens past the prompt layout are text)."""
    if grid.shape[0] >= length:
        return grid[:length]
    pad = grid.new_zeros(length - grid.shape[0], grid.shape[1])
    pad[:, 0] = -1
    return torch.cat([grid, pad])


class FlowMatchingHead(nn.Module):
    """Predicts a normalized action chunk [B, horizon, action_dim] from backbone features."""

    def __init__(self, cfg: HeadConfig, horizon: int, action_dim: int, state_dim: int,
                 feature_dim: int):
        super().__init__()
        self.cfg, self.horizon, self.action_dim = copy.deepcopy(cfg), horizon, action_dim
        self.state_dim, self.feature_dim = state_dim, feature_dim
        w = cfg.width
        self.action_in = nn.Linear(action_dim, w)
        self.state_in = nn.Linear(state_dim, w) if state_dim > 0 else None
        n_tokens = horizon + (1 if state_dim > 0 else 0)
        self.pos = nn.Parameter(torch.randn(1, n_tokens, w) * 0.02)
        self.context_in = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, w))
        # where each feature token sits in the sequence (see HeadConfig.context_positions)
        # zeros: learned from the first step, and the seeded initialisation of every other
        # weight stays what it was before this table existed
        self.context_pos = (nn.Parameter(torch.zeros(1, cfg.context_positions, w))
                            if cfg.context_positions > 0 else None)
        self.keypoint_logits = self.keypoint_in = None
        if cfg.keypoints > 0:
            # an MLP, not a linear map: the detector must find objects in features that a
            # small backbone encodes only weakly and non-linearly
            self.keypoint_logits = nn.Sequential(nn.LayerNorm(feature_dim),
                                                 nn.Linear(feature_dim, 2 * w), nn.GELU(),
                                                 nn.Linear(2 * w, 3 * cfg.keypoints))
            self.keypoint_in = nn.Sequential(nn.Linear(2, w), nn.GELU(), nn.Linear(w, w))
            self.keypoint_id = nn.Parameter(torch.randn(1, 64 * cfg.keypoints, w) * 0.02)
        # (camera, x, y) of each feature token, set from the prompt layout by the policy
        self.register_buffer("token_grid", torch.zeros(0, 5), persistent=False)
        self._grid_cameras, self._first_image_token = 0, None  # of token_grid, read on the host
        self.time = AdaLayerNormSingle(w)
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(w, cfg.heads, w // cfg.heads, cross_attention_dim=w,
                                  activation_fn="gelu-approximate", norm_type="ada_norm_single",
                                  norm_elementwise_affine=False, norm_eps=1e-6)
            for _ in range(cfg.layers)
        )
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.out_shift_scale = nn.Parameter(torch.randn(2, w) / w**0.5)
        self.action_out = nn.Linear(w, action_dim)
        nn.init.zeros_(self.action_out.weight)
        nn.init.zeros_(self.action_out.bias)
        self.scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=cfg.num_train_timesteps, shift=cfg.shift)
        self._compiled = None
        self._schedules: dict = {}

    def set_token_grid(self, grid: torch.Tensor) -> None:
        """Per-token ``(camera, x, y)`` of the feature sequence (``VLAPolicy.token_grid``)."""
        self.token_grid = grid.to(device=self.pos.device, dtype=torch.float32)
        cameras = grid[:, 0].cpu()
        images = (cameras >= 0).nonzero()
        # kept as Python ints: reading them from the grid per call would break a compiled graph
        self._grid_cameras = int(cameras.max()) + 1 if len(cameras) else 0
        self._first_image_token = int(images[0, 0]) if len(images) else None

    def _keypoint_tokens(self, features: torch.Tensor, feature_mask) -> torch.Tensor:
        grid = pad_token_grid(self.token_grid, features.shape[1])
        if self._first_image_token is None or self._first_image_token >= features.shape[1]:
            raise ValueError("FlowMatchingHead: keypoints need the token grid of the prompt "
                             "layout (VLAPolicy sets it); none of the feature tokens is an image")
        points = keypoints_from_features(self.keypoint_logits(features), grid, feature_mask,
                                         self._grid_cameras)
        return self.keypoint_in(points) + self.keypoint_id[:, :points.shape[1]]

    def encode_context(self, features: torch.Tensor, feature_mask: torch.Tensor | None = None):
        """What the blocks cross-attend to: ``(context [B, T', width], bias [B, 1, T'] or None)``.

        The projected features plus their positions, then the keypoint tokens. It depends on
        the features only, so :meth:`sample` computes it once for all denoising steps.
        """
        dtype = self.pos.dtype
        context = self.context_in(features.to(dtype))
        if self.context_pos is not None:
            n, table = context.shape[1], self.context_pos.shape[1]
            pos = self.context_pos[:, :n]
            if n > table:
                pos = torch.cat([pos, pos[:, -1:].expand(-1, n - table, -1)], dim=1)
            context = context + pos
        mask = feature_mask
        if self.keypoint_logits is not None:
            points = self._keypoint_tokens(features.to(dtype), feature_mask)
            context = torch.cat([context, points], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], points.shape[1])], dim=1)
        bias = None if mask is None else ((1 - mask.to(dtype)) * -10000.0)[:, None]
        return context, bias

    def velocity(self, noisy: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                 bias: torch.Tensor | None, state: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity prediction from an :meth:`encode_context` result (see :meth:`forward`)."""
        b, dtype = noisy.shape[0], self.pos.dtype
        tokens = self.action_in(noisy.to(dtype))
        if self.state_in is not None:
            if state is None:
                raise ValueError("state is required: head was built with state_dim > 0")
            tokens = torch.cat([self.state_in(state.to(dtype))[:, None], tokens], dim=1)
        tokens = tokens + self.pos
        t6, t_emb = self.time(timestep.reshape(-1).expand(b), batch_size=b, hidden_dtype=dtype)
        for block in self.blocks:
            tokens = block(tokens, encoder_hidden_states=context, encoder_attention_mask=bias,
                           timestep=t6)
        shift, scale = (self.out_shift_scale[None] + t_emb[:, None]).chunk(2, dim=1)
        tokens = self.norm_out(tokens) * (1 + scale) + shift
        return self.action_out(tokens[:, -self.horizon:])

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, features: torch.Tensor,
                state: torch.Tensor | None = None,
                feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity prediction.

        Args:
            noisy: [B, H, D] noisy normalized chunk.
            timestep: [B] in [0, num_train_timesteps] (sigma * num_train_timesteps).
            features: [B, T, feature_dim] backbone hidden states.
            state: [B, state_dim] normalized proprioception (required iff state_dim > 0).
            feature_mask: [B, T], 1/True for real tokens (None = all real).
        """
        return self.velocity(noisy, timestep, *self.encode_context(features, feature_mask), state)

    def loss(self, features: torch.Tensor, state: torch.Tensor | None,
             chunk_normalized: torch.Tensor, feature_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching training loss: MSE between predicted and true velocity.

        ``sigma ~ U(0, 1)`` per sample, ``x = (1 - sigma) * chunk + sigma * noise``,
        target ``noise - chunk``. Inputs as in :meth:`forward`; ``chunk_normalized`` is
        [B, H, D] in normalized units. Returns a scalar.
        """
        x0 = chunk_normalized.to(self.pos.dtype)
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        sigma = torch.rand((b,), generator=generator, device=x0.device, dtype=x0.dtype)
        s = sigma[:, None, None]
        noisy = (1 - s) * x0 + s * noise
        pred = self(noisy, sigma * self.cfg.num_train_timesteps, features, state, feature_mask)
        return torch.mean((pred.float() - (noise - x0).float()) ** 2)

    def compile_sampler(self, **kwargs) -> None:
        """``torch.compile`` the velocity network (:meth:`velocity`) used by :meth:`sample`.

        kwargs go to ``torch.compile``; ``mode="reduce-overhead"`` gives CUDA graphs on GPU.
        """
        self._compiled = torch.compile(self.velocity, **kwargs)

    def schedule(self, num_steps: int | None = None, device=None):
        """``(timesteps [N], sigmas [N + 1])`` of the scheduler's ``num_steps`` Euler steps.

        Computed once per (steps, device): ``set_timesteps`` runs numpy on the host.
        """
        num_steps = num_steps or self.cfg.num_steps
        device = torch.device(device or self.pos.device)
        key = (num_steps, device)
        if key not in self._schedules:
            self.scheduler.set_timesteps(num_steps, device=device)
            self._schedules[key] = (self.scheduler.timesteps.clone(),
                                    self.scheduler.sigmas.clone())
        return self._schedules[key]

    def denoise(self, noise: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None,
                state: torch.Tensor | None, timesteps: torch.Tensor, sigmas: torch.Tensor,
                velocity=None) -> torch.Tensor:
        """The Euler loop from ``noise`` over a :meth:`schedule` (float32 [B, H, D]).

        The scheduler's ``step`` written out (``x + (sigma_next - sigma) * v``, the same float
        operations): tensors and a loop of fixed length only, so ``torch.compile`` unrolls it
        into one graph. ``context``/``bias``: :meth:`encode_context`. ``velocity``: the network
        to call (default :meth:`velocity`).
        """
        velocity = velocity or self.velocity
        x, b = noise.float(), noise.shape[0]
        for i in range(len(timesteps)):
            v = velocity(x, timesteps[i].expand(b), context, bias, state).float()
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x

    @torch.no_grad()
    def sample(self, features: torch.Tensor, state: torch.Tensor | None = None,
               feature_mask: torch.Tensor | None = None, num_steps: int | None = None,
               generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Integrate the flow from noise to a normalized chunk [B, H, D] (float32).

        ``num_steps`` defaults to ``cfg.num_steps``. No host-device synchronisation happens in
        the loop (the schedule is computed once, see :meth:`denoise`).
        """
        b, device = features.shape[0], features.device
        x = noise if noise is not None else torch.randn(
            (b, self.horizon, self.action_dim), generator=generator, device=device)
        timesteps, sigmas = self.schedule(num_steps, device)
        context, bias = self.encode_context(features, feature_mask)   # once for every step
        return self.denoise(x, context, bias, state, timesteps, sigmas, self._compiled)
