"""How the evaluation measures a DDPM: the exact bound over all T steps term by term, DDIM and
ancestral samples, and the exact and Monte-Carlo bounds as anomaly scores. The kind
(models/diffusion/kind.py) calls these."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from models.core.card import BoundFigure, Likelihood
from models.core.pixels import pixels_to_signed_unit, signed_unit_to_pixels
from models.diffusion.bound import vlb_exact
from models.diffusion.ddpm import DDPM
from models.diffusion.samplers import ddim_sample, ddpm_ancestral_sample
from models.eval.context import EvalContext, ScoreMethod, mean_and_stderr
from models.eval.scoring import vlb_exact_bits_per_dim, vlb_mc_bits_per_dim

Sampler = Callable[[int], torch.Tensor]  # n -> uint8 images (n, C, H, W)


def likelihood_report(ddpm: DDPM, ctx: EvalContext) -> tuple[Likelihood, torch.Tensor]:
    """The exact bound over all T steps (Ho et al. 2020, Eq. 5) on the first N test images,
    split into L_T, the sum of the denoising terms L_t and L_0; and its (N,) bits/dim."""
    images = ctx.test[: ctx.sizes.likelihood_images]
    prior, denoising, reconstruction = [], [], []
    bar = tqdm(total=len(images), desc="vlb_exact", leave=False, dynamic_ncols=True)
    for chunk in images.split(ctx.sizes.batch_size):
        with torch.no_grad():
            bound = vlb_exact(
                ddpm.diffusion,
                ddpm,
                pixels_to_signed_unit(chunk).to(ctx.device),
                ctx.generator,
                max_batch=ctx.sizes.network_batch,
            )
        prior.append(bound.bits_per_dim(bound.prior_nats))
        denoising.append(bound.bits_per_dim(bound.denoising_nats))
        reconstruction.append(bound.bits_per_dim(bound.reconstruction_nats))
        bar.update(len(chunk))
    bar.close()
    prior_bpd, denoising_bpd, recon_bpd = (
        torch.cat(p).double() for p in (prior, denoising, reconstruction)
    )
    total = prior_bpd + denoising_bpd + recon_bpd  # (N,)
    headline = BoundFigure(
        method="vlb_exact",
        label=f"exact VLB, T = {ddpm.diffusion.num_timesteps}",
        test_images=len(images),
        bits_per_dim=mean_and_stderr(total),
        terms_bits_per_dim={
            "L_T": prior_bpd.mean().item(),
            "sum of L_t": denoising_bpd.mean().item(),
            "L_0": recon_bpd.mean().item(),
        },
    )
    return Likelihood(headline), total


def evaluation_samplers(ddpm: DDPM, ctx: EvalContext) -> dict[str, tuple[int, Sampler]]:
    """On ``fd_samples`` images each: DDIM with ``ddim_steps`` steps at ``ctx.ddim_eta`` (the
    served default) and at eta = 0 (Song et al. 2020, Eq. 12), and ancestral sampling over
    as many respaced steps with the model's variances (Nichol & Dhariwal 2021, Sec. 4); on
    fewer, ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2). Which of the
    first three is best depends on the model, so the card measures them all."""
    shape = ddpm.image_shape
    steps, num_timesteps = ctx.sizes.ddim_steps, ddpm.diffusion.num_timesteps

    def ddim(eta: float) -> Sampler:
        def draw(n: int) -> torch.Tensor:
            x = ddim_sample(ddpm.diffusion, ddpm, (n, *shape), steps, ctx.generator, eta)
            return signed_unit_to_pixels(x.cpu())

        return draw

    def ancestral(ancestral_steps: int) -> Sampler:
        def draw(n: int) -> torch.Tensor:
            x = ddpm_ancestral_sample(
                ddpm.diffusion, ddpm, (n, *shape), ctx.generator, steps=ancestral_steps
            )
            return signed_unit_to_pixels(x.cpu())

        return draw

    samplers = {f"ddim_{steps}": (ctx.sizes.fd_samples, ddim(ctx.ddim_eta))}
    if ctx.ddim_eta != 0:
        samplers[f"ddim_{steps}_eta0"] = (ctx.sizes.fd_samples, ddim(0.0))
    if steps < num_timesteps:
        samplers[f"ancestral_{steps}"] = (ctx.sizes.fd_samples, ancestral(steps))
    samplers[f"ancestral_{num_timesteps}"] = (ctx.sizes.ancestral_samples, ancestral(num_timesteps))
    return samplers


def score_methods(ddpm: DDPM, ctx: EvalContext) -> list[ScoreMethod]:
    s = ctx.sizes
    exact = vlb_exact_bits_per_dim(ddpm, ctx.generator)
    mc = vlb_mc_bits_per_dim(ddpm, s.score_mc_k, ctx.generator)
    return [
        ScoreMethod("vlb_exact", None, exact, s.anomaly_exact_images, s.calibration_exact_images),
        ScoreMethod("vlb_mc", s.score_mc_k, mc, s.anomaly_images, s.calibration_images),
    ]
