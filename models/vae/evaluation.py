"""How the evaluation measures a VAE: the -ELBO term by term and the IWAE bound, samples from
the prior, and the ELBO and IWAE as anomaly scores. The kind (models/vae/kind.py) calls these."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm import tqdm

from models.core.card import BoundFigure, Likelihood
from models.core.pixels import pixels_to_signed_unit, signed_unit_to_pixels
from models.eval.context import EvalContext, ScoreMethod, mean_and_stderr
from models.eval.scoring import elbo_bits_per_dim, iwae_bits_per_dim
from models.vae.model import VAE

Sampler = Callable[[int], torch.Tensor]  # n -> uint8 images (n, C, H, W)


def likelihood_report(vae: VAE, ctx: EvalContext) -> tuple[Likelihood, torch.Tensor]:
    """-ELBO term by term on the first N test images (Kingma & Welling 2013, Eq. 3), and the
    IWAE bound with large k on fewer (Burda et al. 2015, Eq. 8); and the (N,) -ELBO bits/dim."""
    images = ctx.test[: ctx.sizes.likelihood_images]
    recon, kl, total = [], [], []
    for chunk in tqdm(images.split(ctx.sizes.batch_size), desc="elbo", leave=False):
        with torch.no_grad():
            bound = vae.negative_elbo(pixels_to_signed_unit(chunk).to(ctx.device), ctx.generator)
        recon.append(bound.reconstruction_nats.cpu())
        kl.append(bound.kl_nats.cpu())
        total.append(bound.total_bits_per_dim.double().cpu())
    nats_to_bits_per_dim = 1.0 / (vae.num_dims * math.log(2.0))
    elbo = torch.cat(total)  # (N,)
    headline = BoundFigure(
        method="elbo",
        label="-ELBO",
        test_images=len(images),
        bits_per_dim=mean_and_stderr(elbo),
        terms_bits_per_dim={
            "reconstruction": torch.cat(recon).double().mean().item() * nats_to_bits_per_dim,
            "KL": torch.cat(kl).double().mean().item() * nats_to_bits_per_dim,
        },
    )
    others = []
    n_iwae, k = ctx.sizes.iwae_images, ctx.sizes.iwae_k
    if n_iwae:
        iwae = ctx.score(iwae_bits_per_dim(vae, k, ctx.generator), ctx.test[:n_iwae], "iwae", 4)
        others.append(
            BoundFigure(
                method="iwae",
                label="IWAE",
                test_images=len(iwae),
                bits_per_dim=mean_and_stderr(iwae),
                k=k,
                headline_same_images=mean_and_stderr(elbo[: len(iwae)]),
            )
        )
    return Likelihood(headline, tuple(others)), elbo


def evaluation_samplers(vae: VAE, ctx: EvalContext) -> dict[str, tuple[int, Sampler]]:
    """Samples from the prior: the decoder's mean image, and pixels drawn from p(x|z)."""

    def decoder_mean(n: int) -> torch.Tensor:
        return signed_unit_to_pixels(vae.sample(n, ctx.generator).cpu())

    def pixel_sample(n: int) -> torch.Tensor:
        return signed_unit_to_pixels(vae.sample(n, ctx.generator, sample_pixels=True).cpu())

    n = ctx.sizes.fd_samples
    return {"decoder_mean": (n, decoder_mean), "pixel_sample": (n, pixel_sample)}


def score_methods(vae: VAE, ctx: EvalContext) -> list[ScoreMethod]:
    s = ctx.sizes
    elbo = elbo_bits_per_dim(vae, ctx.generator)
    iwae = iwae_bits_per_dim(vae, s.score_iwae_k, ctx.generator)
    return [
        ScoreMethod("elbo", None, elbo, s.anomaly_images, s.calibration_images),
        ScoreMethod(
            "iwae",
            s.score_iwae_k,
            iwae,
            s.anomaly_images,
            s.calibration_images,
            chunk=max(1, 2048 // max(1, s.score_iwae_k)),
        ),
    ]
