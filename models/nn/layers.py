"""Building blocks shared by the VAE and the UNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups, as many as divide ``channels``."""
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so a residual branch starts as the identity."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResidualBlock(nn.Module):
    """GN-SiLU-conv twice, with an optional per-channel shift from an embedding (B, E).

    (B, in_channels, H, W) -> (B, out_channels, H, W); Ho et al. 2020 Appendix B.
    """

    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_proj = RowwiseLinear(emb_dim, out_channels) if emb_dim is not None else None
        self.out_layers = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this block was built with an embedding; pass emb")
            h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 convolution: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class RowwiseLinear(nn.Linear):
    """nn.Linear whose output for a row depends on that row alone, bit for bit.

    A plain GEMM picks its kernel (and so its summation order) by the number of rows, so the
    same input can come out a few ulps apart alone and inside a batch, and after 50 denoising
    steps that flips pixels. The service promises byte-identical images for a seed however
    requests are batched; a batched product of (1, in) rows keeps one order for every row.
    Same parameters as nn.Linear, so checkpoints are unchanged. x (..., in) -> (..., out).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 1, self.in_features)  # (N, 1, in)
        weight = self.weight.t().expand(rows.shape[0], -1, -1)  # (N, in, out), a view
        out = torch.bmm(rows, weight).reshape(*x.shape[:-1], self.out_features)
        return out + self.bias if self.bias is not None else out


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels, residual: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))  # (B, 3C, HW)
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        # (B, heads, HW, C/heads) for scaled_dot_product_attention
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        out = out.transpose(-1, -2).reshape(b, c, h * w)
        return x + self.proj(out).reshape(b, c, h, w)
