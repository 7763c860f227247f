"""Anomaly detection and calibration of one score: AUROC and FPR at 95% TPR against each outlier
set, raw and complexity-corrected, and thresholds fitted on held-out normal images."""

from __future__ import annotations

import torch

from models.core.card import (
    BITS_PER_DIM,
    BITS_PER_DIM_MINUS_PNG,
    REPORTED_FPRS,
    Detection,
    MethodCalibration,
    MethodDetection,
    OutlierDetection,
    ScoreCalibration,
)
from models.eval.anomaly import (
    Calibration,
    auroc,
    complexity_corrected_score,
    fpr_at_tpr,
    png_bits_per_dim,
)
from models.eval.context import EvalContext, ScoreMethod


def _detection(normal: torch.Tensor, anomalous: torch.Tensor) -> Detection:
    return Detection(auroc(normal, anomalous), fpr_at_tpr(normal, anomalous))


def anomaly_and_calibration(
    method: ScoreMethod, ctx: EvalContext, known_normal_scores: torch.Tensor | None
) -> tuple[MethodDetection, MethodCalibration]:
    """AUROC / FPR@95 against each outlier set, raw and minus PNG bits/dim (Serra et al. 2019),
    and the calibration on held-out normal images with the FPR it achieves on the others.

    ``known_normal_scores`` (N,): this method's scores of the first test images when another
    section measured them already (the likelihood pass of the headline bound)."""
    n = method.normal_images
    normal = ctx.test[:n]
    if known_normal_scores is not None and len(known_normal_scores) >= n:
        raw_normal = known_normal_scores[:n]
    else:
        raw_normal = ctx.score(method.bound, normal, f"{method.name} normal", method.chunk)
    png_normal = png_bits_per_dim(normal)
    corrected_normal = complexity_corrected_score(raw_normal, png_normal)
    sets = {}
    for name, images in ctx.outlier_images(normal, n).items():
        raw = ctx.score(method.bound, images, f"{method.name} {name}", method.chunk)
        corrected = complexity_corrected_score(raw, png_bits_per_dim(images))
        sets[name] = OutlierDetection(
            mean_bits_per_dim=raw.mean().item(),
            raw=_detection(raw_normal, raw),
            minus_png=_detection(corrected_normal, corrected),
        )
    detection = MethodDetection(method.k, len(normal), sets, raw_normal.mean().item())

    held_out, source = ctx.calibration_images(method.calibration_images)
    raw_held = ctx.score(method.bound, held_out, f"{method.name} calibration", method.chunk)
    # score kind -> (held-out scores to fit on, the other normal scores to check the fit on)
    kinds = {
        BITS_PER_DIM: (raw_held, raw_normal),
        BITS_PER_DIM_MINUS_PNG: (
            complexity_corrected_score(raw_held, png_bits_per_dim(held_out)),
            corrected_normal,
        ),
    }
    scores = {}
    for kind, (held, other_normal) in kinds.items():
        fitted = Calibration.of(held, source)
        fprs = [f for f in REPORTED_FPRS if f >= fitted.min_fpr]
        entry = fitted.to_dict(fprs)
        observed = {
            str(f): float((other_normal.numpy() > fitted.threshold(f)).mean()) for f in fprs
        }
        scores[kind] = ScoreCalibration(
            source=entry["source"],
            num_images=entry["num_images"],
            thresholds=entry["thresholds"],
            normal_scores=tuple(entry["normal_scores"]),
            observed_fpr_on_other_normal_images=observed,
        )
    return detection, MethodCalibration(method.k, scores)
