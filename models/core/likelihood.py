"""Log-likelihoods, KL divergences and unit conversion, shared by the VAE and the DDPM.

Conventions:
- Images live on the 8-bit grid mapped to [-1, 1]: x = k / 127.5 - 1 for k in 0..255, so
  neighbouring values are 2/255 apart and each value owns the bin [x - 1/255, x + 1/255]; the
  two end bins extend to -inf and +inf so that the 256 probabilities sum to exactly 1.
- Every function returns element-wise values in nats; callers sum over dimensions.
- :func:`nats_to_bits_per_dim` is the one place where nats become bits per dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.core.noise import Generators, rand_rows
from models.core.pixels import pixels_to_signed_unit, signed_unit_to_pixels

# Floor on a bin's probability mass: keeps log() finite when a bin lies far in a tail.
_MIN_MASS = 1e-30


def nats_to_bits_per_dim(nats: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Convert a codelength summed over ``num_dims`` dimensions from nats to bits per dim."""
    return nats / (num_dims * math.log(2.0))


def normal_kl_nats(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) element-wise, in nats.

    Closed form for diagonal Gaussians (Kingma & Welling 2013, Appendix B); all arguments
    broadcast against each other.
    """
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def standard_normal_kl_nats(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) element-wise, in nats."""
    zeros = torch.zeros_like(mean)
    return normal_kl_nats(mean, logvar, zeros, zeros)


def gaussian_log_density_nats(
    x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """log N(x; mean, exp(logvar)) element-wise, in nats (a continuous density)."""
    return -0.5 * (math.log(2.0 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def discretized_gaussian_log_likelihood_nats(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) for x on the 8-bit grid in [-1, 1] under a discretized Gaussian, element-wise.

    The probability of a value is the Gaussian mass of its bin (Ho et al. 2020, Eq. 13).
    ``log_scale`` is the log standard deviation. Shapes: all broadcast, typically (B, C, H, W).
    """
    return _log_discretized_mass(x, mean, torch.exp(-log_scale), torch.special.log_ndtr)


def discretized_logistic_log_likelihood_nats(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) for x on the 8-bit grid under a discretized logistic (Salimans et al. 2017)."""
    return _log_discretized_mass(x, mean, torch.exp(-log_scale), F.logsigmoid)


def _log_discretized_mass(
    x: torch.Tensor,
    mean: torch.Tensor,
    inv_scale: torch.Tensor,
    log_cdf: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """log of the mass of x's bin for a symmetric location-scale law with log-CDF ``log_cdf``.

    Bin edges come from the integer pixel value k, (k -/+ 0.5) / 127.5 - 1, so that the upper
    edge of bin k and the lower edge of bin k + 1 are the same float and the 256 masses tile
    the line exactly even in float32. Each branch of the final ``where`` sees benign inputs
    where it is not selected, so no unused branch can put inf or NaN into the gradient.
    """
    k = torch.round((x + 1.0) * 127.5)
    is_first, is_last = k <= 0, k >= 255
    is_interior = ~(is_first | is_last)
    lower = ((k - 0.5) / 127.5 - 1.0 - mean) * inv_scale
    upper = ((k + 0.5) / 127.5 - 1.0 - mean) * inv_scale
    zeros = torch.zeros_like(lower)
    log_mass_first_bin = log_cdf(torch.where(is_first, upper, zeros))  # (-inf, upper]
    log_mass_last_bin = log_cdf(torch.where(is_last, -lower, zeros))  # [lower, inf): symmetry
    log_mass_interior = _log_interval_mass(
        torch.where(is_interior, lower, zeros - 1.0),
        torch.where(is_interior, upper, zeros + 1.0),
        log_cdf,
    )
    return torch.where(
        is_first, log_mass_first_bin, torch.where(is_last, log_mass_last_bin, log_mass_interior)
    )


def _log_interval_mass(
    lower: torch.Tensor, upper: torch.Tensor, log_cdf: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """log(F(upper) - F(lower)) computed without cancellation in either tail.

    For an interval in the upper half F(u) - F(l) = F(-l) - F(-u), which keeps both CDF values
    small; then log(F(b) - F(a)) = log F(b) + log(1 - exp(log F(a) - log F(b))).
    """
    in_upper_half = (lower + upper) > 0
    a = torch.where(in_upper_half, -upper, lower)
    b = torch.where(in_upper_half, -lower, upper)
    log_cdf_b = log_cdf(b)
    log_ratio = log_cdf(a) - log_cdf_b
    return log_cdf_b + torch.log(torch.clamp(-torch.expm1(log_ratio), min=_MIN_MASS))


@dataclass(frozen=True)
class DiscretizedLogisticMixture:
    """Per-pixel mixture of K discretized logistics over the 256 values of each pixel.

    Shapes: ``logit_weights``, ``means``, ``log_scales`` are (B, K, C, H, W).
    """

    logit_weights: torch.Tensor
    means: torch.Tensor
    log_scales: torch.Tensor

    def log_prob_nats(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) per pixel, (B, C, H, W) -> (B, C, H, W), in nats."""
        per_component = discretized_logistic_log_likelihood_nats(
            x.unsqueeze(1), self.means, self.log_scales
        )
        log_weights = torch.log_softmax(self.logit_weights, dim=1)
        return torch.logsumexp(log_weights + per_component, dim=1)

    def mean_image(self) -> torch.Tensor:
        """Mixture mean of the continuous logistics, clipped to [-1, 1]: (B, C, H, W).

        Differs from the discretized law's mean only through the mass piled at the end bins.
        """
        weights = torch.softmax(self.logit_weights, dim=1)
        return (weights * self.means).sum(dim=1).clamp(-1.0, 1.0)

    def sample(self, generator: Generators) -> torch.Tensor:
        """Draw x on the 8-bit grid in [-1, 1]: (B, C, H, W)."""
        shape = self.means.shape  # (B, K, C, H, W)
        device = self.means.device
        component = _sample_categorical(self.logit_weights, generator)  # (B, 1, C, H, W)
        mean = torch.gather(self.means, 1, component).squeeze(1)
        log_scale = torch.gather(self.log_scales, 1, component).squeeze(1)
        u = rand_rows((shape[0], *shape[2:]), generator, device).clamp(1e-6, 1.0 - 1e-6)
        x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return quantize_to_grid(x)


def _sample_categorical(logits: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Gumbel-max draw of a component index along dim 1: (B, K, ...) -> (B, 1, ...)."""
    u = rand_rows(logits.shape, generator, logits.device).clamp(1e-10, 1.0 - 1e-10)
    gumbel = -torch.log(-torch.log(u))
    return torch.argmax(logits + gumbel, dim=1, keepdim=True)


def quantize_to_grid(x: torch.Tensor) -> torch.Tensor:
    """Round x to the nearest of the 256 8-bit values in [-1, 1] (clipping outside)."""
    return pixels_to_signed_unit(signed_unit_to_pixels(x))


def log_mean_exp_over_chunks(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """log((1/k) sum_i exp(w_i)) over chunks of log-weights (n_j, B) with k = sum_j n_j: (B,).

    A running log-sum-exp, so k log-weights never need to be in memory at once (the IWAE bound
    of Burda et al. 2015 with large k).
    """
    running = RunningLogMeanExp()
    for chunk in chunks:
        running.add(chunk)
    return running.value()


class RunningLogMeanExp:
    """:func:`log_mean_exp_over_chunks` one chunk at a time, for loops that pause between
    chunks (:meth:`models.vae.model.VAE.iwae_bound_progressive`)."""

    def __init__(self) -> None:
        self._log_sum: torch.Tensor | None = None
        self._count = 0

    def add(self, chunk: torch.Tensor) -> None:
        """Log-weights (n_j, B)."""
        chunk_lse = torch.logsumexp(chunk, dim=0)
        self._log_sum = (
            chunk_lse if self._log_sum is None else torch.logaddexp(self._log_sum, chunk_lse)
        )
        self._count += chunk.shape[0]

    def value(self) -> torch.Tensor:
        """log of the mean of every exp(w_i) added so far: (B,)."""
        if self._log_sum is None:
            raise ValueError("no log-weights given")
        return self._log_sum - math.log(self._count)
