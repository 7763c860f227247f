"""The VAE as a model kind: its bounds, sampler, latents, costs, training loss and evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from models.core.config import VAEConfig
from models.core.flops import gflop_of
from models.core.progressive import Progressive, single_step
from models.kinds import (
    OPTIMISED_TOTAL_BITS_PER_DIM,
    OPTIMISED_TOTAL_NATS,
    TOTAL_NATS_PER_DIM,
    BoundMethod,
    ImageShape,
    ModelKind,
    Option,
    RegretMethod,
    Work,
)
from models.vae.model import VAE, NegativeELBO
from models.vae.regret import (
    DEFAULT_REGRET_LEARNING_RATE,
    DEFAULT_REGRET_STEPS,
    REGRET_STEPS_RANGE,
    likelihood_regret_progressive,
)

if TYPE_CHECKING:
    from models.kinds import Generators, Terms

IWAE_K_RANGE = (1, 5000)  # importance samples: the cost grows linearly, memory stays bounded


def _elbo(vae: VAE, x: torch.Tensor, k: int | None, generators: Generators, max_batch: int):
    """-ELBO with one posterior draw per image, term by term (Kingma & Welling 2013, Eq. 3)."""
    elbo = yield from single_step(lambda: vae.negative_elbo(x, generators))
    return _elbo_terms(elbo)


def _elbo_per_dim(vae: VAE, x: torch.Tensor, k: int | None, generators: Generators, max_batch: int):
    """:func:`_elbo` and the -ELBO per dimension: -log p(x_i|z) + KL / D (same draw of z)."""
    elbo = yield from single_step(lambda: vae.negative_elbo(x, generators, per_dim=True))
    return {**_elbo_terms(elbo), TOTAL_NATS_PER_DIM: elbo.total_nats_per_dim}


def _elbo_terms(elbo: NegativeELBO) -> Terms:
    return {
        "total_nats": elbo.total_nats,
        "total_bits_per_dim": elbo.total_bits_per_dim,
        "reconstruction_nats": elbo.reconstruction_nats,
        "kl_nats": elbo.kl_nats,
    }


def _iwae(vae: VAE, x: torch.Tensor, k: int | None, generators: Generators, max_batch: int):
    """The k-sample importance-weighted bound (Burda et al. 2015, Eq. 8)."""
    assert k is not None, "iwae needs k"
    bound = yield from vae.iwae_bound_progressive(x, k, generators, max_batch)
    return {"total_nats": bound.total_nats, "total_bits_per_dim": bound.total_bits_per_dim}


def _regret(
    vae: VAE,
    x: torch.Tensor,
    steps: int,
    learning_rate: float,
    generators: Generators,
    max_batch: int,
):
    """The ELBO's Likelihood Regret (Xiao, Yan & Amit 2020; models/vae/regret.py): the -ELBO
    with the encoder's posterior, from the draws ``elbo`` makes, and with each image's
    posterior parameters optimised by ``steps`` Adam steps from there."""
    regret = yield from likelihood_regret_progressive(
        vae, x, generators, steps, learning_rate, max_batch
    )
    return {
        "total_nats": regret.amortised_nats,
        "total_bits_per_dim": regret.amortised_bits_per_dim,
        OPTIMISED_TOTAL_NATS: regret.optimised_nats,
        OPTIMISED_TOTAL_BITS_PER_DIM: regret.optimised_bits_per_dim,
    }


class VAEKind(ModelKind):
    interface_version = 1  # of models.kinds' interface (INTERFACE_VERSION)
    name = "vae"
    config_class = VAEConfig
    model_class = VAE
    evaluation_module = "models.vae.evaluation"
    headline_method = "elbo"
    term_method = "elbo"
    exports_ema = False
    sample_options = {
        "temperature": Option(1.0, "prior scale: z ~ N(0, temperature^2 I)"),
        "sample_pixels": Option(False, "draw pixels from p(x|z) instead of the decoder mean"),
    }
    encode_options = {"sample": Option(False, "also return one draw z ~ q(z|x)")}

    def image_shape(self, config: VAEConfig) -> ImageShape:
        return (config.image_channels, config.image_size, config.image_size)

    def networks(self, model: nn.Module) -> list[nn.Module]:
        return [model.encoder, model.decoder, model.to_pixel_params]

    def methods(self, model: nn.Module) -> dict[str, BoundMethod]:
        return {
            "elbo": BoundMethod(
                "elbo", "-ELBO, reconstruction and KL terms", _elbo, run_per_dim=_elbo_per_dim
            ),
            "iwae": BoundMethod(
                "iwae", "importance-weighted bound with k samples", _iwae, IWAE_K_RANGE, 100
            ),
        }

    def term_names(self, model: nn.Module, k: int | None = None) -> tuple[str, ...]:
        return ("reconstruction_nats", "kl_nats")

    def likelihood_regret(self, model: nn.Module) -> RegretMethod:
        return RegretMethod(
            "elbo",
            "Likelihood Regret (Xiao et al. 2020): the -ELBO minus the -ELBO with the image's "
            "posterior mean and log-variance optimised by Adam from the encoder's",
            _regret,
            REGRET_STEPS_RANGE,
            DEFAULT_REGRET_STEPS,
            DEFAULT_REGRET_LEARNING_RATE,
        )

    def term_vector(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Generators,
        max_batch: int,
        k: int | None = None,
    ) -> Progressive[torch.Tensor]:
        """(distortion, rate) of the ELBO per image (Alemi et al. 2018): (B, 2) nats, the
        summary statistics DoSE fits a density to for a VAE (Morningstar et al. 2021, Sec. 3)."""
        terms = yield from _elbo(model, x, k, generators, max_batch)
        return torch.stack([terms["reconstruction_nats"], terms["kl_nats"]], dim=1).double()

    def samplers(self, model: nn.Module) -> tuple[str, ...]:
        return ("prior",)

    def sample(
        self,
        model: nn.Module,
        generators: Sequence[torch.Generator],
        options: Mapping[str, Any],
        chunk_rows: int | None,
    ) -> Progressive[torch.Tensor]:
        return single_step(
            lambda: model.sample(
                len(generators),
                generators,
                options["temperature"],
                options["sample_pixels"],
                chunk_rows,
            )
        )

    def latent_shape(self, model: nn.Module) -> tuple[int, ...]:
        return (model.config.latent_dim,)

    @torch.no_grad()
    def _encode(self, model, x, generators, options) -> Terms:
        posterior = model.encode(x)
        out = {"means": posterior.mean, "logvars": posterior.logvar}
        if options["sample"]:
            out["samples"] = posterior.rsample(generators)[0]
        return out

    def encode(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Sequence[torch.Generator],
        options: Mapping[str, Any],
        chunk_rows: int | None,
    ) -> Progressive[Terms]:
        """Posterior ``means`` and ``logvars`` (B, Z), and ``samples`` z ~ q(z|x) if asked."""
        return single_step(lambda: self._encode(model, x, generators, options))

    def decode(
        self, model: nn.Module, z: torch.Tensor, options: Mapping[str, Any], chunk_rows: int | None
    ) -> Progressive[torch.Tensor]:
        """z (B, Z) -> the decoder's mean image (B, C, H, W)."""
        return single_step(lambda: self._decode(model, z, chunk_rows))

    @torch.no_grad()
    def _decode(self, model: nn.Module, z: torch.Tensor, chunk_rows: int | None) -> torch.Tensor:
        return model.decode(z, chunk_rows).mean_image()

    def networks_gflop(self, model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        x = torch.zeros(1, *self.image_shape(model.config), device=device)
        z = torch.zeros(1, model.config.latent_dim, device=device)
        return {"encoder": gflop_of(model.encode, x), "decoder": gflop_of(model.decode, z)}

    def evaluations(self, model: nn.Module, work: Work) -> dict[str, int]:
        """Per image: the encoder for q(z|x), the decoder for each z (k of them for IWAE); the
        regret's every step one decoder call forward and one backward to z (as costly as a
        forward), and one more forward for the last iterate."""
        if work.operation == "regret":
            assert work.steps is not None, "regret needs steps"
            return {"encoder": 1, "decoder": 1 + 2 * work.steps}
        if work.operation == "likelihood" and work.method == "iwae":
            assert work.k is not None, "iwae needs k"
            return {"encoder": 1, "decoder": work.k}
        if work.operation == "likelihood":  # the ELBO: one z per image
            return {"encoder": 1, "decoder": 1}
        if work.operation == "encode":
            return {"encoder": 1}
        return {"decoder": 1}  # sample, decode

    def training_loss(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator):
        """-ELBO in nats per dimension (Kingma & Welling 2013, Eq. 10)."""
        bound = model.negative_elbo(x, generator)
        loss = bound.total_nats.mean() / model.num_dims
        return loss, {
            "bits_per_dim": bound.total_bits_per_dim.mean().detach(),
            "kl_nats": bound.kl_nats.mean().detach(),
        }
