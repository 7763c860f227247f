"""Batched calls into :mod:`models`: concatenate the jobs' rows, give every row its job's
generator, make one ``models`` call, split the result back per job.

These functions hold no maths; they are what the batcher runs in its worker thread. Each job's
rows share one generator seeded by that job alone, so a job's output does not depend on the
other jobs in its batch (see :mod:`models.core.noise`).

No NaN or infinity leaves these functions: every output is checked per job, and a job with a
non-finite value gets a :class:`~models.core.pixels.NonFiniteError` (rows counted within the job)
instead of its result, which the batcher raises to that request alone.

The long ones (bounds, DDPM sampling, encoding and decoding) are progressive
(:mod:`models.core.progressive`): they yield after every network call, where the batcher may hand
the model lane to cheaper work, and return the per-job results; outside the batcher, run
them with :func:`models.core.progressive.run_to_end`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from models.core.noise import seeded_generator
from models.core.pixels import (
    NonFiniteError,
    pixels_to_signed_unit,
    require_finite,
    signed_unit_to_pixels,
)
from models.core.progressive import Progressive, reported
from models.diffusion.bound import vlb_exact_progressive, vlb_monte_carlo_progressive
from models.diffusion.ddpm import DDPM
from models.diffusion.samplers import (
    Denoiser,
    ddim_decode_progressive,
    ddim_invert_progressive,
    ddim_sample_progressive,
    ddpm_ancestral_sample_progressive,
)
from models.nn.batch_invariance import FixedChunkDenoiser
from models.vae.model import VAE

Progress = Callable[[int, int], None]
Tensors = dict[str, torch.Tensor]
PerJob = list[torch.Tensor | NonFiniteError]


@dataclass(frozen=True)
class SampleJob:
    n: int
    seed: int
    progress: Progress | None = None


@dataclass(frozen=True)
class ImagesJob:
    """Inputs (B, ...) for one request: uint8 images, or float latents for decoding."""

    inputs: torch.Tensor
    seed: int = 0
    progress: Progress | None = None

    @property
    def rows(self) -> int:
        return self.inputs.shape[0]


def _row_generators(counts: Sequence[tuple[int, int]]) -> list[torch.Generator]:
    """One generator per (seed, rows) job, repeated over its rows."""
    rows: list[torch.Generator] = []
    for seed, count in counts:
        generator = seeded_generator(seed)
        rows += [generator] * count
    return rows


def _report(jobs: Sequence[SampleJob | ImagesJob]) -> Progress:
    def on_step(done: int, total: int) -> None:
        for job in jobs:
            if job.progress is not None:
                job.progress(done, total)

    return on_step


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _split(batch: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    return list(torch.split(batch.cpu(), list(sizes)))


def _split_terms(terms: Tensors, sizes: Sequence[int]) -> list[Tensors]:
    per_name = {name: _split(values, sizes) for name, values in terms.items()}
    return [{name: parts[i] for name, parts in per_name.items()} for i in range(len(sizes))]


def _checked(
    terms: Tensors, sizes: Sequence[int], pixels: Collection[str] = ()
) -> list[Tensors | NonFiniteError]:
    """``terms`` split per job, with the ``pixels`` entries (floats in [-1, 1]) made uint8 and
    every other entry checked finite; a job holding NaN or +-Inf gets its NonFiniteError."""
    checked: list[Tensors | NonFiniteError] = []
    for job_terms in _split_terms(terms, sizes):
        try:
            for name, values in job_terms.items():
                if name in pixels:
                    job_terms[name] = signed_unit_to_pixels(values)
                else:
                    require_finite(values, name)
        except NonFiniteError as error:
            checked.append(error)
        else:
            checked.append(job_terms)
    return checked


def _pixels(x: torch.Tensor, sizes: Sequence[int]) -> PerJob:
    """Floats in [-1, 1] (B, C, H, W) -> per job uint8, or its NonFiniteError."""
    return [
        out if isinstance(out, NonFiniteError) else out["pixels"]
        for out in _checked({"pixels": x}, sizes, pixels=("pixels",))
    ]


def _signed_unit(jobs: Sequence[ImagesJob], device: torch.device) -> torch.Tensor:
    return pixels_to_signed_unit(torch.cat([job.inputs for job in jobs])).to(device)


# Sampling ---------------------------------------------------------------------------------


def vae_sample(
    vae: VAE,
    jobs: Sequence[SampleJob],
    temperature: float,
    sample_pixels: bool,
    chunk_rows: int | None = None,
) -> PerJob:
    """Per job, uint8 (n, C, H, W)."""
    generators = _row_generators([(job.seed, job.n) for job in jobs])
    images = vae.sample(len(generators), generators, temperature, sample_pixels, chunk_rows)
    return _pixels(images, [job.n for job in jobs])


def _denoiser(ddpm: DDPM, chunk_rows: int | None) -> Denoiser:
    """The network as the samplers call it; in fixed-size chunks when images must not depend
    on the batch they were drawn in."""
    return ddpm if chunk_rows is None else FixedChunkDenoiser(ddpm, chunk_rows)


def ddpm_sample(
    ddpm: DDPM,
    jobs: Sequence[SampleJob],
    sampler: str,
    steps: int,
    eta: float,
    chunk_rows: int | None = None,
) -> Progressive[PerJob]:
    """Per job, uint8 (n, C, H, W), from DDIM (``steps``, ``eta``) or the ancestral sampler."""
    generators = _row_generators([(job.seed, job.n) for job in jobs])
    shape = (len(generators), *ddpm.image_shape)
    net, diffusion = _denoiser(ddpm, chunk_rows), ddpm.diffusion
    if sampler == "ancestral":
        loop = ddpm_ancestral_sample_progressive(diffusion, net, shape, generators)
    else:
        loop = ddim_sample_progressive(diffusion, net, shape, steps, generators, eta)
    x = yield from reported(loop, _report(jobs))
    return _pixels(x, [job.n for job in jobs])


# Likelihood bounds ------------------------------------------------------------------------


@torch.no_grad()
def vae_bound(
    vae: VAE, jobs: Sequence[ImagesJob], method: str, k: int | None, max_batch: int
) -> Progressive[list[Tensors | NonFiniteError]]:
    """Per job, {term name: (B,) float64}: nats terms and total_bits_per_dim. IWAE decodes
    about ``max_batch`` images per network call."""
    x = _signed_unit(jobs, _device(vae))
    generators = _row_generators([(job.seed, job.rows) for job in jobs])
    if method == "iwae":
        assert k is not None
        loop = vae.iwae_bound_progressive(x, k, generators, max_batch)
        bound = yield from reported(loop, _report(jobs))
        terms = {"total_nats": bound.total_nats, "total_bits_per_dim": bound.total_bits_per_dim}
    else:
        elbo = vae.negative_elbo(x, generators)
        terms = {
            "total_nats": elbo.total_nats,
            "total_bits_per_dim": elbo.total_bits_per_dim,
            "reconstruction_nats": elbo.reconstruction_nats,
            "kl_nats": elbo.kl_nats,
        }
    return _checked({n: t.double() for n, t in terms.items()}, [job.rows for job in jobs])


@torch.no_grad()
def ddpm_bound(
    ddpm: DDPM, jobs: Sequence[ImagesJob], method: str, k: int | None, max_batch: int
) -> Progressive[list[Tensors | NonFiniteError]]:
    """Per job, {term name: (B,) float64}: L_T, the denoising sum, L_0, total, stderr."""
    x = _signed_unit(jobs, _device(ddpm))
    generators = _row_generators([(job.seed, job.rows) for job in jobs])
    if method == "vlb_exact":
        loop = vlb_exact_progressive(ddpm.diffusion, ddpm, x, generators, max_batch)
    else:
        assert k is not None
        loop = vlb_monte_carlo_progressive(ddpm.diffusion, ddpm, x, k, generators, max_batch)
    bound = yield from reported(loop, _report(jobs))
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
    return _checked({n: t.double() for n, t in terms.items()}, [job.rows for job in jobs])


# Encoding and decoding --------------------------------------------------------------------


@torch.no_grad()
def vae_encode(
    vae: VAE, jobs: Sequence[ImagesJob], draw_sample: bool
) -> list[Tensors | NonFiniteError]:
    """Per job, posterior ``mean`` and ``logvar`` (B, Z), and a ``sample`` z if asked."""
    posterior = vae.encode(_signed_unit(jobs, _device(vae)))
    out = {"mean": posterior.mean, "logvar": posterior.logvar}
    if draw_sample:
        generators = _row_generators([(job.seed, job.rows) for job in jobs])
        out["sample"] = posterior.rsample(generators)[0]
    return _checked(out, [job.rows for job in jobs])


def ddpm_encode(
    ddpm: DDPM, jobs: Sequence[ImagesJob], steps: int, chunk_rows: int | None = None
) -> Progressive[list[Tensors | NonFiniteError]]:
    """Per job, the DDIM-inverted ``latent`` x_T (B, C, H, W) and its decoded
    ``reconstruction`` as uint8 (B, C, H, W)."""
    x = _signed_unit(jobs, _device(ddpm))
    net = _denoiser(ddpm, chunk_rows)
    latent = yield from ddim_invert_progressive(ddpm.diffusion, net, x, steps)
    decoded = yield from ddim_decode_progressive(ddpm.diffusion, net, latent, steps)
    out = {
        "latent": latent,
        "reconstruction": decoded,
        "rmse": (decoded - x).pow(2).flatten(1).mean(dim=1).sqrt(),
    }
    return _checked(out, [job.rows for job in jobs], pixels=("reconstruction",))


@torch.no_grad()
def vae_decode(vae: VAE, jobs: Sequence[ImagesJob], chunk_rows: int | None = None) -> PerJob:
    """Latents z (B, Z) -> per job uint8 (B, C, H, W), the decoder's mean image."""
    z = torch.cat([job.inputs for job in jobs]).to(_device(vae))
    return _pixels(vae.decode(z, chunk_rows).mean_image(), [job.rows for job in jobs])


def ddpm_decode(
    ddpm: DDPM, jobs: Sequence[ImagesJob], steps: int, chunk_rows: int | None = None
) -> Progressive[PerJob]:
    """Latents x_T (B, C, H, W) -> per job uint8 (B, C, H, W) by deterministic DDIM."""
    x_T = torch.cat([job.inputs for job in jobs]).to(_device(ddpm))
    net = _denoiser(ddpm, chunk_rows)
    loop = ddim_decode_progressive(ddpm.diffusion, net, x_T, steps)
    images = yield from reported(loop, _report(jobs))
    return _pixels(images, [job.rows for job in jobs])
