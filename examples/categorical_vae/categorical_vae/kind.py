"""The categorical VAE as an elbo-serve model kind (interface version 1).

p(x|z) gives each 8-bit pixel value its own probability: a softmax over the 256 values of every
dimension (the output layer of PixelRNN and PixelCNN, van den Oord et al. 2016, arXiv
1601.06759, Sec. 2.2). It is a proper distribution on the 8-bit grid, so -ELBO is a codelength
in bits/dim, comparable with the bundled VAE's discretized-logistic decoder and the DDPM's
discrete decoder; with uniform logits it is exactly 8 bits/dim.

The network is elbo-serve's VAE (encoder, latent, decoder stack) with another pixel head, and
the kind is elbo-serve's VAE kind with another config and network: the bounds (-ELBO, IWAE),
samplers, latents, costs and training loss read only ``negative_elbo``, ``iwae_bound``,
``encode`` and ``decode(z)``'s distribution (``log_prob_nats``, ``mean_image``, ``sample``),
which this module provides for the new likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.core.config import ConfigError, VAEConfig
from models.core.noise import Generators, rand_rows
from models.core.pixels import pixels_to_signed_unit, signed_unit_to_pixels
from models.nn.batch_invariance import in_fixed_chunks
from models.nn.layers import group_norm
from models.vae.kind import VAEKind
from models.vae.model import VAE

PIXEL_VALUES = 256


@dataclass(frozen=True)
class CategoricalVAEConfig:
    """A convolutional VAE (elbo-serve's encoder and decoder stacks) with a 256-way softmax
    per pixel as p(x|z)."""

    image_channels: int = 1
    image_size: int = 28
    latent_dim: int = 16
    channels: tuple[int, ...] = (16, 32)
    num_res_blocks: int = 1

    def __post_init__(self) -> None:
        self.network_config()  # the VAE's checks of the image shape and levels

    def network_config(self) -> VAEConfig:
        """The VAE config of the encoder and decoder stacks (its mixture head is replaced)."""
        try:
            return VAEConfig(
                self.image_channels,
                self.image_size,
                self.latent_dim,
                tuple(self.channels),
                self.num_res_blocks,
            )
        except ConfigError as error:
            raise ConfigError(f"CategoricalVAEConfig: {error}") from error


@dataclass(frozen=True)
class PixelCategorical:
    """An independent 256-way categorical per pixel: ``logits`` (B, 256, C, H, W)."""

    logits: torch.Tensor

    def log_prob_nats(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) per pixel: x (B, C, H, W) on the 8-bit grid in [-1, 1] -> (B, C, H, W)
        nats, the log-softmax of the logit of each pixel's value."""
        values = signed_unit_to_pixels(x).long().unsqueeze(1)  # (B, 1, C, H, W) in 0..255
        return torch.gather(F.log_softmax(self.logits, dim=1), 1, values).squeeze(1)

    def mean_image(self) -> torch.Tensor:
        """E[x] per pixel in [-1, 1]: sum over values v of P(v) (2 v / 255 - 1); (B, C, H, W)."""
        grid = torch.linspace(-1.0, 1.0, PIXEL_VALUES).to(self.logits)
        probs = torch.softmax(self.logits, dim=1)
        return torch.einsum("bkchw,k->bchw", probs, grid)

    def sample(self, generator: Generators) -> torch.Tensor:
        """x ~ P on the 8-bit grid in [-1, 1], (B, C, H, W), by Gumbel-max (row i with
        generator i when a list is given)."""
        u = rand_rows(self.logits.shape, generator, self.logits.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-10)))
        values = torch.argmax(self.logits + gumbel, dim=1)  # (B, C, H, W)
        return pixels_to_signed_unit(values.to(torch.uint8))


class CategoricalVAE(VAE):
    """elbo-serve's VAE with the pixel head emitting 256 logits per channel."""

    def __init__(self, config: CategoricalVAEConfig) -> None:
        super().__init__(config.network_config())
        self.config = config  # type: ignore[assignment]  # the checkpoint saves this config
        width = config.channels[0]
        self.to_pixel_params = nn.Sequential(
            group_norm(width), nn.SiLU(), nn.Conv2d(width, PIXEL_VALUES * config.image_channels, 1)
        )

    def decode(self, z: torch.Tensor, chunk_rows: int | None = None) -> PixelCategorical:
        """p(x|z): z (B, Z) -> a categorical over the 256 values of each of (B, C, H, W)."""
        logits = in_fixed_chunks(self._pixel_params, chunk_rows, z)  # (B, 256 C, H, W)
        b, _, height, width = logits.shape
        logits = logits.reshape(b, self.config.image_channels, PIXEL_VALUES, height, width)
        return PixelCategorical(logits.transpose(1, 2))


class CategoricalVAEKind(VAEKind):
    """The VAE kind's bounds, samplers, latents and costs over the categorical decoder."""

    interface_version = 1  # models.kinds.INTERFACE_VERSION this kind was written against
    name = "categorical_vae"
    config_class = CategoricalVAEConfig
    model_class = CategoricalVAE


def uniform_bits_per_dim() -> float:
    """The codelength of uniform logits: log2(256) = 8 bits per dimension."""
    return math.log2(PIXEL_VALUES)
