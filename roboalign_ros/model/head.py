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
        b, dtype = noisy.shape[0], self.pos.dtype
        tokens = self.action_in(noisy.to(dtype))
        if self.state_in is not None:
            if state is None:
                raise ValueError("state is required: head was built with state_dim > 0")
            tokens = torch.cat([self.state_in(state.to(dtype))[:, None], tokens], dim=1)
        tokens = tokens + self.pos
        context = self.context_in(features.to(dtype))
        bias = None
        if feature_mask is not None:
            bias = ((1 - feature_mask.to(dtype)) * -10000.0)[:, None]  # [B, 1, T]
        t6, t_emb = self.time(timestep.reshape(-1).expand(b), batch_size=b, hidden_dtype=dtype)
        for block in self.blocks:
            tokens = block(tokens, encoder_hidden_states=context, encoder_attention_mask=bias,
                           timestep=t6)
        shift, scale = (self.out_shift_scale[None] + t_emb[:, None]).chunk(2, dim=1)
        tokens = self.norm_out(tokens) * (1 + scale) + shift
        return self.action_out(tokens[:, -self.horizon:])

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
        """``torch.compile`` the velocity network used by :meth:`sample`.

        kwargs go to ``torch.compile``; ``mode="reduce-overhead"`` gives CUDA graphs on GPU.
        """
        self._compiled = torch.compile(self.forward, **kwargs)

    @torch.no_grad()
    def sample(self, features: torch.Tensor, state: torch.Tensor | None = None,
               feature_mask: torch.Tensor | None = None, num_steps: int | None = None,
               generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Integrate the flow from noise to a normalized chunk [B, H, D] (float32).

        ``num_steps`` defaults to ``cfg.num_steps``. No host-device synchronisation happens in
        the loop (the scheduler's step index is pre-set).
        """
        b, device = features.shape[0], features.device
        x = noise if noise is not None else torch.randn(
            (b, self.horizon, self.action_dim), generator=generator, device=device)
        x = x.float()
        scheduler = self.scheduler
        scheduler.set_timesteps(num_steps or self.cfg.num_steps, device=device)
        scheduler.set_begin_index(0)
        fn = self._compiled or self.forward
        context = features.to(self.pos.dtype)
        for t in scheduler.timesteps:
            v = fn(x, t.expand(b), context, state, feature_mask)
            x = scheduler.step(v.float(), t, x, return_dict=False)[0]
        return x
