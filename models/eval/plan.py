"""How a request is scored, decided in one place: a :class:`ScoringPlan`.

A plan fixes, for one model and one request's options, everything a score depends on: the
bound (method and k), the correction (none, a codec's codelength, a term density, a
background model's bound, or the bound with each image's own optimised posterior: the
Likelihood Regret), the calibration and its threshold for ``fpr``, and the pixel
calibration of anomaly maps. :class:`Scoring` reads the model card once per model and resolves
plans from it; the HTTP service (``/score``) and offline scoring
(:class:`models.eval.calibrated.CalibratedScorer`) only run what the plan says (the bound, the
term vector or the background's bound) and hand the results to :meth:`ScoringPlan.judge`.

    scoring = Scoring("vae", kind, model, card, background)   # at load: background checked
    plan = scoring.plan(method=None, k=None, correction="ratio", fpr=0.05)
    judged = plan.judge(pixels, bits_per_dim, background_bits_per_dim=bg)   # ImageScores

Errors carry the option they blame: :class:`NoCalibrationError` when the card has nothing for
the options (the service answers 409), :class:`models.kinds.OptionError` for a value the model
cannot honour (400), :class:`BackgroundError` at load for a missing or mismatched background.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from models.core.card import (
    BITS_PER_DIM,
    CODEC_CORRECTIONS,
    RATIO_CORRECTION,
    REGRET_CORRECTION,
    SCORE_KINDS,
    TERM_DENSITY_CORRECTION,
    BackgroundReference,
    MethodCalibration,
    background_in,
    calibrations_in,
    pixel_calibrations_in,
    recommended_corrections_in,
)
from models.eval.anomaly import Calibration
from models.kinds import OptionError, check_k

if TYPE_CHECKING:
    from torch import nn

    from models.eval.maps import PixelCalibration
    from models.eval.typicality import Density
    from models.kinds import BoundMethod, ModelKind, RegretMethod

# Every ``correction`` a card can calibrate: the bound as it is, minus a codec's codelength or
# a background model's bound, a density over the bound's terms, or the Likelihood Regret (the
# bound minus the bound with each image's optimised posterior).
CORRECTIONS = (*SCORE_KINDS, TERM_DENSITY_CORRECTION, REGRET_CORRECTION)
MapNormalisation = Literal["pixel", "global"]


class NoCalibrationError(OptionError):
    """The model card has no calibration for the options asked for: options this model cannot
    honour until its card has one (``field`` names which to change; the service answers 409,
    where other OptionErrors are 400s)."""


class BackgroundError(ValueError):
    """A card's background model is missing or is not the one it measured (other weights,
    another image shape, no such bound): found when the models load, never at a request."""


@dataclass(frozen=True)
class Background:
    """The loaded background model of a ``ratio`` score, checked against the card's
    reference: its name in the model repository, its kind, network and bound (method, k)."""

    name: str
    kind: ModelKind
    model: nn.Module
    method: BoundMethod
    k: int | None


def check_background(
    card: Mapping[str, Any],
    foreground: str,
    image_shape: tuple[int, int, int],
    name: str,
    kind: ModelKind,
    model: nn.Module,
    weights_sha256: str,
) -> Background:
    """The background of ``foreground`` (images (C, H, W) = ``image_shape``), loaded as
    ``name``, checked against its card's reference: the same weights (SHA-256), the same image
    shape, a bound it offers with a k it takes. BackgroundError naming what differs."""
    reference = _reference(card, foreground)
    if weights_sha256 != reference.weights_sha256:
        raise BackgroundError(
            f"{foreground}: its background {name!r} has weights with SHA-256 "
            f"{weights_sha256[:16]}..., not the {reference.weights_sha256[:16]}... its model "
            "card measured the ratio with; re-run python -m models.eval.ratio"
        )
    shape = kind.image_shape(model.config)
    if tuple(shape) != tuple(image_shape) or tuple(reference.image_shape) != tuple(image_shape):
        raise BackgroundError(
            f"{foreground}: its background {name!r} reads images (C, H, W) = {tuple(shape)}, "
            f"the foreground {tuple(image_shape)}; a background must read the same images"
        )
    try:
        method = kind.method_for(model, reference.method)
        k = check_k(method, reference.k)
    except OptionError as error:
        raise BackgroundError(f"{foreground}: its background {name!r}: {error}") from error
    return Background(name, kind, model, method, k)


def _reference(card: Mapping[str, Any], foreground: str) -> BackgroundReference:
    reference = background_in(card)
    if reference is None:
        raise BackgroundError(f"{foreground}: its model card names no background model")
    return reference


@dataclass(frozen=True)
class ImageScores:
    """Per image (B,): the score, the bound, the PNG codelength, the flag and the percentile;
    for the ``ratio`` correction also the background's bound, for ``regret`` the bound with
    the image's optimised posterior."""

    score: np.ndarray  # float64: bits/dim, or nats of -log density for correction 'terms'
    bits_per_dim: np.ndarray  # float64: the bound
    png_bits_per_dim: np.ndarray  # float64
    is_anomaly: np.ndarray  # bool: score > threshold
    percentile: np.ndarray  # float64 0..100: held-out normal scores strictly below the score
    background_bits_per_dim: np.ndarray | None = None  # float64, correction 'ratio'
    optimised_bits_per_dim: np.ndarray | None = None  # float64, correction 'regret'


@dataclass(frozen=True)
class ScoringPlan:
    """Everything one request's scores depend on, resolved from the model card.

    What to run: ``method`` at ``k`` (per dimension too when ``pixel`` is set, for maps), the
    kind's term vector when ``density`` is set, the ``background``'s bound for 'ratio', the
    ``regret`` at ``regret_steps`` and ``regret_learning_rate`` for 'regret' (which gives the
    bound too). Then :meth:`judge` turns the results into scores against ``calibration`` and
    ``threshold``."""

    model: str
    method: BoundMethod
    k: int | None
    correction: str
    fpr: float
    calibration: Calibration
    threshold: float
    density: Density | None = None  # 'terms': the density over term vectors (nats)
    codec: str | None = None  # a codec correction: the codec whose codelength is subtracted
    background: Background | None = None  # 'ratio'
    pixel: PixelCalibration | None = None  # maps asked for: their per-pixel calibration
    map_normalisation: MapNormalisation = "pixel"
    regret: RegretMethod | None = None  # 'regret'
    regret_steps: int | None = None
    regret_learning_rate: float | None = None

    def judge(
        self,
        pixels: torch.Tensor,
        bits_per_dim: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
        background_bits_per_dim: torch.Tensor | None = None,
        optimised_bits_per_dim: torch.Tensor | None = None,
    ) -> ImageScores:
        """Scores of uint8 images ``pixels`` (B, C, H, W) from what the plan ran: the bound
        (B,) in bits/dim, the term vectors (B, F) in nats when ``density`` is set (the bound is
        then their sum), the background's bound (B,) in bits/dim for 'ratio', the bound with
        each image's optimised posterior (B,) in bits/dim for 'regret'."""
        from models.eval.anomaly import complexity_corrected_score, png_bits_per_dim
        from models.eval.codecs import codec_bits_per_dim

        png = png_bits_per_dim(pixels)
        background = optimised = None
        if self.density is not None:
            from models.eval.typicality import bound_bits_per_dim

            if vectors is None:
                raise ValueError("a term-density plan judges term vectors")
            bits = bound_bits_per_dim(vectors, pixels[0].numel()).double()
            score = torch.from_numpy(self.density.score(vectors.double().cpu().numpy()))
        else:
            if bits_per_dim is None:
                raise ValueError("this plan judges the bound in bits/dim")
            bits = bits_per_dim.double().cpu()
            if self.background is not None:
                if background_bits_per_dim is None:
                    raise ValueError("a ratio plan judges the background's bound too")
                background = background_bits_per_dim.double().cpu()
                score = bits - background  # log-likelihood ratio as a codelength, bits/dim
            elif self.regret is not None:
                if optimised_bits_per_dim is None:
                    raise ValueError("a regret plan judges the optimised bound too")
                optimised = optimised_bits_per_dim.double().cpu()
                # ELBO(q*) - ELBO(q_phi) in bits/dim (Xiao et al. 2020), >= 0 by construction
                score = bits - optimised
            elif self.codec is not None:
                reference = png if self.codec == "png" else codec_bits_per_dim(pixels, self.codec)
                score = complexity_corrected_score(bits, reference)
            else:
                score = bits
        score_np = score.double().numpy()
        return ImageScores(
            score=score_np,
            bits_per_dim=bits.numpy(),
            png_bits_per_dim=png.numpy(),
            is_anomaly=np.asarray(score_np > self.threshold, dtype=bool),
            percentile=self.calibration.percentile(score_np),
            background_bits_per_dim=None if background is None else background.numpy(),
            optimised_bits_per_dim=None if optimised is None else optimised.numpy(),
        )


@dataclass(frozen=True)
class CalibratedScore:
    """A card's calibration of one method and correction, and the k it used (for 'regret'
    also the optimisation's steps and learning rate)."""

    calibration: Calibration
    k: int | None
    density: Density | None = None
    regret_steps: int | None = None
    regret_learning_rate: float | None = None


class Scoring:
    """One model's scoring: its card read once (calibrations, pixel calibrations, its checked
    background), and a :class:`ScoringPlan` per request's options."""

    def __init__(
        self,
        name: str,
        kind: ModelKind,
        model: nn.Module,
        card: Mapping[str, Any],
        background: Background | None = None,
    ) -> None:
        self.name, self.kind, self.model, self.background = name, kind, model, background
        self._calibrations = calibrations_in(card)  # CardError for a malformed section
        self._pixel = pixel_calibrations_in(card)
        self._reference = background_in(card)
        self._recommended = recommended_corrections_in(card)
        self._resolved: dict[tuple[str, str], CalibratedScore] = {}
        self._pixel_resolved: dict[str, PixelCalibration] = {}

    def plan(
        self,
        method: str | None = None,
        k: int | None = None,
        correction: str | None = None,
        fpr: float = 0.05,
        maps: bool = False,
        map_normalisation: MapNormalisation = "pixel",
        regret_steps: int | None = None,
    ) -> ScoringPlan:
        """The plan for these options (None: the default method, the card's recommended
        correction, the calibration's k and regret steps). NoCalibrationError or OptionError
        naming the option the card or model cannot honour."""
        if correction is None:
            correction = self.recommended_correction(method)
        if correction not in CORRECTIONS:
            raise OptionError("correction", f"one of {', '.join(CORRECTIONS)}, got {correction!r}")
        regret = self._regret_for(correction, method)
        if regret is None and regret_steps is not None:
            raise OptionError(
                "regret_steps", "only correction 'regret' takes regret_steps; leave it out"
            )
        bound = self.kind.method_for(
            self.model, regret.bound if method is None and regret else method
        )
        background = self._background_for(correction)
        calibrated = self._calibrated(bound.name, correction)
        k = score_k(bound, k, calibrated.k)
        if regret is not None:
            regret_steps = score_regret_steps(regret, regret_steps, calibrated.regret_steps)
        threshold = threshold_for(calibrated.calibration, fpr)
        pixel = self._pixel_for(bound, k) if maps else None
        return ScoringPlan(
            model=self.name,
            method=bound,
            k=k,
            correction=correction,
            fpr=fpr,
            calibration=calibrated.calibration,
            threshold=threshold,
            density=calibrated.density,
            codec=CODEC_CORRECTIONS.get(correction),
            background=background,
            pixel=pixel,
            map_normalisation=map_normalisation,
            regret=regret,
            regret_steps=regret_steps,
            regret_learning_rate=calibrated.regret_learning_rate,
        )

    def recommended_correction(self, method: str | None = None) -> str:
        """The correction the card recommends for ``method`` (None: the default method),
        measured best on its outlier sets; 'none', the raw bound, where it recommends none."""
        return self._recommended.get(self.kind.method_for(self.model, method).name, "none")

    def calibration_of(self, method: str, correction: str) -> CalibratedScore:
        """The card's calibration of ``method`` (a bound the model offers) under
        ``correction``: what :meth:`plan` scores against (its k, its smallest resolvable
        rate). NoCalibrationError when the card has none (for 'ratio': no background);
        OptionError for 'regret' when the model offers none or not of ``method``."""
        self._background_for(correction)
        self._regret_for(correction, method)
        return self._calibrated(method, correction)

    def _regret_for(self, correction: str, method: str | None) -> RegretMethod | None:
        """The kind's Likelihood Regret for 'regret' (None for other corrections); an
        OptionError naming the model and what it lacks when it offers none, or none of
        ``method``'s bound."""
        if correction != REGRET_CORRECTION:
            return None
        regret = self.kind.likelihood_regret(self.model)
        if regret is None:
            raise OptionError(
                "correction",
                f"the {self.name} model offers no likelihood regret: "
                f"{self.kind.lacks_regret(self.model)}; use another correction",
            )
        if method is not None and method != regret.bound:
            raise OptionError(
                "method",
                f"the {self.name} model's likelihood regret refines its {regret.bound!r} "
                f"bound, not {method!r}; leave method out or pass {regret.bound!r}",
            )
        return regret

    def _background_for(self, correction: str) -> Background | None:
        if correction != RATIO_CORRECTION:
            return None
        if self._reference is None:
            raise NoCalibrationError(
                "correction",
                f"the {self.name} model card names no background model, which 'ratio' "
                "subtracts (python -m models.train --background-of, then "
                "python -m models.eval.ratio)",
            )
        if self.background is None:  # loaders check at load; this guards other callers
            raise NoCalibrationError(
                "correction",
                f"the {self.name} model's background {self._reference.name!r} is not loaded",
            )
        return self.background

    def _calibrated(self, method: str, correction: str) -> CalibratedScore:
        key = (method, correction)
        if key not in self._resolved:
            self._resolved[key] = self._read_calibration(method, correction)
        return self._resolved[key]

    def _read_calibration(self, method: str, correction: str) -> CalibratedScore:
        entry = self._calibrations.get(method)
        if correction == REGRET_CORRECTION:
            if entry is None or entry.likelihood_regret is None:
                raise NoCalibrationError(
                    "correction",
                    f"the {self.name} model card has no likelihood regret calibration for "
                    f"method {method!r}, so /score has no threshold for it (python -m "
                    "models.eval.regret CHECKPOINT adds one; python -m models.evaluate "
                    f"measures it too); calibrated: {_calibrated(self._calibrations)}",
                )
            regret = entry.likelihood_regret
            return CalibratedScore(
                Calibration.of(regret.calibration.normal_scores, regret.calibration.source),
                entry.k,
                regret_steps=regret.steps,
                regret_learning_rate=regret.learning_rate,
            )
        if correction == TERM_DENSITY_CORRECTION:
            if entry is None or entry.term_density is None:
                raise NoCalibrationError(
                    "correction",
                    f"the {self.name} model card has no term density for method {method!r} "
                    "(correction 'terms'; models.eval.typicality adds one); calibrated: "
                    f"{_calibrated(self._calibrations)}",
                )
            from models.eval.typicality import Density

            fitted = entry.term_density
            calibration = Calibration.of(
                fitted.calibration.normal_scores, fitted.calibration.source
            )
            return CalibratedScore(calibration, fitted.k, Density.from_dict(fitted))
        kind = SCORE_KINDS[correction]
        if entry is None or kind not in entry.scores:
            raise NoCalibrationError(
                "method" if entry is None or correction == "none" else "correction",
                f"the {self.name} model card has no calibration for method {method!r} with "
                f"correction {correction!r}; calibrated: {_calibrated(self._calibrations)}",
            )
        fitted_scores = entry.scores[kind]
        return CalibratedScore(
            Calibration.of(fitted_scores.normal_scores, fitted_scores.source), entry.k
        )

    def _pixel_for(self, method: BoundMethod, k: int | None) -> PixelCalibration:
        """The card's pixel calibration of ``method`` at ``k``: OptionError when the method has
        no per-pixel form, NoCalibrationError when the card has none for it (or one at
        another k)."""
        from models.eval.maps import PixelCalibration

        if method.run_per_dim is None:
            raise OptionError(
                "maps", f"the {method.name} bound has no per-pixel form; leave maps out"
            )
        record = self._pixel.get(method.name)
        if record is None:
            raise NoCalibrationError(
                "maps",
                f"the {self.name} model card has no pixel calibration for method "
                f"{method.name!r}, which anomaly maps are normalised with (python -m "
                f"models.eval.maps CHECKPOINT); pixel-calibrated: "
                f"{', '.join(self._pixel) or 'nothing'}",
            )
        if record.k != k:
            raise NoCalibrationError(
                "maps",
                f"the {self.name} model card's pixel calibration of {method.name} used "
                f"k={record.k}, its score calibration k={k}; re-run python -m models.eval.maps "
                f"with --k {k}",
            )
        if method.name not in self._pixel_resolved:
            self._pixel_resolved[method.name] = PixelCalibration.of_card(method.name, record)
        return self._pixel_resolved[method.name]


def _calibrated(calibrations: dict[str, MethodCalibration]) -> str:
    pairs = [f"{method}/{kind}" for method, entry in calibrations.items() for kind in entry.scores]
    pairs += [
        f"{method}/{TERM_DENSITY_CORRECTION}"
        for method, entry in calibrations.items()
        if entry.term_density is not None
    ]
    pairs += [
        f"{method}/{REGRET_CORRECTION}"
        for method, entry in calibrations.items()
        if entry.likelihood_regret is not None
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


def score_regret_steps(regret: RegretMethod, requested: int | None, calibrated: int | None) -> int:
    """The optimisation steps the regret's calibration used: a regret after more steps is
    larger, so its thresholds hold for those steps alone, and any other is an OptionError
    (as another k is for a bound); outside the kind's range too."""
    low, high = regret.steps_range
    steps = calibrated if calibrated is not None else regret.default_steps
    if requested is not None and not low <= requested <= high:
        raise OptionError("regret_steps", f"this model takes {low}..{high}, got {requested}")
    if requested is not None and requested != steps:
        raise OptionError(
            "regret_steps",
            f"the regret calibration used {steps} steps; leave regret_steps out or pass {steps}",
        )
    return steps
