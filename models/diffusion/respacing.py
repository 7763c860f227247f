"""Respaced chains: the diffusion restricted to a subsequence of its timesteps (Nichol &
Dhariwal 2021, Sec. 4), so that ancestral sampling can take fewer steps than it was trained
with and still use the learned variances."""

from __future__ import annotations

import torch

from models.diffusion.gaussian import GaussianDiffusion
from models.diffusion.timesteps import spaced_timesteps

__all__ = ["respaced", "spaced_timesteps"]


def respaced(diffusion: GaussianDiffusion, timesteps: torch.Tensor) -> GaussianDiffusion:
    """The chain over the increasing subsequence S = ``timesteps`` (K,) of the original.

    Nichol & Dhariwal 2021, Sec. 4: alpha-bar'_i = alpha-bar_{S_i} and
    beta'_i = 1 - alpha-bar_{S_i} / alpha-bar_{S_{i-1}} (alpha-bar_{S_{-1}} = 1), so the
    forward marginals q(x_{S_i} | x_0) are unchanged, and the posterior variances beta-tilde'
    and the learned interpolation between beta-tilde' and beta' (their Eq. 15) follow from
    these betas. Index i of the new chain is the network's timestep S_i.
    """
    alphas_cumprod = diffusion.alphas_cumprod.detach().to("cpu", torch.float64)[timesteps.cpu()]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    betas = 1.0 - alphas_cumprod / previous
    chain = GaussianDiffusion(
        diffusion.config, betas=betas, clip_range=diffusion.clip_range, ddim=diffusion.ddim
    )
    return chain.to(diffusion.betas.device)
