"""Convolutional VAE (Kingma & Welling 2013) with a discrete decoder, its ELBO and IWAE bound.

- q(z|x) = N(mean(x), diag(exp(logvar(x)))), p(z) = N(0, I).
- p(x|z): per pixel a mixture of discretized logistics over the 256 pixel values
  (Salimans et al. 2017), so -ELBO is a true codelength for 8-bit images, comparable with the
  DDPM's variational bound (Ho et al. 2020, Sec. 3.3).

All bounds are returned as codelengths (negative log-likelihood bounds, lower is better),
summed over the D = C*H*W dimensions of each image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.core.config import VAEConfig
from models.core.likelihood import (
    DiscretizedLogisticMixture,
    RunningLogMeanExp,
    gaussian_log_density_nats,
    nats_to_bits_per_dim,
    standard_normal_kl_nats,
)
from models.core.noise import Generators, randn_rows
from models.core.progressive import Progressive, run_to_end
from models.nn.batch_invariance import in_fixed_chunks
from models.nn.layers import Downsample, ResidualBlock, RowwiseLinear, Upsample, group_norm

# Salimans et al. 2017 floor on the logistic log-scale: keeps bin masses from vanishing.
_MIN_LOG_SCALE = -7.0


@dataclass(frozen=True)
class GaussianPosterior:
    """q(z|x) for a batch: ``mean`` and ``logvar`` are (B, Z)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def rsample(self, generator: Generators, num_samples: int = 1) -> torch.Tensor:
        """Reparameterised draws z = mean + sigma * eps: (num_samples, B, Z)."""
        b, z = self.mean.shape
        # Row groups follow the images, so a per-image generator list stays per image.
        eps = torch.stack(
            [randn_rows((b, z), generator, self.mean.device) for _ in range(num_samples)]
        )
        return self.mean + torch.exp(0.5 * self.logvar) * eps


@dataclass(frozen=True)
class NegativeELBO:
    """-ELBO per image = reconstruction + KL (Kingma & Welling 2013, Eq. 10), in nats.

    ``reconstruction_nats`` is -E_q[log p(x|z)] (Monte-Carlo over z ~ q(z|x)), ``kl_nats`` is
    KL(q(z|x) || p(z)) in closed form; both (B,), summed over dimensions.
    """

    reconstruction_nats: torch.Tensor
    kl_nats: torch.Tensor
    num_dims: int
    # -ELBO per dimension (B, C, H, W), summing to total_nats: when asked for (see negative_elbo).
    total_nats_per_dim: torch.Tensor | None = None

    @property
    def total_nats(self) -> torch.Tensor:
        return self.reconstruction_nats + self.kl_nats

    @property
    def total_bits_per_dim(self) -> torch.Tensor:
        return nats_to_bits_per_dim(self.total_nats, self.num_dims)


@dataclass(frozen=True)
class IWAEBound:
    """-log of the k-sample importance-weighted bound per image (Burda et al. 2015, Eq. 8)."""

    total_nats: torch.Tensor  # (B,)
    num_dims: int
    k: int

    @property
    def total_bits_per_dim(self) -> torch.Tensor:
        return nats_to_bits_per_dim(self.total_nats, self.num_dims)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        bottom = config.image_size // 2 ** (len(c) - 1)
        self._bottom_shape = (c[-1], bottom, bottom)
        flat = c[-1] * bottom * bottom
        self.encoder = _ConvStack(config.image_channels, c, config.num_res_blocks, downsample=True)
        self.to_posterior = RowwiseLinear(flat, 2 * config.latent_dim)
        self.from_latent = RowwiseLinear(config.latent_dim, flat)
        self.decoder = _ConvStack(
            c[-1], tuple(reversed(c)), config.num_res_blocks, downsample=False
        )
        # Three parameters (logit weight, mean, log-scale) per mixture component per channel.
        self.to_pixel_params = nn.Sequential(
            group_norm(c[0]),
            nn.SiLU(),
            nn.Conv2d(c[0], 3 * config.num_mixtures * config.image_channels, 3, padding=1),
        )

    @property
    def num_dims(self) -> int:
        return self.config.image_channels * self.config.image_size**2

    def encode(self, x: torch.Tensor) -> GaussianPosterior:
        """q(z|x): x (B, C, H, W) in [-1, 1] -> posterior with mean, logvar (B, Z)."""
        self._check_images(x)
        h = self.encoder(x).flatten(1)
        mean, logvar = self.to_posterior(h).chunk(2, dim=1)
        return GaussianPosterior(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor, chunk_rows: int | None = None) -> DiscretizedLogisticMixture:
        """p(x|z): z (B, Z) -> per-pixel discretized logistic mixture over (B, C, H, W).

        ``chunk_rows`` runs the network in fixed-size chunks so that each row's distribution
        is bit-identical in any batch (:func:`models.nn.batch_invariance.in_fixed_chunks`).
        """
        params = in_fixed_chunks(self._pixel_params, chunk_rows, z)  # (B, 3*K*C, H, W)
        b, _, height, width = params.shape
        params = params.reshape(
            b, 3, self.config.num_mixtures, self.config.image_channels, height, width
        )
        logit_weights, means, log_scales = params.unbind(1)  # each (B, K, C, H, W)
        return DiscretizedLogisticMixture(
            logit_weights, means, log_scales.clamp(min=_MIN_LOG_SCALE)
        )

    def _pixel_params(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).reshape(z.shape[0], *self._bottom_shape)
        return self.to_pixel_params(self.decoder(h))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: Generators,
        temperature: float = 1.0,
        sample_pixels: bool = False,
        chunk_rows: int | None = None,
    ) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1] from z ~ N(0, temperature^2 I).

        With ``sample_pixels`` the pixels are drawn from p(x|z); otherwise each image is the
        decoder's mean, which is what people usually mean by a VAE sample. ``chunk_rows``: see
        :meth:`decode`.
        """
        device = next(self.parameters()).device
        z = temperature * randn_rows((n, self.config.latent_dim), generator, device)
        decoded = self.decode(z, chunk_rows)
        return decoded.sample(generator) if sample_pixels else decoded.mean_image()

    def negative_elbo(
        self, x: torch.Tensor, generator: Generators, num_samples: int = 1, per_dim: bool = False
    ) -> NegativeELBO:
        """-ELBO of x (B, C, H, W) on the 8-bit grid in [-1, 1], term by term, in nats.

        The reconstruction term averages ``num_samples`` draws z ~ q(z|x). With ``per_dim``
        the bound is also given per dimension, float64 (B, C, H, W): -log p(x_i | z) of each
        pixel value (the decoder factorises over dimensions), plus KL / D in every dimension.
        The KL belongs to the latent code, to no pixel in particular, so it is spread evenly;
        being the same in all D dimensions of an image, it shifts a map without reshaping it.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        posterior = self.encode(x)
        z = posterior.rsample(generator, num_samples)  # (S, B, Z)
        log_px_z_per_dim = self._log_likelihood_nats_per_dim(x, z)  # (S, B, C, H, W)
        log_px_z = log_px_z_per_dim.flatten(2).sum(dim=-1)  # (S, B)
        kl = standard_normal_kl_nats(posterior.mean, posterior.logvar).sum(dim=1)
        total_per_dim = None
        if per_dim:
            reconstruction_per_dim = -log_px_z_per_dim.double().mean(dim=0)  # (B, C, H, W)
            kl_per_dim = kl.double() / self.num_dims  # (B,)
            total_per_dim = reconstruction_per_dim + kl_per_dim.reshape(-1, 1, 1, 1)
        return NegativeELBO(-log_px_z.mean(dim=0), kl, self.num_dims, total_per_dim)

    def iwae_bound(
        self, x: torch.Tensor, k: int, generator: Generators, max_batch: int = 2048
    ) -> IWAEBound:
        """-log (1/k sum_i p(x, z_i) / q(z_i|x)), z_i ~ q(z|x) (Burda et al. 2015, Eq. 8).

        The k samples are decoded in chunks of about ``max_batch`` images per call (at least one
        sample of every image in the batch), so memory stays bounded for any k, k = 5000
        included; split very large batches before calling.
        """
        return run_to_end(self.iwae_bound_progressive(x, k, generator, max_batch))

    @torch.no_grad()
    def iwae_bound_progressive(
        self, x: torch.Tensor, k: int, generator: Generators, max_batch: int = 2048
    ) -> Progressive[IWAEBound]:
        """:meth:`iwae_bound`, yielding (samples done, k) after every decoder call."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        posterior = self.encode(x)
        per_chunk = max(1, max_batch // x.shape[0])
        log_mean_weight = RunningLogMeanExp()
        for start in range(0, k, per_chunk):
            n = min(per_chunk, k - start)
            log_mean_weight.add(self._log_importance_weights(x, posterior, n, generator))
            yield start + n, k
        return IWAEBound(-log_mean_weight.value(), self.num_dims, k)

    def _log_importance_weights(
        self, x: torch.Tensor, posterior: GaussianPosterior, n: int, generator: Generators
    ) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for n draws z ~ q(z|x): (n, B)."""
        z = posterior.rsample(generator, n)  # (n, B, Z)
        log_prior = gaussian_log_density_nats(z, torch.zeros_like(z), torch.zeros_like(z))
        log_q = gaussian_log_density_nats(z, posterior.mean, posterior.logvar)
        return self._log_likelihood_nats(x, z) + (log_prior - log_q).sum(dim=-1)

    def _log_likelihood_nats(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, for z (S, B, Z): (S, B)."""
        return self._log_likelihood_nats_per_dim(x, z).flatten(2).sum(dim=-1)

    def _log_likelihood_nats_per_dim(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x_i|z) of every dimension, for z (S, B, Z): (S, B, C, H, W)."""
        s, b, _ = z.shape
        decoded = self.decode(z.reshape(s * b, -1))
        x_repeated = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        return decoded.log_prob_nats(x_repeated).reshape(s, *x.shape)

    def _check_images(self, x: torch.Tensor) -> None:
        c, size = self.config.image_channels, self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, size, size):
            raise ValueError(
                f"expected images of shape (B, {c}, {size}, {size}), got {tuple(x.shape)}"
            )


class _ConvStack(nn.Module):
    """Residual levels with a resolution change between them.

    ``downsample``: (B, in, H, W) -> (B, channels[-1], H/2^(L-1), W/2^(L-1));
    otherwise the mirror image, upsampling by the same factor.
    """

    def __init__(
        self, in_channels: int, channels: tuple[int, ...], num_res_blocks: int, downsample: bool
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        for level, width in enumerate(channels):
            layers += [ResidualBlock(width, width) for _ in range(num_res_blocks)]
            if level + 1 < len(channels):
                resample = Downsample if downsample else Upsample
                layers.append(resample(width, channels[level + 1]))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
