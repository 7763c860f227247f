"""What the evaluation adds to each score's calibration besides thresholds: the per-pixel
statistics of its anomaly maps (:mod:`models.eval.maps`) and a density over its bound's terms
(:mod:`models.eval.typicality`), both from the held-out normal images the thresholds use.

The term density is fitted on the first half of those images and calibrated on the second, so
its thresholds are measured on images it was not fitted to. Maps are measured for the bounds
that have a per-pixel form and cost at most ``MAX_MAP_EVALUATIONS`` network evaluations per
image (not the exact DDPM bound: T of them).
"""

from __future__ import annotations

from typing import Any

import torch

from models.core.card import MethodCalibration, MethodPixelCalibration
from models.eval.context import EvalContext, ScoreMethod
from models.kinds import ModelKind

MIN_DENSITY_IMAGES = 20  # the fit needs more vectors than terms, and the calibration some
MAX_MAP_EVALUATIONS = 100


def pixel_calibration(
    kind: ModelKind, model: torch.nn.Module, method: ScoreMethod, ctx: EvalContext
) -> MethodPixelCalibration | None:
    """The per-pixel calibration of ``method``'s maps, or None where it has no cheap map."""
    from models.eval.maps import measure_pixel_calibration
    from models.kinds import Work

    bound = kind.methods(model)[method.name]
    cost = kind.evaluations(model, Work("likelihood", 1, method.name, method.k))
    if bound.run_per_dim is None or sum(cost.values()) > MAX_MAP_EVALUATIONS:
        return None
    images, source = ctx.calibration_images(method.calibration_images)
    calibration = measure_pixel_calibration(
        kind,
        model,
        images.to(torch.uint8),
        ctx.generator,
        method.name,
        method.k,
        source,
        batch_size=ctx.sizes.batch_size,
        max_batch=ctx.sizes.network_batch,
    )
    return calibration.to_card()


def with_term_density(
    kind: ModelKind, model: torch.nn.Module, method: ScoreMethod, ctx: EvalContext, entry: Any
) -> MethodCalibration:
    """``entry`` (the method's calibration) with a term density, for the kind's term method."""
    import dataclasses

    from models.eval.typicality import fit_and_calibrate, term_vectors

    if method.name != kind.term_method:
        return entry
    images, source = ctx.calibration_images(method.calibration_images)
    if len(images) < MIN_DENSITY_IMAGES:
        return entry
    vectors = term_vectors(model, images, method.k, ctx.generator, ctx.sizes.batch_size)
    half = len(vectors) // 2
    density = fit_and_calibrate(
        vectors[:half],
        vectors[half:],
        kind.term_names(model, method.k),
        method.k,
        "gaussian",
        f"{source}, first {half}",
        f"{source}, last {len(vectors) - half}",
    )
    return dataclasses.replace(entry, term_density=density)
