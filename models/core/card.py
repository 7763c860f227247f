"""The model card: what the evaluation measured on one checkpoint, as typed records.

The evaluation (``models.evaluate``) writes it beside the weights as ``model_card.json``; the
README tables (``models.report``), the service's anomaly scoring and the tests read it. This
module is the contract between them, and the one place that spells the card's keys, the score
kinds and the outlier-set names. It imports nothing heavy (no torch), so anything can read a
card.

    card = ModelCard.from_dict(json.loads(path.read_text()))  # CardError names a missing key
    card.likelihood.headline.bits_per_dim.mean               # e.g. 2.970 bits/dim
    card.to_dict() == json.loads(path.read_text())           # the same document back
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

# Anomaly scores a card calibrates: a bound in bits/dim, raw, minus the image's codelength under
# a generic lossless codec (Serra et al. 2019, Eq. 2), or minus a background model's bound (the
# likelihood ratio of Ren et al. 2019). The service's ``correction`` request field picks one.
BITS_PER_DIM = "bits_per_dim"
BITS_PER_DIM_MINUS_PNG = "bits_per_dim_minus_png"
BITS_PER_DIM_MINUS_BACKGROUND = "bits_per_dim_minus_background"
RATIO_CORRECTION = "ratio"
# correction -> the codec (models.eval.codecs) whose codelength it subtracts. WebP lossless beat
# PNG on the bundled VAE (mean AUROC 0.999 against 0.996 over the outlier sets, FPR@95 0.005
# against 0.016; python -m models.eval.codecs checkpoints/vae, docs/anomaly_detection.md).
CODEC_CORRECTIONS: Mapping[str, str] = {"png": "png", "webp": "webp"}
SCORE_KINDS: Mapping[str, str] = {
    "none": BITS_PER_DIM,
    **{name: f"bits_per_dim_minus_{codec}" for name, codec in CODEC_CORRECTIONS.items()},
    RATIO_CORRECTION: BITS_PER_DIM_MINUS_BACKGROUND,
}
# The ``correction`` that scores an image by the negative log density of its bound's term
# vector (DoSE, Morningstar et al. 2021); its calibration is a method's ``term_density``.
TERM_DENSITY_CORRECTION = "terms"
# The ``correction`` that scores an image by its Likelihood Regret (Xiao, Yan & Amit 2020): the
# bound minus the bound with the image's own optimised posterior, in bits/dim; its calibration
# is a method's ``likelihood_regret``, with the steps and learning rate it used.
REGRET_CORRECTION = "regret"

# The outlier sets of a Fashion-MNIST evaluation's anomaly section, in table order, with how
# each is made. An evaluation on your own folders names its sets itself: one per outlier folder,
# or the corruptions below (less the digits) of its normal images when no folder is given.
OUTLIER_SETS: Mapping[str, str] = {
    "digits": "sklearn load_digits 8x8, scaled to 0..255, bilinear upsampled to 28x28",
    "gaussian_noise": "test images + N(0, 25.5^2) per pixel, rounded and clipped",
    "inverted": "255 - test image",
    "blurred": "test images, Gaussian blur sigma 1 pixel",
    "uniform_noise": "uniform random pixels",
}

# False-positive rates whose calibrated thresholds a card reports (when enough images).
REPORTED_FPRS = (0.01, 0.05)


class CardError(ValueError):
    """A model card that does not have the layout of :class:`ModelCard`."""


R = TypeVar("R", bound="Record")


class Record:
    """A frozen dataclass that converts to and from its JSON object, field by field.

    Fields keep their declaration order as key order; a field with ``metadata={"omit": True}``
    is left out of the dict when it is None (and may be absent from it)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit"):
                continue
            out[f.name] = _encode(value)
        return out

    @classmethod
    def from_dict(cls: type[R], payload: Any, where: str = "model card") -> R:
        if not isinstance(payload, Mapping):
            raise CardError(f"{where}: expected an object, got {type(payload).__name__}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in payload:
                if f.metadata.get("omit"):
                    continue
                raise CardError(f"{where}: missing key {f.name!r}")
            values[f.name] = _decode(hints[f.name], payload[f.name], f"{where}.{f.name}")
        return cls(**values)


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: _encode(v) for key, v in value.items()}
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def _decode(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(inner, value, where)
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise CardError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise CardError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value  # numbers, strings, booleans and free-form JSON (Any) stay as written


# Likelihood ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate(Record):
    """A mean over images and its standard error, in bits/dim."""

    mean: float
    stderr: float


@dataclass(frozen=True)
class BoundFigure(Record):
    """One bound on -log p(x) averaged over test images, in bits/dim."""

    method: str  # the service's method name: "elbo", "iwae", "vlb_exact", ...
    label: str  # how tables name the bound: "-ELBO", "exact VLB, T = 1000"
    test_images: int
    bits_per_dim: Estimate
    k: int | None = None  # importance samples or timesteps, for the bounds that take k
    # Term name -> its mean over the same images in bits/dim; the terms sum to the mean.
    terms_bits_per_dim: Mapping[str, float] = field(default_factory=dict)
    # The headline bound on the same (fewer) images, for a like-for-like comparison.
    headline_same_images: Estimate | None = field(default=None, metadata={"omit": True})


@dataclass(frozen=True)
class PrecisionCheck(Record):
    """The headline bound of the first images in strict float32 and in TF32, same noise."""

    images: int
    float32_bits_per_dim: float
    tf32_bits_per_dim: float
    max_abs_difference_bits_per_dim: float


@dataclass(frozen=True)
class Likelihood(Record):
    headline: BoundFigure  # the kind's headline bound, on the most images
    others: tuple[BoundFigure, ...] = ()  # tighter or costlier bounds, often on fewer images
    tf32_check: PrecisionCheck | None = field(default=None, metadata={"omit": True})


# Sample quality ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierInfo(Record):
    """The feature extractor of the Fréchet distances."""

    directory: str
    test_accuracy: float | None
    feature_dim: int


@dataclass(frozen=True)
class SamplerQuality(Record):
    num_samples: int
    frechet_distance: float
    real_data_floor: float  # the distance of as many real training images
    ratio_to_floor: float
    seconds_per_image: float
    grid: str  # file name of a grid of samples beside the card


@dataclass(frozen=True)
class SampleQuality(Record):
    classifier: ClassifierInfo
    ddim_eta: float
    reference: str
    samplers: Mapping[str, SamplerQuality]


@dataclass(frozen=True)
class SampleGrids(Record):
    """Samples drawn and saved as grids where no sample-quality figure was measured (a card's
    ``sample_quality`` is then None), and why none was."""

    not_measured: str  # why there is no Fréchet distance
    grids: Mapping[str, str]  # sampler -> file name of a grid of its samples beside the card


# Anomaly detection and calibration -----------------------------------------------------------


@dataclass(frozen=True)
class Detection(Record):
    auroc: float
    fpr_at_95_tpr: float


@dataclass(frozen=True)
class OutlierDetection(Record):
    mean_bits_per_dim: float
    raw: Detection  # the bound in bits/dim
    minus_png: Detection  # the bound minus the PNG codelength
    # codec -> the bound minus its codelength, for the other codec corrections
    minus_codecs: Mapping[str, Detection] | None = field(default=None, metadata={"omit": True})


@dataclass(frozen=True)
class MethodDetection(Record):
    k: int | None
    normal_images: int  # per outlier set
    sets: Mapping[str, OutlierDetection]  # keys: the Anomaly section's outlier_sets
    normal_mean_bits_per_dim: float


@dataclass(frozen=True)
class Recommendation(Record):
    """The correction that detected the card's outlier sets best for one method: the highest
    mean AUROC over the sets among the corrections measured on the same images and calibrated
    (ties go to the one listed first: the raw bound, then the codecs). /score uses it when a
    request names no correction."""

    correction: str
    mean_auroc: Mapping[str, float]  # correction -> its mean AUROC over the outlier sets


@dataclass(frozen=True)
class Anomaly(Record):
    outlier_sets: tuple[str, ...]
    methods: Mapping[str, MethodDetection]
    # method -> its recommended correction; absent from cards written before recommendations,
    # whose /score default stays the raw bound.
    recommended: Mapping[str, Recommendation] | None = field(default=None, metadata={"omit": True})


def measured_corrections(detection: MethodDetection) -> dict[str, float]:
    """correction -> mean AUROC over ``detection``'s outlier sets, for every correction
    measured on all of them (the raw bound first, then PNG, then the other codecs by name)."""
    per_set: dict[str, list[float]] = {}
    for outcome in detection.sets.values():
        codecs = {"png": outcome.minus_png, **dict(outcome.minus_codecs or {})}
        found = {"none": outcome.raw, **{c: codecs[c] for c in sorted(codecs, key=_png_first)}}
        for correction, measured in found.items():
            per_set.setdefault(correction, []).append(measured.auroc)
    return {c: sum(v) / len(v) for c, v in per_set.items() if len(v) == len(detection.sets)}


def _png_first(codec: str) -> tuple[bool, str]:
    return codec != "png", codec


def recommend(detection: MethodDetection, calibrated: Iterable[str]) -> Recommendation | None:
    """The calibrated correction with the highest mean AUROC over the outlier sets (the
    first listed on a tie: ``max`` keeps the first of equals); None when no outlier set was
    measured or none of the measured corrections is calibrated."""
    offered = set(calibrated)
    measured = {c: a for c, a in measured_corrections(detection).items() if c in offered}
    if not measured:
        return None
    return Recommendation(max(measured, key=measured.__getitem__), measured)


def recommended_corrections_in(card: Mapping[str, Any]) -> dict[str, str]:
    """method -> the correction its card recommends; empty for a card that recommends none."""
    section = card.get("anomaly", {})
    if not isinstance(section, Mapping) or section.get("recommended") is None:
        return {}
    recommended = section["recommended"]
    if not isinstance(recommended, Mapping):
        raise CardError("model card.anomaly.recommended: expected an object")
    return {
        method: Recommendation.from_dict(
            entry, f"model card.anomaly.recommended.{method}"
        ).correction
        for method, entry in recommended.items()
    }


@dataclass(frozen=True)
class ScoreCalibration(Record):
    """Held-out normal scores of one score kind; ``models.eval.anomaly.Calibration`` turns them
    into thresholds and percentiles."""

    source: str
    num_images: int
    thresholds: Mapping[str, float]  # str(fpr) -> threshold
    normal_scores: tuple[float, ...]  # (N,) ascending
    # str(fpr) -> the rate observed on other normal images: a check the evaluation reports,
    # not needed to score (a calibration written by other tools may leave it out).
    observed_fpr_on_other_normal_images: Mapping[str, float] | None = field(
        default=None, metadata={"omit": True}
    )


@dataclass(frozen=True)
class TermDensity(Record):
    """A density over a bound's per-image term vectors, fitted on held-out normal images, and
    the calibration of its score (-log density, nats) on other held-out normal images.

    ``models.eval.typicality.Density`` scores with these parameters: term vectors are
    standardised by ``mean`` and ``scale``; ``covariance`` is then the Gaussian's (shrunk to
    the identity by ``shrinkage``) or the KDE kernel's, centred on each of ``points``."""

    estimator: str  # "gaussian" or "kde"
    k: int | None  # the bound's k (DDPM: timesteps, k // 2 bands)
    term_names: tuple[str, ...]
    source: str  # the images the density was fitted on
    num_images: int
    mean: tuple[float, ...]  # (F,)
    scale: tuple[float, ...]  # (F,)
    covariance: tuple[tuple[float, ...], ...]  # (F, F), of standardised vectors
    shrinkage: float
    calibration: ScoreCalibration
    points: tuple[tuple[float, ...], ...] | None = field(  # (N, F) standardised, KDE only
        default=None, metadata={"omit": True}
    )


@dataclass(frozen=True)
class RegretDetection(Record):
    """AUROC / FPR@95 of the bound and of its Likelihood Regret on the same images."""

    raw: Detection
    regret: Detection


@dataclass(frozen=True)
class RegretCalibration(Record):
    """The Likelihood Regret of a method's bound (Xiao et al. 2020; models/vae/regret.py) as
    measured: the optimisation it used (Adam ``steps`` at ``learning_rate``: /score runs the
    same), the held-out normal regrets in bits/dim, and where measured, its detection of each
    outlier set beside the raw bound's on the same images, with the command and runtime."""

    steps: int
    learning_rate: float
    calibration: ScoreCalibration
    detection: Mapping[str, RegretDetection] | None = field(default=None, metadata={"omit": True})
    detection_normal_images: int | None = field(default=None, metadata={"omit": True})
    command: str | None = field(default=None, metadata={"omit": True})
    seconds: float | None = field(default=None, metadata={"omit": True})


@dataclass(frozen=True)
class MethodCalibration(Record):
    k: int | None
    scores: Mapping[str, ScoreCalibration]  # keys: SCORE_KINDS' values
    term_density: TermDensity | None = field(default=None, metadata={"omit": True})
    likelihood_regret: RegretCalibration | None = field(default=None, metadata={"omit": True})


def calibrations_in(card: Mapping[str, Any]) -> dict[str, MethodCalibration]:
    """The calibration section of a card as stored (method -> its calibration), read without
    the other sections, so that a card holding only calibrations serves too."""
    section = card.get("calibration", {})
    if not isinstance(section, Mapping):
        raise CardError("model card.calibration: expected an object")
    return {
        method: MethodCalibration.from_dict(entry, f"model card.calibration.{method}")
        for method, entry in section.items()
    }


# (C, H, W) floats as nested lists: one value per dimension of an image.
PixelGrid = tuple[tuple[tuple[float, ...], ...], ...]


@dataclass(frozen=True)
class MethodPixelCalibration(Record):
    """Per-pixel mean and standard deviation of one bound's map of nats per dimension
    (``models.kinds.ModelKind.pixel_nats``) over held-out normal images; an anomaly map is
    z = (map - mean) / (std + eps) (``models.eval.maps.PixelCalibration``)."""

    k: int | None  # the bound's k when it takes one: maps with another k are not comparable
    source: str
    num_images: int
    eps_nats: float
    mean_nats: PixelGrid  # (C, H, W)
    std_nats: PixelGrid  # (C, H, W)


def pixel_calibrations_in(card: Mapping[str, Any]) -> dict[str, MethodPixelCalibration]:
    """The pixel calibration section of a card (method -> its calibration); empty when the
    card has none (cards written before anomaly maps)."""
    section = card.get("pixel_calibration", {})
    if not isinstance(section, Mapping):
        raise CardError("model card.pixel_calibration: expected an object")
    return {
        method: MethodPixelCalibration.from_dict(entry, f"model card.pixel_calibration.{method}")
        for method, entry in section.items()
    }


# The background model of the likelihood ratio ------------------------------------------------


@dataclass(frozen=True)
class RatioDetection(Record):
    """AUROC / FPR@95 of the bound and of the ratio (bound minus the background's bound) on
    the same images, per outlier set."""

    raw: Detection
    ratio: Detection


@dataclass(frozen=True)
class BackgroundReference(Record):
    """The background model whose bound the ``ratio`` correction subtracts (Ren et al. 2019):
    a checkpoint of the same image shape, named as in the model repository (a sibling
    directory of this checkpoint's) and pinned by the SHA-256 of its weights, so that serving
    refuses, at load, a missing or other background."""

    name: str
    weights_sha256: str
    method: str  # the background's bound
    k: int | None
    image_shape: tuple[int, ...]  # (C, H, W), the foreground's
    # The background's training record (foreground, mutation rate, steps), when it has one.
    training: Mapping[str, Any] | None = field(default=None, metadata={"omit": True})
    # foreground method -> outlier set -> detection; with how many normal images and the command
    detection: Mapping[str, Mapping[str, RatioDetection]] | None = field(
        default=None, metadata={"omit": True}
    )
    detection_normal_images: int | None = field(default=None, metadata={"omit": True})
    command: str | None = field(default=None, metadata={"omit": True})
    seconds: float | None = field(default=None, metadata={"omit": True})


def background_in(card: Mapping[str, Any]) -> BackgroundReference | None:
    """The card's background reference, or None when it has none."""
    section = card.get("background")
    if section is None:
        return None
    return BackgroundReference.from_dict(section, "model card.background")


# Provenance ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance(Record):
    """Which weights every figure belongs to: loading refuses a card beside other weights."""

    parameters: int
    weights_bytes: int
    weights_sha256: str
    training: Mapping[str, Any] | None = field(default=None, metadata={"omit": True})


@dataclass(frozen=True)
class EvaluationInfo(Record):
    command: str
    sizes: Mapping[str, int]
    seed: int
    hardware: str
    tf32: bool
    torch: str
    python: str
    seconds: float
    date: str


# Which images: your own folders ----------------------------------------------------------


@dataclass(frozen=True)
class ImageSet(Record):
    """Some of the images of a folder, identified so that a later run can check it used the
    same ones: the SHA-256 of their paths relative to the folder, sorted, one per line."""

    folder: str
    images: int
    paths_sha256: str


@dataclass(frozen=True)
class EvaluationData(Record):
    """Which images of your own folders each figure used (a Fashion-MNIST card has none).

    ``measured``: the likelihood section and the normal side of AUROC / FPR@95 (the first images
    of it, in the seeded order, as many as the sizes say); ``held_out``: the calibration."""

    normal_folder: str
    normal_images: int  # images in the normal folder
    split: str  # how measured and held-out images were chosen, with the seed
    measured: ImageSet
    held_out: ImageSet
    outliers: Mapping[str, ImageSet]  # outlier set name -> its folder (empty: synthetic sets)
    warnings: tuple[str, ...] = ()  # e.g. normal images that may include training images


@dataclass(frozen=True)
class ModelCard(Record):
    kind: str
    checkpoint: Provenance
    likelihood: Likelihood
    # None where the sample quality could not be measured; ``sample_grids`` then says why.
    sample_quality: SampleQuality | None
    anomaly: Anomaly
    calibration: Mapping[str, MethodCalibration]
    evaluation: EvaluationInfo
    sample_grids: SampleGrids | None = field(default=None, metadata={"omit": True})
    data: EvaluationData | None = field(default=None, metadata={"omit": True})
    # method -> per-pixel statistics of its maps; absent from cards written before maps.
    pixel_calibration: Mapping[str, MethodPixelCalibration] | None = field(
        default=None, metadata={"omit": True}
    )
    # The background model of the ``ratio`` correction (models.eval.ratio adds it).
    background: BackgroundReference | None = field(default=None, metadata={"omit": True})
