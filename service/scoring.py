"""Anomaly scores for /score: the model card's calibration, judged by :mod:`models.eval.calibrated`.

The thresholds, percentiles and flags are computed there, for the service and offline scoring
alike; here a card without the calibration asked for becomes a 409 naming the option to change.
A ``k`` or ``fpr`` the calibration cannot honour is an OptionError there, answered 400.
"""

from __future__ import annotations

from typing import Any

from models.eval import calibrated
from models.eval.calibrated import (
    CalibratedScore,
    NoCalibrationError,
    bound_calibrations,
    judge,
    score_k,
    scores,
    term_scores,
    threshold_for,
)
from service.errors import MissingCalibrationError

__all__ = [
    "CalibratedScore",
    "bound_calibrations",
    "calibration_for",
    "judge",
    "score_k",
    "scores",
    "term_scores",
    "threshold_for",
]


def calibration_for(
    card: dict[str, Any], model: str, method: str, correction: str
) -> CalibratedScore:
    """The card's calibration for ``method`` and ``correction``; 409 when it has none."""
    try:
        return calibrated.calibration_for(card, model, method, correction)
    except NoCalibrationError as error:
        raise MissingCalibrationError(error.field, error.message) from error
