"""Epsilon-prediction UNet (Ho et al. 2020, Appendix B; Nichol & Dhariwal 2021, Sec. 3.1).

(x_t (B, C, H, W), t (B,)) -> (B, C, H, W) predicted noise, or (B, 2C, H, W) when the
diffusion learns its variances: the second half is the interpolation value v of
Nichol & Dhariwal Eq. 15, in [-1, 1] after training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.core.config import UNetConfig
from models.nn.layers import (
    Downsample,
    ResidualBlock,
    RowwiseLinear,
    SelfAttention,
    Upsample,
    group_norm,
)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, Sec. 3.5): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=1)
    return embedding


class _Stage(nn.Module):
    """A residual block, followed by self-attention at the chosen resolutions."""

    def __init__(self, block: ResidualBlock, attention: SelfAttention | None) -> None:
        super().__init__()
        self.block = block
        self.attention = attention

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block(x, emb)
        return self.attention(h) if self.attention is not None else h


class UNet(nn.Module):
    def __init__(self, config: UNetConfig, out_channels: int) -> None:
        super().__init__()
        self.config = config
        base, emb_dim = config.base_channels, 4 * config.base_channels
        self.time_mlp = nn.Sequential(
            RowwiseLinear(base, emb_dim), nn.SiLU(), RowwiseLinear(emb_dim, emb_dim)
        )
        self.conv_in = nn.Conv2d(config.image_channels, base, 3, padding=1)

        def stage(cin: int, cout: int, resolution: int) -> _Stage:
            attend = resolution in config.attention_resolutions
            return _Stage(
                ResidualBlock(cin, cout, emb_dim, config.dropout),
                SelfAttention(cout, config.num_heads) if attend else None,
            )

        widths = [base * m for m in config.channel_mults]
        resolution = config.image_size
        skip_widths = [base]
        self.down_stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        width = base
        for level, level_width in enumerate(widths):
            stages = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                stages.append(stage(width, level_width, resolution))
                width = level_width
                skip_widths.append(width)
            self.down_stages.append(stages)
            is_last = level == len(widths) - 1
            self.downsamples.append(nn.Identity() if is_last else Downsample(width, width))
            if not is_last:
                skip_widths.append(width)
                resolution //= 2

        self.middle = nn.ModuleList(
            [
                _Stage(
                    ResidualBlock(width, width, emb_dim, config.dropout),
                    SelfAttention(width, config.num_heads),
                ),
                _Stage(ResidualBlock(width, width, emb_dim, config.dropout), None),
            ]
        )

        self.up_stages = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level, level_width in reversed(list(enumerate(widths))):
            stages = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                stages.append(stage(width + skip_widths.pop(), level_width, resolution))
                width = level_width
            self.up_stages.append(stages)
            self.upsamples.append(nn.Identity() if level == 0 else Upsample(width, width))
            if level:
                resolution *= 2

        self.out = nn.Sequential(
            group_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B, C, H, W), t (B,) integer timesteps -> (B, out_channels, H, W)."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        h = self.conv_in(x)
        skips = [h]
        for stages, downsample in zip(self.down_stages, self.downsamples, strict=True):
            for stage in stages:
                h = stage(h, emb)
                skips.append(h)
            if not isinstance(downsample, nn.Identity):
                h = downsample(h)
                skips.append(h)
        for stage in self.middle:
            h = stage(h, emb)
        for stages, upsample in zip(self.up_stages, self.upsamples, strict=True):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb)
            h = upsample(h)
        return self.out(h)
