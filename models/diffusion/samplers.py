"""Sampling loops: ancestral DDPM (Ho et al. 2020, Algorithm 2; over a respaced chain of
fewer steps, Nichol & Dhariwal 2021, Sec. 4), DDIM (Song et al. 2020,
Eq. 12) with any number of steps and any eta, and deterministic DDIM inversion x_0 -> x_T.

``model`` is any callable (x_t (B, C, H, W), t (B,)) -> network output, e.g. a :class:`DDPM`.
Images are (B, C, H, W) in [-1, 1]; ``on_step(done, total)`` reports progress. Each loop
also has a ``*_progressive`` form that yields after every network call
(:mod:`models.core.progressive`), and every loop is one class of per-request rows that
advance one network call at a time (:class:`AncestralRows`, :class:`DDIMRows`,
:class:`DDIMInversionRows`; :mod:`models.core.stepwise`), so that requests at different
steps of different samplers can share a network call. The whole-batch loops run those rows
alone: one implementation of each update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from models.core.noise import Generators, randn_rows
from models.core.progressive import ProgressCallback, Progressive, run_to_end
from models.core.stepwise import run_rows
from models.diffusion.gaussian import GaussianDiffusion
from models.diffusion.respacing import respaced
from models.diffusion.timesteps import spaced_timesteps

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _timesteps_like(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def ddpm_ancestral_sample(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    shape: Sequence[int],
    generator: Generators,
    clip_denoised: bool = True,
    on_step: ProgressCallback | None = None,
    steps: int | None = None,
) -> torch.Tensor:
    """x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t) for all T steps (Algorithm 2), or for
    ``steps`` evenly spaced ones of the respaced chain (Nichol & Dhariwal 2021, Sec. 4)."""
    loop = ddpm_ancestral_sample_progressive(
        diffusion, model, shape, generator, clip_denoised, steps
    )
    return run_to_end(loop, on_step)


def ddpm_ancestral_sample_progressive(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    shape: Sequence[int],
    generator: Generators,
    clip_denoised: bool = True,
    steps: int | None = None,
) -> Progressive[torch.Tensor]:
    """:func:`ddpm_ancestral_sample`, yielding after each step."""
    rows = AncestralRows(diffusion, shape, generator, clip_denoised, steps)
    return (yield from run_rows(model, rows))


class AncestralRows:
    """One request's rows (B, C, H, W) of :func:`ddpm_ancestral_sample`, a step at a time
    (:class:`models.core.stepwise.StepRows`): x_T ~ N(0, I) drawn at once, then
    x_{i-1} ~ p(x_{i-1} | x_i) over the (respaced) chain (Algorithm 2)."""

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        shape: Sequence[int],
        generator: Generators,
        clip_denoised: bool = True,
        steps: int | None = None,
    ) -> None:
        self.total = diffusion.num_timesteps if steps is None else steps
        times = spaced_timesteps(diffusion.num_timesteps, self.total)  # the network's timesteps
        full = self.total == diffusion.num_timesteps
        self.chain = diffusion if full else respaced(diffusion, times)
        self.network_timesteps = times.tolist()
        self.shape, self.generator, self.clip_denoised = tuple(shape), generator, clip_denoised
        self.rows, self.done = self.shape[0], 0
        self.x = randn_rows(shape, generator, diffusion.betas.device)

    def network_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.total - 1 - self.done  # index on the chain, T'-1 ... 0
        return self.x, _timesteps_like(self.x, self.network_timesteps[i])

    def advance(self, output: torch.Tensor) -> None:
        i = self.total - 1 - self.done
        x = self.x
        step = self.chain.p_mean_variance(output, x, _timesteps_like(x, i), self.clip_denoised)
        x = step.mean
        if i > 0:  # no noise on the final step: the output is the decoder's mean
            noise = randn_rows(self.shape, self.generator, x.device)
            x = x + torch.exp(0.5 * step.log_variance) * noise
        self.x, self.done = x, self.done + 1

    def result(self) -> torch.Tensor:
        return self.x


def _alpha_bar(diffusion: GaussianDiffusion, t: int) -> torch.Tensor:
    """abar_t as a float64 scalar tensor on the CPU; abar_{-1} (the clean image) is 1, or
    abar_0 where the chain's DDIM rule says so (:class:`DDIMTimesteps`)."""
    if t < 0:
        if not diffusion.ddim.final_alpha_bar_is_one:
            return diffusion.alphas_cumprod[0].detach().to("cpu", torch.float64)
        return torch.ones((), dtype=torch.float64)
    return diffusion.alphas_cumprod[t].detach().to("cpu", torch.float64)


def ddim_step(
    diffusion: GaussianDiffusion,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    eta: float,
    noise: torch.Tensor | None,
    clip_denoised: bool,
) -> torch.Tensor:
    """x_{t_prev} from x_t and the network output at t (DDIM Eq. 12); t_prev = -1 gives x_0."""
    timesteps = _timesteps_like(x_t, t)
    eps, _ = diffusion.split_model_output(model_output)
    # 1. predicted x_0 ("predicted x_0", DDIM Eq. 12, first term)
    pred_xstart = diffusion.predict_xstart_from_eps(x_t, timesteps, eps)
    if clip_denoised:
        pred_xstart = diffusion.clip_xstart(pred_xstart)
        if not diffusion.ddim.keep_model_eps:  # Glide's eps, re-derived from the clipped x_0
            eps = diffusion.predict_eps_from_xstart(x_t, timesteps, pred_xstart)
    abar_t, abar_prev = _alpha_bar(diffusion, t), _alpha_bar(diffusion, t_prev)
    # 2. sigma_t(eta), DDIM Eq. 16: eta = 1 is DDPM's posterior variance, eta = 0 deterministic
    sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
    # 3. "direction pointing to x_t" plus the predicted x_0 (DDIM Eq. 12). For eta <= 1,
    # 1 - abar_prev - sigma^2 = (1 - abar_prev) abar_t (1 / abar_prev - 1) / (1 - abar_t) >= 0,
    # but with abar_t ~ 0 (the first step of a few-step sampler) it can round below zero, and
    # its square root would make every pixel NaN: clamp at the exact value's bound.
    direction = torch.sqrt(torch.clamp(1 - abar_prev - sigma**2, min=0.0))
    coefficients = torch.stack([abar_prev.sqrt(), direction, sigma]).to(x_t.device, x_t.dtype)
    x_prev = coefficients[0] * pred_xstart + coefficients[1] * eps
    if noise is not None:
        x_prev = x_prev + coefficients[2] * noise
    return x_prev


def ddim_loop(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_T: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    generator: Generators | None = None,
    clip_denoised: bool = True,
    on_step: ProgressCallback | None = None,
) -> torch.Tensor:
    """Run DDIM from a given x_T (B, C, H, W) down to x_0 over ``steps`` timesteps."""
    loop = ddim_loop_progressive(diffusion, model, x_T, steps, eta, generator, clip_denoised)
    return run_to_end(loop, on_step)


def ddim_loop_progressive(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_T: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    generator: Generators | None = None,
    clip_denoised: bool = True,
) -> Progressive[torch.Tensor]:
    """:func:`ddim_loop`, yielding after each step."""
    rows = DDIMRows(diffusion, x_T, steps, eta, generator, clip_denoised)
    return (yield from run_rows(model, rows))


class DDIMRows:
    """One request's rows of :func:`ddim_loop` from x_T (B, C, H, W), a step at a time
    (:class:`models.core.stepwise.StepRows`): DDIM Eq. 12 over ``steps`` spaced timesteps."""

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        x_T: torch.Tensor,
        steps: int,
        eta: float = 0.0,
        generator: Generators | None = None,
        clip_denoised: bool = True,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if eta > 0 and generator is None:
            raise ValueError("eta > 0 draws noise: pass a generator")
        # (t, t_prev) from T-1 down to (..., -1), the schedule's own spacing
        self.pairs = diffusion.ddim.pairs(diffusion.num_timesteps, steps)
        self.times = [t for t, _ in self.pairs]
        self.diffusion, self.eta, self.generator = diffusion, eta, generator
        self.clip_denoised = clip_denoised
        self.x, self.rows, self.done, self.total = x_T, x_T.shape[0], 0, len(self.times)

    @classmethod
    def from_prior(
        cls,
        diffusion: GaussianDiffusion,
        shape: Sequence[int],
        steps: int,
        generator: Generators,
        eta: float = 0.0,
        clip_denoised: bool = True,
    ) -> DDIMRows:
        """x_T ~ N(0, I) of ``shape`` drawn from ``generator``, then DDIM (:func:`ddim_sample`)."""
        x_T = randn_rows(shape, generator, diffusion.betas.device)
        return cls(diffusion, x_T, steps, eta, generator, clip_denoised)

    def network_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, _timesteps_like(self.x, self.times[self.done])

    def advance(self, output: torch.Tensor) -> None:
        i, x = self.done, self.x
        t, t_prev = self.pairs[i]
        stochastic = self.eta > 0 and t_prev >= 0  # sigma is 0 on the step to x_0
        noise = randn_rows(x.shape, self.generator, x.device) if stochastic else None
        step = ddim_step(self.diffusion, output, x, t, t_prev, self.eta, noise, self.clip_denoised)
        self.x, self.done = step, i + 1

    def result(self) -> torch.Tensor:
        return self.x


def ddim_sample(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    shape: Sequence[int],
    steps: int,
    generator: Generators,
    eta: float = 0.0,
    clip_denoised: bool = True,
    on_step: ProgressCallback | None = None,
) -> torch.Tensor:
    """Draw x_T ~ N(0, I) from ``generator`` and run :func:`ddim_loop`: (B, C, H, W)."""
    loop = ddim_sample_progressive(diffusion, model, shape, steps, generator, eta, clip_denoised)
    return run_to_end(loop, on_step)


def ddim_sample_progressive(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    shape: Sequence[int],
    steps: int,
    generator: Generators,
    eta: float = 0.0,
    clip_denoised: bool = True,
) -> Progressive[torch.Tensor]:
    """:func:`ddim_sample`, yielding after each step."""
    rows = DDIMRows.from_prior(diffusion, shape, steps, generator, eta, clip_denoised)
    return (yield from run_rows(model, rows))


def ddim_decode(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_T: torch.Tensor,
    steps: int,
    on_step: ProgressCallback | None = None,
) -> torch.Tensor:
    """Deterministic decoding of a latent x_T: the eta = 0 DDIM ODE, unclipped so that it
    retraces :func:`ddim_invert` (DDIM Sec. 5.4), unless the chain's DDIM rule clips (a
    diffusers folder's scheduler with ``clip_sample``, whose own loop clips)."""
    return run_to_end(ddim_decode_progressive(diffusion, model, x_T, steps), on_step)


def ddim_decode_progressive(
    diffusion: GaussianDiffusion, model: Denoiser, x_T: torch.Tensor, steps: int
) -> Progressive[torch.Tensor]:
    """:func:`ddim_decode`, yielding after each step."""
    clip = diffusion.ddim.decode_clips
    return (yield from ddim_loop_progressive(diffusion, model, x_T, steps, clip_denoised=clip))


def ddim_invert(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_start: torch.Tensor,
    steps: int,
    on_step: ProgressCallback | None = None,
) -> torch.Tensor:
    """Encode x_0 (B, C, H, W) to the latent x_T by running the eta = 0 DDIM ODE forwards.

    Each step is DDIM Eq. 12 with the roles of t and t_prev swapped, the noise estimated at
    the current point (Song et al. 2020 Sec. 4.3 and 5.4); the error of this Euler step
    shrinks as ``steps`` grows.
    """
    return run_to_end(ddim_invert_progressive(diffusion, model, x_start, steps), on_step)


def ddim_invert_progressive(
    diffusion: GaussianDiffusion, model: Denoiser, x_start: torch.Tensor, steps: int
) -> Progressive[torch.Tensor]:
    """:func:`ddim_invert`, yielding after each step."""
    return (yield from run_rows(model, DDIMInversionRows(diffusion, x_start, steps)))


class DDIMInversionRows:
    """One request's rows of :func:`ddim_invert` from x_0 (B, C, H, W), a step at a time
    (:class:`models.core.stepwise.StepRows`)."""

    def __init__(self, diffusion: GaussianDiffusion, x_start: torch.Tensor, steps: int) -> None:
        # The decoding loop's steps backwards: from x_0 (-1) up to its first timestep.
        pairs = diffusion.ddim.pairs(diffusion.num_timesteps, steps)
        self.times = [t for t, _ in reversed(pairs)]
        self.diffusion = diffusion
        self.x, self.rows, self.done, self.total = x_start, x_start.shape[0], 0, len(self.times)

    def _current(self) -> int:
        return self.times[self.done - 1] if self.done else -1  # -1: x_0 itself, abar = 1

    def network_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, _timesteps_like(self.x, max(self._current(), 0))

    def advance(self, output: torch.Tensor) -> None:
        x, current, t_next = self.x, self._current(), self.times[self.done]
        eps, _ = self.diffusion.split_model_output(output)
        abar, abar_next = _alpha_bar(self.diffusion, current), _alpha_bar(self.diffusion, t_next)
        coefficients = torch.stack([abar, abar_next]).to(x.device, x.dtype)
        pred_xstart = (x - torch.sqrt(1 - coefficients[0]) * eps) / coefficients[0].sqrt()
        x = coefficients[1].sqrt() * pred_xstart + torch.sqrt(1 - coefficients[1]) * eps
        self.x, self.done = x, self.done + 1

    def result(self) -> torch.Tensor:
        return self.x
