"""Calibrated anomaly scores: a bound judged against the model card's held-out normal images.

Per image: the score (the bound in bits/dim, minus a codec's codelength or a background
model's bound, or the negative log density of the bound's term vector for 'terms'), whether it
is past the threshold calibrated for a false-positive rate, and its percentile among the
held-out normal scores. Which of these a request gets is decided once, by
:mod:`models.eval.plan`; :class:`CalibratedScorer` runs a plan in one synchronous pass, as the
HTTP service's ``/score`` (:mod:`service.calls`) runs it through its batcher, so a score,
threshold and flag mean the same wherever they were computed (offline scoring:
:mod:`offline.batches`).

Errors carry the option they blame: :class:`NoCalibrationError` when the card has nothing for
the method and correction (the service answers 409), :class:`models.kinds.OptionError` for a
``k`` or ``fpr`` the calibration cannot honour (400).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from models.eval.plan import (
    CORRECTIONS,
    Background,
    CalibratedScore,
    ImageScores,
    NoCalibrationError,
    Scoring,
    ScoringPlan,
    bound_calibrations,
    score_k,
    threshold_for,
)

if TYPE_CHECKING:
    from torch import nn

    from models.kinds import BoundMethod, Generators, ModelKind

__all__ = [
    "CORRECTIONS",
    "CalibratedScore",
    "CalibratedScorer",
    "ImageScores",
    "NoCalibrationError",
    "bound_calibrations",
    "calibration_for",
    "score_k",
    "threshold_for",
]


def calibration_for(
    card: Mapping[str, Any], model: str, method: str, correction: str
) -> CalibratedScore:
    """The card's calibration for ``method`` and ``correction`` (``model`` names the model in
    the error); NoCalibrationError when it has none."""
    return Scoring(model, None, None, card)._calibrated(method, correction)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CalibratedScorer:
    """One model's calibrated anomaly score, all options fixed: ``score(pixels, generators)``
    judges uint8 images in one synchronous pass, as ``/score`` judges a request's images.

    Build it with :meth:`of`, which resolves the options exactly as ``/score`` does
    (:meth:`models.eval.plan.Scoring.plan`)."""

    name: str
    kind: ModelKind
    model: nn.Module
    plan: ScoringPlan

    @classmethod
    def of(
        cls,
        name: str,
        kind: ModelKind,
        model: nn.Module,
        card: Mapping[str, Any],
        method: str | None = None,
        correction: str | None = None,
        fpr: float = 0.05,
        k: int | None = None,
        background: Background | None = None,
        regret_steps: int | None = None,
    ) -> CalibratedScorer:
        """NoCalibrationError or OptionError for options the model or its card cannot honour;
        ``background``: the checked background model (models.eval.plan.check_background) of
        a card that names one, for correction 'ratio'."""
        scoring = Scoring(name, kind, model, card, background)
        plan = scoring.plan(method, k, correction, fpr, regret_steps=regret_steps)
        return cls(name, kind, model, plan)

    @property
    def method(self) -> BoundMethod:
        return self.plan.method

    @property
    def k(self) -> int | None:
        return self.plan.k

    @property
    def correction(self) -> str:
        return self.plan.correction

    @property
    def fpr(self) -> float:
        return self.plan.fpr

    @property
    def threshold(self) -> float:
        return self.plan.threshold

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this model reads."""
        return self.kind.image_shape(self.model.config)

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, generators: Generators, max_batch: int) -> ImageScores:
        """uint8 images (B, C, H, W) -> their scores; about ``max_batch`` rows per network
        call. Raises NonFiniteError naming the rows whose bound is NaN or infinite."""
        from models.core.pixels import pixels_to_signed_unit, require_finite
        from models.core.progressive import run_to_end
        from models.kinds import OPTIMISED_TOTAL_BITS_PER_DIM

        plan = self.plan
        x = pixels_to_signed_unit(pixels).to(next(self.model.parameters()).device)
        if plan.density is not None:
            loop = self.kind.term_vector(self.model, x, generators, max_batch, plan.k)
            vectors = run_to_end(loop).double().cpu()
            require_finite(vectors, "terms")
            return plan.judge(pixels, vectors=vectors)
        if plan.regret is not None:
            assert plan.regret_steps is not None and plan.regret_learning_rate is not None
            loop = plan.regret.run(
                self.model, x, plan.regret_steps, plan.regret_learning_rate, generators, max_batch
            )
            terms = {name: t.double().cpu() for name, t in run_to_end(loop).items()}
            for name, values in terms.items():
                require_finite(values, name)
            return plan.judge(
                pixels,
                terms["total_bits_per_dim"],
                optimised_bits_per_dim=terms[OPTIMISED_TOTAL_BITS_PER_DIM],
            )
        # The background's draws start where the foreground's did, as a /score request's do.
        unused = _copies(generators) if plan.background is not None else None
        bits = _bound(plan.method, self.model, x, plan.k, generators, max_batch)
        background = None
        if plan.background is not None:
            bg = plan.background
            background = _bound(bg.method, bg.model, x, bg.k, unused, max_batch)
        return plan.judge(pixels, bits, background_bits_per_dim=background)


def _copies(generators: Generators) -> Generators:
    """Generators in the states of ``generators``, rows that share one sharing its copy."""
    if isinstance(generators, torch.Generator):
        copy = torch.Generator(device=generators.device)
        copy.set_state(generators.get_state())
        return copy
    copies: dict[int, torch.Generator] = {}
    return [copies.setdefault(id(g), _copies(g)) for g in generators]  # type: ignore[misc]


def _bound(method: BoundMethod, model: nn.Module, x, k, generators, max_batch) -> torch.Tensor:
    from models.core.pixels import require_finite
    from models.core.progressive import run_to_end

    device = next(model.parameters()).device
    terms = run_to_end(method.run(model, x.to(device), k, generators, max_batch))
    terms = {name: t.double().cpu() for name, t in terms.items()}
    for name, values in terms.items():
        require_finite(values, name)
    return terms["total_bits_per_dim"]
