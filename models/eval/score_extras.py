"""What the evaluation adds to each score's calibration besides thresholds: the per-pixel
statistics of its anomaly maps (:mod:`models.eval.maps`), a density over its bound's terms
(:mod:`models.eval.typicality`), both from the held-out normal images the thresholds use, and
the Likelihood Regret of the bound a kind offers one of (:mod:`models.eval.regret`).

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


def with_likelihood_regret(
    kind: ModelKind,
    model: torch.nn.Module,
    ctx: EvalContext,
    calibrations: dict[str, MethodCalibration],
) -> dict[str, MethodCalibration]:
    """``calibrations`` with the Likelihood Regret of the bound the kind offers one of (at its
    default steps and learning rate): its AUROC against each outlier set beside the raw
    bound's, on ``regret_images`` normal images and as many per set, and its calibration on
    ``regret_calibration_images`` held-out ones. Unchanged for a kind without a regret, or
    sizes of 0."""
    import dataclasses

    from models.eval.regret import measure_regret

    regret = kind.likelihood_regret(model)
    n, n_held = ctx.sizes.regret_images, ctx.sizes.regret_calibration_images
    if regret is None or regret.bound not in calibrations or not n or not n_held:
        return calibrations
    normal = ctx.test[:n]
    held_out, source = ctx.calibration_images(n_held)
    record = measure_regret(
        regret,
        model,
        normal,
        ctx.outlier_images(normal, n),
        held_out,
        source,
        ctx.generator,
        batch_size=ctx.sizes.batch_size,
        max_batch=ctx.sizes.network_batch,
    )
    entry = dataclasses.replace(calibrations[regret.bound], likelihood_regret=record)
    return {**calibrations, regret.bound: entry}
