"""Batched calls into :mod:`models`: concatenate the jobs' rows, give every row its job's
generator, make one call of the model's kind (:mod:`models.kinds`), split the result back
per job.

These functions hold no maths; they are what the batcher runs in its worker thread. Each job's
rows share one generator seeded by that job alone, so a job's output does not depend on the
other jobs in its batch (see :mod:`models.core.noise`).

No NaN or infinity leaves these functions: every output is checked per job, and a job with a
non-finite value gets a :class:`~models.core.pixels.NonFiniteError` (rows counted within the job)
instead of its result, which the batcher raises to that request alone.

All of them are progressive (:mod:`models.core.progressive`): they yield after every network
call, where the batcher may hand the model lane to cheaper work, and return the per-job
results; outside the batcher, run them with :func:`models.core.progressive.run_to_end`. Sampling,
encoding and decoding also come as one job's :class:`StepRequest` (``*_rows``), for kinds
whose loops come a step at a time, which the step scheduler (:mod:`service.stepping`) runs
with every other request of the model in one network call per step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.core.noise import seeded_generator
from models.core.pixels import (
    NonFiniteError,
    pixels_to_signed_unit,
    require_finite,
    signed_unit_to_pixels,
)
from models.core.progressive import Progressive, reported
from models.core.stepwise import StepRows
from models.kinds import TOTAL_NATS_PER_DIM, BoundMethod, ModelKind, RegretMethod

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


# The four operations, for any kind ---------------------------------------------------------


@torch.no_grad()
def sample(
    kind: ModelKind,
    model: nn.Module,
    jobs: Sequence[SampleJob],
    options: Mapping[str, Any],
    chunk_rows: int | None = None,
) -> Progressive[PerJob]:
    """Per job, uint8 (n, C, H, W) drawn by the kind's sampler with ``options``."""
    generators = _row_generators([(job.seed, job.n) for job in jobs])
    loop = kind.sample(model, generators, options, chunk_rows)
    x = yield from reported(loop, _report(jobs))
    return _pixels(x, [job.n for job in jobs])


@torch.no_grad()
def bound(
    method: BoundMethod,
    model: nn.Module,
    jobs: Sequence[ImagesJob],
    k: int | None,
    max_batch: int,
) -> Progressive[list[Tensors | NonFiniteError]]:
    """Per job, {term name: (B,) float64}: the bound's terms in nats and total_bits_per_dim;
    about ``max_batch`` rows per network call."""
    x = _signed_unit(jobs, _device(model))
    generators = _row_generators([(job.seed, job.rows) for job in jobs])
    terms = yield from reported(method.run(model, x, k, generators, max_batch), _report(jobs))
    return _checked({n: t.double() for n, t in terms.items()}, [job.rows for job in jobs])


@torch.no_grad()
def regret(
    method: RegretMethod,
    model: nn.Module,
    jobs: Sequence[ImagesJob],
    steps: int,
    learning_rate: float,
    max_batch: int,
) -> Progressive[list[Tensors | NonFiniteError]]:
    """Per job, the Likelihood Regret's terms (B,) float64: the bound with the amortised
    posterior and with each image's optimised one (:class:`models.kinds.RegretMethod`, which
    turns gradients on for its own steps); about ``max_batch`` rows per network call."""
    x = _signed_unit(jobs, _device(model))
    generators = _row_generators([(job.seed, job.rows) for job in jobs])
    loop = method.run(model, x, steps, learning_rate, generators, max_batch)
    terms = yield from reported(loop, _report(jobs))
    return _checked({n: t.double() for n, t in terms.items()}, [job.rows for job in jobs])


@torch.no_grad()
def term_vector(
    kind: ModelKind,
    model: nn.Module,
    jobs: Sequence[ImagesJob],
    k: int | None,
    max_batch: int,
) -> Progressive[list[Tensors | NonFiniteError]]:
    """Per job, {"terms": (B, F) float64}: the kind's term vector of its term method's bound
    (:meth:`models.kinds.ModelKind.term_vector`); about ``max_batch`` rows per network call."""
    x = _signed_unit(jobs, _device(model))
    generators = _row_generators([(job.seed, job.rows) for job in jobs])
    loop = kind.term_vector(model, x, generators, max_batch, k)
    vectors = yield from reported(loop, _report(jobs))
    return _checked({"terms": vectors.double()}, [job.rows for job in jobs])


@torch.no_grad()
def bound_per_dim(
    kind: ModelKind,
    method: BoundMethod,
    model: nn.Module,
    jobs: Sequence[ImagesJob],
    k: int | None,
    max_batch: int,
) -> Progressive[list[Tensors | NonFiniteError]]:
    """:func:`bound`, with the bound also per dimension for anomaly maps: per job the same
    terms, and TOTAL_NATS_PER_DIM (B, C, H, W) float64, summing to total_nats."""
    x = _signed_unit(jobs, _device(model))
    generators = _row_generators([(job.seed, job.rows) for job in jobs])
    loop = kind.bound_per_dim(model, x, generators, max_batch, method.name, k)
    terms = yield from reported(loop, _report(jobs))
    assert TOTAL_NATS_PER_DIM in terms, f"{method.name} gave no {TOTAL_NATS_PER_DIM}"
    return _checked({n: t.double() for n, t in terms.items()}, [job.rows for job in jobs])


@torch.no_grad()
def encode(
    kind: ModelKind,
    model: nn.Module,
    jobs: Sequence[ImagesJob],
    options: Mapping[str, Any],
    chunk_rows: int | None = None,
) -> Progressive[list[Tensors | NonFiniteError]]:
    """Per job, the kind's named encodings (B, ...); its image outputs as uint8."""
    x = _signed_unit(jobs, _device(model))
    generators = _row_generators([(job.seed, job.rows) for job in jobs])
    loop = kind.encode(model, x, generators, options, chunk_rows)
    out = yield from reported(loop, _report(jobs))
    return _checked(out, [job.rows for job in jobs], pixels=kind.encode_pixels)


@torch.no_grad()
def decode(
    kind: ModelKind,
    model: nn.Module,
    jobs: Sequence[ImagesJob],
    options: Mapping[str, Any],
    chunk_rows: int | None = None,
) -> Progressive[PerJob]:
    """Latents (B, *latent_shape) -> per job uint8 (B, C, H, W)."""
    z = torch.cat([job.inputs for job in jobs]).to(_device(model))
    loop = kind.decode(model, z, options, chunk_rows)
    images = yield from reported(loop, _report(jobs))
    return _pixels(images, [job.rows for job in jobs])


# The same operations as step-level requests (service.stepping) ------------------------------


@dataclass(frozen=True)
class StepRequest:
    """One job as the step scheduler runs it: ``make()`` builds its rows (in the worker
    thread), ``finish(result)`` turns its loop's result into the job's answer."""

    make: Callable[[], StepRows]
    finish: Callable[[Any], Any]


def sample_rows(
    kind: ModelKind, model: nn.Module, job: SampleJob, options: Mapping[str, Any]
) -> StepRequest:
    """:func:`sample` for one job: uint8 (n, C, H, W), or its NonFiniteError."""
    return StepRequest(
        lambda: kind.sample_rows(model, _row_generators([(job.seed, job.n)]), options),
        lambda x: _pixels(x, [job.n])[0],
    )


def encode_rows(
    kind: ModelKind, model: nn.Module, job: ImagesJob, options: Mapping[str, Any]
) -> StepRequest:
    """:func:`encode` for one job."""

    def make() -> StepRows:
        x = _signed_unit([job], _device(model))
        return kind.encode_rows(model, x, _row_generators([(job.seed, job.rows)]), options)

    return StepRequest(make, lambda out: _checked(out, [job.rows], kind.encode_pixels)[0])


def decode_rows(
    kind: ModelKind, model: nn.Module, job: ImagesJob, options: Mapping[str, Any]
) -> StepRequest:
    """:func:`decode` for one job."""
    return StepRequest(
        lambda: kind.decode_rows(model, job.inputs.to(_device(model)), options),
        lambda images: _pixels(images, [job.rows])[0],
    )


STEP_RUNNERS = {"sample": sample_rows, "encode": encode_rows, "decode": decode_rows}
