"""Anomaly detection and calibration of one score: AUROC and FPR at 95% TPR against each outlier
set, raw and complexity-corrected, and thresholds fitted on held-out normal images."""

from __future__ import annotations

import torch

from models.core.card import (
    BITS_PER_DIM,
    CODEC_CORRECTIONS,
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
)
from models.eval.codecs import codec_bits_per_dim
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
    codecs = sorted(set(CODEC_CORRECTIONS.values()))  # every codec a correction subtracts

    def corrected(raw: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {c: complexity_corrected_score(raw, codec_bits_per_dim(images, c)) for c in codecs}

    corrected_normal = corrected(raw_normal, normal)
    sets = {}
    for name, images in ctx.outlier_images(normal, n).items():
        raw = ctx.score(method.bound, images, f"{method.name} {name}", method.chunk)
        minus = {c: _detection(corrected_normal[c], s) for c, s in corrected(raw, images).items()}
        sets[name] = OutlierDetection(
            mean_bits_per_dim=raw.mean().item(),
            raw=_detection(raw_normal, raw),
            minus_png=minus.pop("png"),
            minus_codecs=minus or None,
        )
    detection = MethodDetection(method.k, len(normal), sets, raw_normal.mean().item())

    held_out, source = ctx.calibration_images(method.calibration_images)
    raw_held = ctx.score(method.bound, held_out, f"{method.name} calibration", method.chunk)
    # score kind -> (held-out scores to fit on, the other normal scores to check the fit on)
    kinds = {BITS_PER_DIM: (raw_held, raw_normal)}
    for codec, held in corrected(raw_held, held_out).items():
        kinds[f"bits_per_dim_minus_{codec}"] = (held, corrected_normal[codec])
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
