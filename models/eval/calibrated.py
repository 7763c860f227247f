"""Calibrated anomaly scores: a bound judged against the model card's held-out normal images.

Per image: the score (the bound in bits/dim, minus the PNG codelength for ``correction`` 'png',
or the negative log density of the bound's term vector for 'terms'), whether it is past the
threshold calibrated for a false-positive rate, and its percentile among the held-out normal
scores. The HTTP service's ``/score`` (:mod:`service.calls`) and offline scoring
(:mod:`offline.spark_score`) both judge images here, so a score, threshold and flag mean the
same wherever they were computed.

Errors carry the option they blame: :class:`NoCalibrationError` when the card has nothing for
the method and correction (the service answers 409), :class:`models.kinds.OptionError` for a
``k`` or ``fpr`` the calibration cannot honour (400).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.core.card import (
    BITS_PER_DIM,
    SCORE_KINDS,
    TERM_DENSITY_CORRECTION,
    MethodCalibration,
    calibrations_in,
)
from models.eval.anomaly import Calibration, complexity_corrected_score, png_bits_per_dim
from models.eval.typicality import Density, bound_bits_per_dim
from models.kinds import OptionError, check_k

if TYPE_CHECKING:
    from torch import nn

    from models.kinds import BoundMethod, Generators, ModelKind

# The corrections a card can calibrate: the bound as it is, minus the PNG codelength, or a
# density over the bound's terms.
CORRECTIONS = (*SCORE_KINDS, TERM_DENSITY_CORRECTION)


class NoCalibrationError(OptionError):
    """The model card has no calibration for the method and correction asked for: options this
    model cannot honour until its card has one (``field`` names which to change; the service
    answers 409, where other OptionErrors are 400s)."""


@dataclass(frozen=True)
class CalibratedScore:
    calibration: Calibration
    k: int | None
    density: Density | None = None  # correction 'terms': the density over term vectors


def calibration_for(
    card: Mapping[str, Any], model: str, method: str, correction: str
) -> CalibratedScore:
    """The card's calibration for ``method`` and ``correction`` (``model`` names the model in
    the error); NoCalibrationError when it has none."""
    calibrations = calibrations_in(card)
    entry = calibrations.get(method)
    if correction == TERM_DENSITY_CORRECTION:
        return _term_density_for(entry, model, method, calibrations)
    kind = SCORE_KINDS[correction]
    if entry is None or kind not in entry.scores:
        raise NoCalibrationError(
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
        raise NoCalibrationError(
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


def bound_calibrations(card: Mapping[str, Any]) -> dict[str, Calibration]:
    """method -> the held-out normal images' bounds in bits/dim (correction 'none'), for
    every method the card calibrates: what the bound of images like the calibration's centres
    on, the reference for the bounds of served images."""
    return {
        method: Calibration.of(
            entry.scores[BITS_PER_DIM].normal_scores, entry.scores[BITS_PER_DIM].source
        )
        for method, entry in calibrations_in(card).items()
        if BITS_PER_DIM in entry.scores
    }


def threshold_for(calibration: Calibration, fpr: float) -> float:
    """The score threshold for false-positive rate ``fpr``; OptionError below the smallest
    rate the calibration images resolve."""
    if fpr < calibration.min_fpr:
        raise OptionError(
            "fpr",
            f"{fpr:g} is below {calibration.min_fpr:g}, the smallest rate "
            f"{len(calibration.normal_scores)} calibration images can resolve",
        )
    return calibration.threshold(fpr)


def score_k(method: BoundMethod, requested_k: int | None, calibrated_k: int | None) -> int | None:
    """The k the calibration used: scores with another k are not comparable with its
    thresholds, so any other requested k is an OptionError."""
    if method.k_range is None:
        return check_k(method, requested_k)
    k = calibrated_k if calibrated_k is not None else method.default_k
    if requested_k is not None and requested_k != k:
        raise OptionError("k", f"the {method.name} calibration used k={k}; leave k out or pass {k}")
    return k


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


@dataclass(frozen=True)
class ImageScores:
    """Per image (B,): the score, the bound, the PNG codelength, the flag and the percentile."""

    score: np.ndarray  # float64: bits/dim, or nats of -log density for correction 'terms'
    bits_per_dim: np.ndarray  # float64: the bound
    png_bits_per_dim: np.ndarray  # float64
    is_anomaly: np.ndarray  # bool: score > threshold
    percentile: np.ndarray  # float64 0..100: held-out normal scores strictly below the score


def judge(
    calibration: Calibration,
    threshold: float,
    score: np.ndarray,
    bits_per_dim: np.ndarray,
    png_bits_per_dim: np.ndarray,
) -> ImageScores:
    """Scores (B,) flagged against ``threshold`` and placed among the calibration's scores."""
    return ImageScores(
        score=np.asarray(score, dtype=np.float64),
        bits_per_dim=np.asarray(bits_per_dim, dtype=np.float64),
        png_bits_per_dim=np.asarray(png_bits_per_dim, dtype=np.float64),
        is_anomaly=np.asarray(score > threshold, dtype=bool),
        percentile=calibration.percentile(score),
    )


@dataclass(frozen=True)
class CalibratedScorer:
    """One model's calibrated anomaly score, all options fixed: ``score(pixels, generators)``
    judges uint8 images in one synchronous pass, as ``/score`` judges a request's images.

    Build it with :meth:`of`, which resolves the options exactly as ``/score`` does: the
    method (default: the kind's first), the calibration's k, the threshold for ``fpr``.
    """

    name: str
    kind: ModelKind
    model: nn.Module
    method: BoundMethod
    k: int | None
    correction: str
    fpr: float
    calibrated: CalibratedScore
    threshold: float

    @classmethod
    def of(
        cls,
        name: str,
        kind: ModelKind,
        model: nn.Module,
        card: Mapping[str, Any],
        method: str | None = None,
        correction: str = "none",
        fpr: float = 0.05,
        k: int | None = None,
    ) -> CalibratedScorer:
        """NoCalibrationError or OptionError for options the model or its card cannot honour."""
        if correction not in CORRECTIONS:
            raise OptionError("correction", f"one of {', '.join(CORRECTIONS)}, got {correction!r}")
        bound = kind.method_for(model, method)
        calibrated = calibration_for(card, name, bound.name, correction)
        k = score_k(bound, k, calibrated.k)
        threshold = threshold_for(calibrated.calibration, fpr)
        return cls(name, kind, model, bound, k, correction, fpr, calibrated, threshold)

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

        x = pixels_to_signed_unit(pixels).to(next(self.model.parameters()).device)
        if self.calibrated.density is None:
            loop = self.method.run(self.model, x, self.k, generators, max_batch)
            terms = {name: t.double().cpu() for name, t in run_to_end(loop).items()}
            for name, values in terms.items():
                require_finite(values, name)
            score, png = scores(terms["total_bits_per_dim"], pixels, self.correction)
            bits = terms["total_bits_per_dim"].numpy()
            return judge(self.calibrated.calibration, self.threshold, score, bits, png)
        loop = self.kind.term_vector(self.model, x, generators, max_batch, self.k)
        vectors = run_to_end(loop).double().cpu()
        require_finite(vectors, "terms")
        score, bits, png = term_scores(vectors, self.calibrated.density, pixels)
        return judge(self.calibrated.calibration, self.threshold, score, bits, png)
