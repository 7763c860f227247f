"""Per-image bounds in bits/dim for many uint8 images at once, chunked, one function per method.

These are the anomaly scores (a higher bound is a longer codelength: more anomalous). Each takes
uint8 images (N, C, H, W) on the CPU and returns float64 (N,) on the CPU; the chunk size bounds
memory and the generator makes the stochastic bounds reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.core.pixels import pixels_to_signed_unit
from models.diffusion.bound import vlb_exact, vlb_monte_carlo
from models.diffusion.ddpm import DDPM
from models.vae.model import VAE

BoundFn = Callable[[torch.Tensor], torch.Tensor]  # x (B, C, H, W) in [-1, 1] -> (B,) bits/dim
ProgressFn = Callable[[int], None]


@torch.no_grad()
def in_chunks(
    bound: BoundFn,
    images_uint8: torch.Tensor,
    device: torch.device,
    chunk_size: int,
    on_chunk: ProgressFn | None = None,
) -> torch.Tensor:
    """Apply ``bound`` to chunks of at most chunk_size images: (N,) float64 on the CPU."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    results = []
    for chunk in images_uint8.split(chunk_size):
        results.append(bound(pixels_to_signed_unit(chunk).to(device)).double().cpu())
        if on_chunk is not None:
            on_chunk(chunk.shape[0])
    return torch.cat(results) if results else torch.zeros(0, dtype=torch.float64)


def elbo_bits_per_dim(vae: VAE, generator: torch.Generator) -> BoundFn:
    """-ELBO with one posterior sample (Kingma & Welling 2013, Eq. 3)."""
    return lambda x: vae.negative_elbo(x, generator).total_bits_per_dim


def iwae_bits_per_dim(vae: VAE, k: int, generator: torch.Generator) -> BoundFn:
    """The k-sample importance-weighted bound (Burda et al. 2015, Eq. 8)."""
    return lambda x: vae.iwae_bound(x, k, generator).total_bits_per_dim


def vlb_exact_bits_per_dim(ddpm: DDPM, generator: torch.Generator) -> BoundFn:
    """All T terms of the diffusion bound (Ho et al. 2020, Eq. 5)."""
    return lambda x: vlb_exact(ddpm.diffusion, ddpm, x, generator).total_bits_per_dim


def vlb_mc_bits_per_dim(ddpm: DDPM, k: int, generator: torch.Generator) -> BoundFn:
    """Stratified k-timestep Monte-Carlo estimate of the same bound (unbiased)."""
    return lambda x: vlb_monte_carlo(ddpm.diffusion, ddpm, x, k, generator).total_bits_per_dim
