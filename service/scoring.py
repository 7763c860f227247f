"""Anomaly scores for /score: the request's scoring plan, resolved by :mod:`models.eval.plan`.

Which bound, correction, background, calibration and maps a request gets is decided there, once,
for the service and offline scoring alike; here a card without what the request asks for
becomes a 409 naming the option to change. A ``k``, ``fpr`` or ``maps`` the model cannot
honour is an OptionError there, answered 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.errors import MissingCalibrationError

if TYPE_CHECKING:
    from models.eval.plan import Scoring, ScoringPlan
    from service.schemas import ScoreRequest


def plan_for(scoring: Scoring, request: ScoreRequest) -> ScoringPlan:
    """The plan of ``request``'s options; 409 when the card has no calibration for them."""
    from models.eval.plan import NoCalibrationError

    try:
        return scoring.plan(
            request.method,
            request.k,
            request.correction,
            request.fpr,
            request.maps,
            request.map_normalisation,
            request.regret_steps,
        )
    except NoCalibrationError as error:
        raise MissingCalibrationError(error.field, error.message) from error
