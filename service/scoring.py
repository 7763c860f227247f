"""Anomaly scores from likelihood bounds, judged against the model card's calibration.

The thresholds and percentiles come from :class:`models.eval.anomaly.Calibration`, built from the
held-out normal scores the evaluation CLI stored in the card, so the service flags exactly
what the evaluation measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.core.card import (
    SCORE_KINDS,
    TERM_DENSITY_CORRECTION,
    MethodCalibration,
    calibrations_in,
)
from models.eval.anomaly import Calibration, complexity_corrected_score, png_bits_per_dim
from models.eval.typicality import Density, bound_bits_per_dim
from service.errors import MissingCalibrationError, RequestError

if TYPE_CHECKING:
    from models.kinds import BoundMethod

__all__ = [
    "SCORE_KINDS",
    "CalibratedScore",
    "calibration_for",
    "scores",
    "term_scores",
    "threshold_for",
]


@dataclass(frozen=True)
class CalibratedScore:
    calibration: Calibration
    k: int | None
    density: Density | None = None  # correction 'terms': the density over term vectors


def calibration_for(
    card: dict[str, Any], model: str, method: str, correction: str
) -> CalibratedScore:
    """The card's calibration for ``method`` and ``correction``; 409 when it has none."""
    calibrations = calibrations_in(card)
    entry = calibrations.get(method)
    if correction == TERM_DENSITY_CORRECTION:
        return _term_density_for(entry, model, method, calibrations)
    kind = SCORE_KINDS[correction]
    if entry is None or kind not in entry.scores:
        raise MissingCalibrationError(
            "method",
            f"the {model} model card has no calibration for method {method!r} with "
            f"correction {correction!r}; calibrated: {_calibrated(calibrations)}",
        )
    fitted = entry.scores[kind]
    return CalibratedScore(Calibration.of(fitted.normal_scores, fitted.source), entry.k)


def _term_density_for(
    entry: MethodCalibration | None,
    model: str,
    method: str,
    calibrations: dict[str, MethodCalibration],
) -> CalibratedScore:
    if entry is None or entry.term_density is None:
        raise MissingCalibrationError(
            "correction",
            f"the {model} model card has no term density for method {method!r} (correction "
            f"'terms'; models.eval.typicality adds one); calibrated: {_calibrated(calibrations)}",
        )
    fitted = entry.term_density
    calibration = Calibration.of(fitted.calibration.normal_scores, fitted.calibration.source)
    return CalibratedScore(calibration, fitted.k, Density.from_dict(fitted))


def _calibrated(calibrations: dict[str, MethodCalibration]) -> str:
    pairs = [f"{method}/{kind}" for method, entry in calibrations.items() for kind in entry.scores]
    pairs += [
        f"{method}/{TERM_DENSITY_CORRECTION}"
        for method, entry in calibrations.items()
        if entry.term_density is not None
    ]
    return ", ".join(pairs) or "nothing"


def threshold_for(calibration: Calibration, fpr: float) -> float:
    if fpr < calibration.min_fpr:
        raise RequestError(
            "fpr",
            f"{fpr:g} is below {calibration.min_fpr:g}, the smallest rate "
            f"{len(calibration.normal_scores)} calibration images can resolve",
        )
    return calibration.threshold(fpr)


def scores(
    bits_per_dim: torch.Tensor, pixels: torch.Tensor, correction: str
) -> tuple[np.ndarray, np.ndarray]:
    """(score, png bits/dim) per image: the bound itself, or minus the PNG codelength."""
    png = png_bits_per_dim(pixels)
    score = complexity_corrected_score(bits_per_dim, png) if correction == "png" else bits_per_dim
    return score.double().numpy(), png.numpy()


def term_scores(
    vectors: torch.Tensor, density: Density, pixels: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, bits/dim, png bits/dim) per image for term vectors (B, F) in nats."""
    bits_per_dim = bound_bits_per_dim(vectors, pixels[0].numel())
    png = png_bits_per_dim(pixels).numpy()
    return density.score(vectors.double().numpy()), bits_per_dim.numpy(), png


def score_k(method: BoundMethod, requested_k: int | None, calibrated_k: int | None) -> int | None:
    """The k the calibration used: scores with another k are not comparable with its
    thresholds, so any other requested k is a 400."""
    from models.kinds import check_k

    if method.k_range is None:
        return check_k(method, requested_k)
    k = calibrated_k if calibrated_k is not None else method.default_k
    if requested_k is not None and requested_k != k:
        raise RequestError(
            "k", f"the {method.name} calibration used k={k}; leave k out or pass {k}"
        )
    return k
