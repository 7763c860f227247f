"""What a request costs before it runs: network evaluations times GFLOP per evaluation.

The estimate does two jobs. The batcher hands a free model lane to the cheapest waiting work
first, and long work gives its lane up between network calls while cheaper work waits
(:mod:`service.batching`). A synchronous endpoint refuses work past a ceiling with a 413 that
points to the task endpoints, which run it in the background.

What a model evaluates, and how many times per image, its kind says
(:meth:`models.kinds.ModelKind.evaluations`); the GFLOP of one evaluation of each network on
one image is counted by torch on the loaded checkpoint, so the estimate follows the weights
(a larger UNet costs more).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from models.kinds import Work
from service.errors import RequestError
from service.settings import Ceiling


@dataclass(frozen=True)
class Cost:
    gflop: float
    evaluations: dict[str, int]  # network -> evaluations on one image, over the whole request

    def __str__(self) -> str:
        counts = " and ".join(f"{n:,} {network}" for network, n in self.evaluations.items())
        return f"{self.gflop:,.0f} GFLOP ({counts} evaluations)"


@dataclass(frozen=True)
class ModelCosts:
    """One served model's costs: GFLOP per evaluation of each network, and how many
    evaluations each image of some work takes."""

    gflop_per_evaluation: dict[str, float]
    evaluations_per_image: Callable[[Work], dict[str, int]]

    def estimate(self, work: Work) -> Cost:
        per_image = self.evaluations_per_image(work)
        evaluations = {network: n * work.images for network, n in per_image.items()}
        gflop = sum(self.gflop_per_evaluation[net] * n for net, n in evaluations.items())
        return Cost(gflop, evaluations)


# The synchronous ceiling --------------------------------------------------------------------


class RequestTooCostlyError(RequestError):
    """More work than one synchronous answer may carry: 413, as for a body too large."""

    status_code = 413


def refuse_past_ceiling(cost: Cost, ceiling: Ceiling, field: str, instead: str) -> None:
    """Raise :class:`RequestTooCostlyError` naming the cost, the ceiling and ``instead``
    (where the work can go) when ``cost`` is over the ceiling; a ceiling of 0 is none."""
    if 0 < ceiling.gflop < cost.gflop:
        raise RequestTooCostlyError(
            field,
            f"this request would cost about {cost}, more than the {ceiling.gflop:,.0f} GFLOP "
            f"a synchronous request may cost ({ceiling.variable}); {instead}",
        )
