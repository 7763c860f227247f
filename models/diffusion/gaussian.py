"""Gaussian diffusion: schedules, forward process, posteriors, reverse model, VLB terms.

Notation follows Ho et al. 2020 (arXiv 2006.11239) and Nichol & Dhariwal 2021 (arXiv
2102.09672). Timesteps are 0-indexed as in their code: index t in 0..T-1 is the paper's
timestep t+1, so ``q_sample(x0, t)`` draws the paper's x_{t+1}, and index 0 is the
reconstruction step p(x_0 | x_1). Shapes: images (B, C, H, W), timesteps (B,), schedules (T,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.core.config import DiffusionConfig
from models.core.likelihood import (
    discretized_gaussian_log_likelihood_nats,
    nats_to_bits_per_dim,
    normal_kl_nats,
    standard_normal_kl_nats,
)
from models.diffusion.timesteps import DDIMTimesteps


def linear_beta_schedule(num_timesteps: int) -> torch.Tensor:
    """Ho et al. 2020 Sec. 4: beta from 1e-4 to 0.02 over T=1000, rescaled for other T. (T,)

    Clipped at 0.999 like the cosine schedule: for T <= 20 the rescaled end would reach 1.
    """
    scale = 1000.0 / num_timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    return betas.clamp(max=0.999)


def cosine_beta_schedule(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021 Eq. 17: alpha-bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2). (T,)"""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=0.999)


@dataclass(frozen=True)
class GaussianParams:
    """A diagonal Gaussian over images: mean, variance, log_variance broadcast to (B, C, H, W)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


@dataclass(frozen=True)
class ReverseStep:
    """p_theta(x_{t-1} | x_t) and the predictions it was built from, all (B, C, H, W)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    pred_eps: torch.Tensor


@dataclass(frozen=True)
class DiffusionLoss:
    """Per-image training losses (B,): ``loss`` = mse + lambda * T * vlb (L_hybrid)."""

    loss: torch.Tensor
    mse: torch.Tensor
    vlb_bits_per_dim: torch.Tensor


class GaussianDiffusion(nn.Module):
    """Schedule buffers and the closed-form maths of the forward and reverse processes.

    Holds no network: functions that need one take the raw network output (B, C or 2C, H, W).
    Buffers are float64 (precision of products near alpha-bar ~ 0) and derived from the
    config, so they are not saved in checkpoints.
    """

    def __init__(
        self,
        config: DiffusionConfig,
        betas: torch.Tensor | None = None,
        clip_range: float | None = 1.0,
        ddim: DDIMTimesteps | None = None,
    ) -> None:
        """The config's chain, or one of the given ``betas`` (T',) float64 with the config's
        variance type (a respaced chain: :func:`models.diffusion.respacing.respaced`, or a
        diffusers scheduler's: :mod:`models.formats.diffusers`). ``clip_range``: where a
        clipped prediction of x_0 is clipped to, [-r, r] (None: never clipped); ``ddim``:
        how DDIM picks its timesteps."""
        super().__init__()
        self.config = config
        self.clip_range = clip_range
        self.ddim = DDIMTimesteps() if ddim is None else ddim
        if betas is None:
            betas = (
                linear_beta_schedule(config.num_timesteps)
                if config.schedule == "linear"
                else cosine_beta_schedule(config.num_timesteps)
            )
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        # beta-tilde_t, Ho et al. Eq. 7; zero at t=0, so its log is clipped to the t=1 value
        # (a one-step respaced chain has none: beta_0, which only its unused variance sees).
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        first_variance = posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        posterior_log_variance = torch.log(torch.cat([first_variance, posterior_variance[1:]]))
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_log_variance_clipped": posterior_log_variance,
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
            * alphas.sqrt()
            / (1.0 - alphas_cumprod),
            # fixed_large uses beta_t, with beta-tilde_1 at t=0 for a sensible decoder variance.
            "fixed_large_log_variance": torch.log(torch.cat([first_variance, betas[1:]])),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def extract(self, schedule: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """schedule[t] (T,) -> (B, 1, ..., 1) in ``like``'s dtype, broadcastable against it."""
        values = schedule.to(t.device)[t].to(like.dtype)
        return values.reshape(t.shape[0], *([1] * (like.ndim - 1)))

    # Forward process -------------------------------------------------------------------

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor) -> GaussianParams:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. Eq. 4)."""
        mean = self.extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = self.extract(1.0 - self.alphas_cumprod, t, x_start).expand_as(x_start)
        return GaussianParams(mean, variance, torch.log(variance))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. Eq. 4): (B, C, H, W)."""
        return (
            self.extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self.extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> GaussianParams:
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde, beta-tilde I) (Ho et al. Eqs. 6-7)."""
        mean = (
            self.extract(self.posterior_mean_coef1, t, x_t) * x_start
            + self.extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        log_variance = self.extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return GaussianParams(mean, torch.exp(log_variance), log_variance)

    def prior_kl_nats(self, x_start: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) summed over dimensions: (B, C, H, W) -> (B,)."""
        return self.prior_kl_nats_per_dim(x_start).flatten(1).sum(dim=1)

    def prior_kl_nats_per_dim(self, x_start: torch.Tensor) -> torch.Tensor:
        """L_T per dimension: (B, C, H, W) -> (B, C, H, W) nats (the KL factorises)."""
        last = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device)
        q = self.q_mean_variance(x_start, last)
        return standard_normal_kl_nats(q.mean, q.log_variance)

    # Reverse process -------------------------------------------------------------------

    def clip_xstart(self, pred_xstart: torch.Tensor) -> torch.Tensor:
        """A predicted x_0 clipped to [-r, r] (unchanged when this chain never clips)."""
        if self.clip_range is None:
            return pred_xstart
        return pred_xstart.clamp(-self.clip_range, self.clip_range)

    def predict_xstart_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), Eq. 4 solved for x_0."""
        return (
            self.extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self.extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor
    ) -> torch.Tensor:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1/abar_t - 1), Eq. 4 solved for eps."""
        return (
            self.extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart
        ) / self.extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def split_model_output(
        self, model_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C or 2C, H, W) -> predicted eps (B, C, H, W) and the variance values v or None."""
        if self.config.learns_variance:
            eps, v = model_output.chunk(2, dim=1)
            return eps, v
        return model_output, None

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
    ) -> ReverseStep:
        """p_theta(x_{t-1} | x_t) from the network output at (x_t, t).

        Mean: mu-tilde(x_t, x0-hat) with x0-hat from the predicted eps (Ho et al. Eq. 11 in its
        posterior form), x0-hat clipped (:meth:`clip_xstart`) when ``clip_denoised``.
        Variance: fixed beta-tilde_t or beta_t, or learned by interpolation (Nichol & Dhariwal
        Eq. 15).
        """
        eps, v = self.split_model_output(model_output)
        log_variance = self._model_log_variance(v, t, x_t)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = self.clip_xstart(pred_xstart)
        mean = self.q_posterior(pred_xstart, x_t, t).mean
        return ReverseStep(mean, torch.exp(log_variance), log_variance, pred_xstart, eps)

    def _model_log_variance(
        self, v: torch.Tensor | None, t: torch.Tensor, x_t: torch.Tensor
    ) -> torch.Tensor:
        variance = self.config.variance
        if variance == "fixed_small":
            return self.extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        if variance == "fixed_large":
            return self.extract(self.fixed_large_log_variance, t, x_t).expand_as(x_t)
        assert v is not None, "learned_range needs the network's variance output"
        min_log = self.extract(self.posterior_log_variance_clipped, t, x_t)
        max_log = self.extract(torch.log(self.betas), t, x_t)
        fraction = (v + 1.0) / 2.0  # v in [-1, 1] -> interpolation weight in [0, 1]
        return fraction * max_log + (1.0 - fraction) * min_log

    # Variational bound -----------------------------------------------------------------

    def vlb_term_nats(
        self,
        model_output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
    ) -> torch.Tensor:
        """One term of the bound per image, summed over dimensions: (B,) in nats.

        For index t >= 1, the paper's L_t = KL(q(x_t | x_{t+1}, x_0) || p(x_t | x_{t+1}))
        (denoising matching); for t = 0, L_0 = -log p(x_0 | x_1) under the discretized Gaussian
        decoder (Ho et al. Eq. 13). ``x_start`` must lie on the 8-bit grid in [-1, 1].
        """
        per_dim = self.vlb_term_nats_per_dim(model_output, x_start, x_t, t, clip_denoised)
        return per_dim.flatten(1).sum(dim=1)

    def vlb_term_nats_per_dim(
        self,
        model_output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
    ) -> torch.Tensor:
        """:meth:`vlb_term_nats` per dimension, (B, C, H, W) nats: both the Gaussian KL and
        the discretized decoder factorise over dimensions, so these sum to the term."""
        true_posterior = self.q_posterior(x_start, x_t, t)
        model = self.p_mean_variance(model_output, x_t, t, clip_denoised)
        kl = normal_kl_nats(
            true_posterior.mean, true_posterior.log_variance, model.mean, model.log_variance
        )
        decoder_nll = -discretized_gaussian_log_likelihood_nats(
            x_start, model.mean, 0.5 * model.log_variance
        )
        return torch.where(t.reshape(-1, *([1] * (x_t.ndim - 1))) == 0, decoder_nll, kl)

    def training_losses(
        self,
        model: nn.Module,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> DiffusionLoss:
        """L_simple (Ho et al. Eq. 14), plus lambda L_vlb when variances are learned (L_hybrid,
        Nichol & Dhariwal Sec. 3.1): the VLB term sees a frozen mean, so it trains only v."""
        x_t = self.q_sample(x_start, t, noise)
        output = model(x_t, t)
        eps, v = self.split_model_output(output)
        mse = ((noise - eps) ** 2).flatten(1).mean(dim=1)
        if v is None:
            return DiffusionLoss(mse, mse, torch.zeros_like(mse))
        frozen_mean_output = torch.cat([eps.detach(), v], dim=1)
        vlb_nats = self.vlb_term_nats(frozen_mean_output, x_start, x_t, t, clip_denoised=False)
        num_dims = x_start[0].numel()
        # lambda * L_vlb with L_vlb = T * E_t[L_t], in bits per dimension as in their code.
        vlb_bpd = nats_to_bits_per_dim(vlb_nats, num_dims)
        loss = mse + self.config.vlb_weight * self.num_timesteps * vlb_bpd
        return DiffusionLoss(loss, mse, vlb_bpd)
