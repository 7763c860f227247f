"""Analytic denoisers whose optimal outputs are known in closed form.

They stand in for a perfectly trained network, so the samplers and bounds can be checked
against answers worked out by hand.
"""

from __future__ import annotations

import torch

from models.diffusion.gaussian import GaussianDiffusion


class PointMassDenoiser:
    """The optimal eps-predictor when the data is a single image x*:
    eps(x_t, t) = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t), plus an optional bias that
    makes it imperfect (so that the denoising terms are non-zero)."""

    def __init__(self, diffusion: GaussianDiffusion, x_star: torch.Tensor, bias: float = 0.0):
        self.diffusion = diffusion
        self.x_star = x_star  # (C, H, W)
        self.bias = bias
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        d = self.diffusion
        sqrt_abar = d.extract(d.sqrt_alphas_cumprod, t, x_t)
        sqrt_one_minus = d.extract(d.sqrt_one_minus_alphas_cumprod, t, x_t)
        eps = (x_t - sqrt_abar * self.x_star) / sqrt_one_minus
        # A bias that varies with t, like a real network's error.
        return eps + self.bias * torch.cos(t.to(x_t.dtype) / 50.0).reshape(-1, 1, 1, 1)


class GaussianDataDenoiser:
    """The optimal eps-predictor (the posterior mean E[eps | x_t]) for data x_0 ~ N(m, s^2 I):
    E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) m) / (abar s^2 + 1 - abar)."""

    def __init__(self, diffusion: GaussianDiffusion, mean: float, std: float):
        self.diffusion = diffusion
        self.mean = mean
        self.std = std

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.diffusion.extract(self.diffusion.alphas_cumprod, t, x_t)
        return (
            torch.sqrt(1 - abar)
            * (x_t - torch.sqrt(abar) * self.mean)
            / (abar * self.std**2 + 1 - abar)
        )
