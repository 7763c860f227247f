"""Sampling loops: ancestral DDPM (Ho et al. 2020, Algorithm 2; over a respaced chain of
fewer steps, Nichol & Dhariwal 2021, Sec. 4), DDIM (Song et al. 2020,
Eq. 12) with any number of steps and any eta, and deterministic DDIM inversion x_0 -> x_T.

``model`` is any callable (x_t (B, C, H, W), t (B,)) -> network output, e.g. a :class:`DDPM`.
Images are (B, C, H, W) in [-1, 1]; ``on_step(done, total)`` reports progress. Each loop
also has a ``*_progressive`` form that yields after every network call
(:mod:`models.core.progressive`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from models.core.noise import Generators, randn_rows
from models.core.progressive import ProgressCallback, Progressive, run_to_end
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


@torch.no_grad()
def ddpm_ancestral_sample_progressive(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    shape: Sequence[int],
    generator: Generators,
    clip_denoised: bool = True,
    steps: int | None = None,
) -> Progressive[torch.Tensor]:
    """:func:`ddpm_ancestral_sample`, yielding after each step."""
    total = diffusion.num_timesteps if steps is None else steps
    times = spaced_timesteps(diffusion.num_timesteps, total)  # the network's timesteps
    chain = diffusion if total == diffusion.num_timesteps else respaced(diffusion, times)
    network_timesteps = times.tolist()
    device = diffusion.betas.device
    x = randn_rows(shape, generator, device)
    for done, i in enumerate(reversed(range(total)), start=1):
        output = model(x, _timesteps_like(x, network_timesteps[i]))
        step = chain.p_mean_variance(output, x, _timesteps_like(x, i), clip_denoised)
        x = step.mean
        if i > 0:  # no noise on the final step: the output is the decoder's mean
            x = x + torch.exp(0.5 * step.log_variance) * randn_rows(shape, generator, device)
        yield done, total
    return x


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


@torch.no_grad()
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
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and generator is None:
        raise ValueError("eta > 0 draws noise: pass a generator")
    pairs = diffusion.ddim.pairs(diffusion.num_timesteps, steps)  # (T-1, ...) ... (..., -1)
    x = x_T
    for i, (t, t_prev) in enumerate(pairs):
        stochastic = eta > 0 and t_prev >= 0  # sigma is 0 on the step to x_0
        noise = randn_rows(x.shape, generator, x.device) if stochastic else None
        output = model(x, _timesteps_like(x, t))
        x = ddim_step(diffusion, output, x, t, t_prev, eta, noise, clip_denoised)
        yield i + 1, len(pairs)
    return x


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
    x_T = randn_rows(shape, generator, diffusion.betas.device)
    loop = ddim_loop_progressive(diffusion, model, x_T, steps, eta, generator, clip_denoised)
    return (yield from loop)


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


@torch.no_grad()
def ddim_invert_progressive(
    diffusion: GaussianDiffusion, model: Denoiser, x_start: torch.Tensor, steps: int
) -> Progressive[torch.Tensor]:
    """:func:`ddim_invert`, yielding after each step."""
    # The decoding loop's steps backwards: from x_0 (-1) up to its first timestep.
    times = [t for t, _ in reversed(diffusion.ddim.pairs(diffusion.num_timesteps, steps))]
    x = x_start
    current = -1  # x_0 itself
    for i, t_next in enumerate(times):
        eval_t = max(current, 0)
        eps, _ = diffusion.split_model_output(model(x, _timesteps_like(x, eval_t)))
        abar, abar_next = _alpha_bar(diffusion, current), _alpha_bar(diffusion, t_next)
        coefficients = torch.stack([abar, abar_next]).to(x.device, x.dtype)
        pred_xstart = (x - torch.sqrt(1 - coefficients[0]) * eps) / coefficients[0].sqrt()
        x = coefficients[1].sqrt() * pred_xstart + torch.sqrt(1 - coefficients[1]) * eps
        current = t_next
        yield i + 1, len(times)
    return x
