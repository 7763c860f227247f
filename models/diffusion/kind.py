"""The DDPM as a model kind: its bounds, samplers, DDIM latents, costs, loss and evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from models.core.config import DDPMConfig
from models.core.flops import gflop_of
from models.core.pixels import signed_unit_to_pixels
from models.core.progressive import Progressive
from models.core.stepwise import StepRows, Then, run_rows
from models.diffusion.bound import (
    DiffusionBound,
    stratum_edges,
    vlb_exact_progressive,
    vlb_monte_carlo_progressive,
)
from models.diffusion.ddpm import DDPM
from models.diffusion.samplers import (
    AncestralRows,
    DDIMInversionRows,
    DDIMRows,
    Denoiser,
)
from models.kinds import (
    TOTAL_NATS_PER_DIM,
    BoundMethod,
    ImageShape,
    ModelKind,
    Option,
    OptionError,
    Work,
)
from models.nn.batch_invariance import FixedChunkDenoiser

if TYPE_CHECKING:
    from models.kinds import Generators, Terms

SAMPLE_STEPS = Option(
    50,
    "denoising steps, 1..T (more is slower and better): DDIM's default 50; ancestral "
    "sampling's default all T, fewer respaced (Nichol & Dhariwal 2021)",
)


def _terms(bound: DiffusionBound) -> Terms:
    terms = {
        "total_nats": bound.total_nats,
        "total_bits_per_dim": bound.total_bits_per_dim,
        "prior_nats": bound.prior_nats,
        "denoising_nats": bound.denoising_nats,
        "reconstruction_nats": bound.reconstruction_nats,
    }
    if bound.denoising_stderr_nats is not None:
        # L_T and L_0 are computed exactly, so the total's error is the denoising sum's.
        terms["stderr_nats"] = bound.denoising_stderr_nats
    if bound.total_nats_per_dim is not None:
        terms[TOTAL_NATS_PER_DIM] = bound.total_nats_per_dim
    return terms


def _vlb_exact(ddpm: DDPM, x: torch.Tensor, k: int | None, generators: Generators, max_batch: int):
    """All T terms of the bound (Ho et al. 2020, Eq. 5): T network calls per image."""
    bound = yield from vlb_exact_progressive(ddpm.diffusion, ddpm, x, generators, max_batch)
    return _terms(bound)


def _vlb_mc(ddpm: DDPM, x: torch.Tensor, k: int | None, generators: Generators, max_batch: int):
    """Stratified k-timestep Monte-Carlo estimate of the same bound, with its standard error."""
    assert k is not None, "vlb_mc needs k"
    loop = vlb_monte_carlo_progressive(ddpm.diffusion, ddpm, x, k, generators, max_batch)
    return _terms((yield from loop))


def _vlb_exact_per_dim(
    ddpm: DDPM, x: torch.Tensor, k: int | None, generators: Generators, max_batch: int
):
    """:func:`_vlb_exact`, also per dimension: L_0 + sum_t L_{t-1} + L_T of every pixel."""
    loop = vlb_exact_progressive(ddpm.diffusion, ddpm, x, generators, max_batch, per_dim=True)
    return _terms((yield from loop))


def _vlb_mc_per_dim(
    ddpm: DDPM, x: torch.Tensor, k: int | None, generators: Generators, max_batch: int
):
    """:func:`_vlb_mc`, also per dimension: L_0, the k drawn denoising terms with their
    stratum weights and L_T, per pixel (the estimate's weighted sum kept per dimension)."""
    assert k is not None, "vlb_mc needs k"
    loop = vlb_monte_carlo_progressive(
        ddpm.diffusion, ddpm, x, k, generators, max_batch, per_dim=True
    )
    return _terms((yield from loop))


def _denoiser(ddpm: DDPM, chunk_rows: int | None) -> Denoiser:
    """The network as the samplers call it; in fixed-size chunks when images must not depend
    on the batch they were drawn in."""
    return ddpm if chunk_rows is None else FixedChunkDenoiser(ddpm, chunk_rows)


def _within_ddim_steps(
    model: DDPM, options: dict[str, Any], given: Mapping[str, Any]
) -> dict[str, Any]:
    """``steps`` within the most DDIM steps the chain's timestep rule allows: a default is
    brought down to it, a requested value past it is an OptionError."""
    num_timesteps = model.diffusion.num_timesteps
    most = model.diffusion.ddim.max_steps(num_timesteps)
    if options["steps"] <= most or options["steps"] > num_timesteps:  # past T: option_limits
        return options
    if "steps" in given:
        steps = options["steps"]
        raise OptionError("steps", f"this model's DDIM takes 1..{most} steps, got {steps}")
    return {**options, "steps": most}


class DDPMKind(ModelKind):
    interface_version = 1  # of models.kinds' interface (INTERFACE_VERSION)
    name = "ddpm"
    config_class = DDPMConfig
    model_class = DDPM
    evaluation_module = "models.diffusion.evaluation"
    headline_method = "vlb_exact"
    term_method = "vlb_mc"
    exports_ema = True
    sample_options = {
        "steps": SAMPLE_STEPS,
        # 1 by default: it won on the first release's CPU-trained DDPM. On today's bundled
        # weights eta 0 does better at 1,000 samples (README, "Samplers at the same cost");
        # the default follows once the 10,000-sample card says so too.
        "eta": Option(1.0, "DDIM noise: 0 is the deterministic ODE, 1 DDPM-like noise"),
    }
    encode_options = {"steps": Option(50, "DDIM inversion steps, 1..T (more is more exact)")}
    decode_options = {"steps": Option(50, "DDIM decoding steps, 1..T")}
    encode_pixels = ("reconstruction",)

    def image_shape(self, config: DDPMConfig) -> ImageShape:
        return (config.unet.image_channels, config.unet.image_size, config.unet.image_size)

    def networks(self, model: nn.Module) -> list[nn.Module]:
        return [model.unet]

    def methods(self, model: nn.Module) -> dict[str, BoundMethod]:
        k_max = 2 * (model.diffusion.num_timesteps - 1)  # two draws per stratum of T - 1 terms
        return {
            "vlb_mc": BoundMethod(
                "vlb_mc",
                "k stratified timesteps of the bound, with a standard error",
                _vlb_mc,
                (2, k_max),
                min(20, k_max),
                run_per_dim=_vlb_mc_per_dim,
            ),
            "vlb_exact": BoundMethod(
                "vlb_exact",
                "all T terms of the bound (T network calls per image)",
                _vlb_exact,
                run_per_dim=_vlb_exact_per_dim,
            ),
        }

    def term_names(self, model: nn.Module, k: int | None = None) -> tuple[str, ...]:
        """L_T, one band of denoising terms per stratum of :func:`vlb_monte_carlo` (named by
        its timesteps, first and last), L_0."""
        k = self.methods(model)["vlb_mc"].default_k if k is None else k
        edges = stratum_edges(1, model.diffusion.num_timesteps, k // 2).tolist()
        bands = [f"denoising_t{edges[j]}_{edges[j + 1] - 1}_nats" for j in range(k // 2)]
        return ("prior_nats", *bands, "reconstruction_nats")

    def term_vector(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Generators,
        max_batch: int,
        k: int | None = None,
    ) -> Progressive[torch.Tensor]:
        """The k-timestep stratified bound term by term: L_T, the k // 2 geometric strata's
        estimated sums of L_t (two draws each; Nichol & Dhariwal 2021, Fig. 2 for why
        geometric), L_0: (B, k // 2 + 2) nats, k + 1 network calls per image."""
        k = self.methods(model)["vlb_mc"].default_k if k is None else k
        loop = vlb_monte_carlo_progressive(model.diffusion, model, x, k, generators, max_batch)
        bound = yield from loop
        assert bound.denoising_band_nats is not None
        columns = [bound.prior_nats[:, None], bound.denoising_band_nats]
        return torch.cat([*columns, bound.reconstruction_nats[:, None]], dim=1).double()

    def samplers(self, model: nn.Module) -> tuple[str, ...]:
        return ("ddim", "ancestral")

    def check_sample_options(
        self, model: nn.Module, options: dict[str, Any], given: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Ancestral sampling runs all T steps unless ``steps`` asks for fewer (a respaced
        chain, Nichol & Dhariwal 2021, Sec. 4), with the model's own variances: no eta."""
        if options["sampler"] != "ancestral":
            return _within_ddim_steps(model, options, given)
        if "eta" in given:
            raise OptionError(
                "eta", "ancestral sampling draws with the model's own variances; leave it out"
            )
        steps = options["steps"] if "steps" in given else model.diffusion.num_timesteps
        return {"sampler": "ancestral", "steps": steps}

    def option_limits(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        """Up to T steps; DDIM's encode/decode up to what the chain's timestep rule allows
        (a diffusers scheduler's ``steps_offset`` can push the last of T steps past T - 1)."""
        return {"steps": (1, model.diffusion.num_timesteps)}

    stepwise_operations = frozenset({"sample", "encode", "decode"})

    def step_network(self, model: nn.Module, chunk_rows: int | None) -> Denoiser:
        return _denoiser(model, chunk_rows)

    def encode_options_for(self, model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
        return _within_ddim_steps(model, super().encode_options_for(model, given), given)

    def decode_options_for(self, model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
        return _within_ddim_steps(model, super().decode_options_for(model, given), given)

    def sample(
        self,
        model: nn.Module,
        generators: Sequence[torch.Generator],
        options: Mapping[str, Any],
        chunk_rows: int | None,
    ) -> Progressive[torch.Tensor]:
        """DDIM (Song et al. 2020, Eq. 12) at ``steps`` and ``eta``, or ancestral sampling
        over ``steps`` of the (respaced) chain."""
        rows = self.sample_rows(model, generators, options)
        return run_rows(self.step_network(model, chunk_rows), rows)

    def sample_rows(
        self, model: nn.Module, generators: Sequence[torch.Generator], options: Mapping[str, Any]
    ) -> StepRows:
        shape = (len(generators), *model.image_shape)
        if options["sampler"] == "ancestral":
            return AncestralRows(model.diffusion, shape, generators, steps=options["steps"])
        return DDIMRows.from_prior(
            model.diffusion, shape, options["steps"], generators, options["eta"]
        )

    def latent_shape(self, model: nn.Module) -> tuple[int, ...]:
        return model.image_shape

    def encode(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Sequence[torch.Generator],
        options: Mapping[str, Any],
        chunk_rows: int | None,
    ) -> Progressive[Terms]:
        """The DDIM-inverted ``latents`` x_T (B, C, H, W), their decoding back
        (``reconstruction``), its RMS error on the [-1, 1] scale and its largest error in
        8-bit levels."""
        rows = self.encode_rows(model, x, generators, options)
        return run_rows(self.step_network(model, chunk_rows), rows)

    def encode_rows(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Sequence[torch.Generator],
        options: Mapping[str, Any],
    ) -> StepRows:
        steps = options["steps"]

        def decoding(latent: torch.Tensor) -> StepRows:
            return self.decode_rows(model, latent, options)

        def terms(latent: torch.Tensor, decoded: torch.Tensor) -> Terms:
            level_errors = signed_unit_to_pixels(decoded).int() - signed_unit_to_pixels(x).int()
            return {
                "latents": latent,
                "reconstruction": decoded,
                "reconstruction_rmse": (decoded - x).pow(2).flatten(1).mean(dim=1).sqrt(),
                "reconstruction_max_pixel_error": level_errors.abs().flatten(1).amax(dim=1),
            }

        return Then(DDIMInversionRows(model.diffusion, x, steps), decoding, steps, terms)

    def decode(
        self, model: nn.Module, z: torch.Tensor, options: Mapping[str, Any], chunk_rows: int | None
    ) -> Progressive[torch.Tensor]:
        """x_T (B, C, H, W) -> images by deterministic DDIM (eta = 0)."""
        return run_rows(self.step_network(model, chunk_rows), self.decode_rows(model, z, options))

    def decode_rows(
        self, model: nn.Module, z: torch.Tensor, options: Mapping[str, Any]
    ) -> StepRows:
        """:func:`models.diffusion.samplers.ddim_decode`'s rows: eta 0, unclipped unless the
        chain's DDIM rule clips (a diffusers folder's scheduler with ``clip_sample``)."""
        clip = model.diffusion.ddim.decode_clips
        return DDIMRows(model.diffusion, z, options["steps"], clip_denoised=clip)

    def networks_gflop(self, model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        x = torch.zeros(1, *model.image_shape, device=device)
        return {"unet": gflop_of(model, x, torch.zeros(1, dtype=torch.long, device=device))}

    def evaluations(self, model: nn.Module, work: Work) -> dict[str, int]:
        """Per image: one UNet call per timestep evaluated or step taken."""
        num_timesteps = model.diffusion.num_timesteps
        if work.operation == "likelihood" and work.method == "vlb_exact":
            return {"unet": num_timesteps}
        if work.operation == "likelihood":  # vlb_mc: L_0 and k timesteps
            assert work.k is not None, "vlb_mc needs k"
            return {"unet": work.k + 1}
        return {"unet": self.denoising_steps(model, work)}

    def denoising_steps(self, model: nn.Module, work: Work) -> int:
        options = work.options or {}
        steps = options.get("steps", 0) if work.operation != "likelihood" else 0
        return 2 * steps if work.operation == "encode" else steps  # invert, then decode back

    def training_loss(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator):
        """L_simple or L_hybrid at t ~ U{0..T-1} (Ho et al. 2020, Algorithm 1)."""
        diffusion = model.diffusion
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), generator=generator)
        noise = torch.randn(x.shape, generator=generator)
        losses = diffusion.training_losses(model, x, t.to(x.device), noise.to(x.device))
        return losses.loss.mean(), {
            "mse": losses.mse.mean().detach(),
            "vlb_bits_per_dim": losses.vlb_bits_per_dim.mean().detach(),
        }
