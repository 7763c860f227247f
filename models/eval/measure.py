"""Every section of a model card for one checkpoint, each measured through the model's kind."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from models.core.card import (
    SCORE_KINDS,
    Anomaly,
    ClassifierInfo,
    EvaluationData,
    EvaluationInfo,
    Likelihood,
    MethodCalibration,
    MethodDetection,
    MethodPixelCalibration,
    ModelCard,
    Provenance,
    SampleGrids,
    SampleQuality,
    recommend,
)
from models.core.checkpoints import load_checkpoint, read_model_card, weights_path
from models.eval.context import EvalContext
from models.eval.detection import anomaly_and_calibration
from models.eval.samples import sample_grids, sample_quality
from models.eval.score_extras import pixel_calibration, with_likelihood_regret, with_term_density
from models.kinds import KindError, kind_of


@dataclass(frozen=True)
class Measurements:
    """A model card but for how it was measured (command, hardware, runtime)."""

    kind: str
    checkpoint: Provenance
    likelihood: Likelihood
    sample_quality: SampleQuality | None
    anomaly: Anomaly
    calibration: dict[str, MethodCalibration]
    sample_grids: SampleGrids | None = None  # where sample_quality is None
    pixel_calibration: dict[str, MethodPixelCalibration] | None = None

    def card(self, evaluation: EvaluationInfo, data: EvaluationData | None = None) -> ModelCard:
        """The card; ``data`` says which images of your own folders were used for what."""
        return ModelCard(
            self.kind,
            self.checkpoint,
            self.likelihood,
            self.sample_quality,
            self.anomaly,
            self.calibration,
            evaluation,
            sample_grids=self.sample_grids,
            data=data,
            pixel_calibration=self.pixel_calibration or None,
        )


def _calibrated_corrections(calibration: MethodCalibration) -> set[str]:
    return {name for name, kind in SCORE_KINDS.items() if kind in calibration.scores}


def provenance(directory: Path, model: torch.nn.Module) -> Provenance:
    """Parameters, size and SHA-256 of the weights file, and the training record if any."""
    weights = weights_path(directory).read_bytes()
    training = directory / "training.json"
    return Provenance(
        parameters=sum(p.numel() for p in model.parameters()),
        weights_bytes=len(weights),
        # Ties every figure to these exact weights: loading refuses them beside other weights.
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        training=json.loads(training.read_text()) if training.exists() else None,
    )


def measure(
    directory: Path, classifier_dir: Path | None, ctx: EvalContext, no_quality_reason: str = ""
) -> Measurements:
    """Likelihood, sample quality, anomaly detection and calibration of the checkpoint in
    ``directory``; the Fréchet distances in the features of the classifier in ``classifier_dir``,
    or, when that is None, sample grids alone and ``no_quality_reason`` in the card."""
    model = load_checkpoint(directory, ctx.device).model.eval()
    try:
        kind = kind_of(model)
    except KindError as error:
        raise SystemExit(f"{directory}: {error}; evaluate a servable model") from error
    classifier = None
    if classifier_dir is not None:
        classifier = load_checkpoint(classifier_dir, ctx.device).model.eval()
    likelihood, headline_per_image = kind.likelihood_report(model, ctx)
    samplers = kind.evaluation_samplers(model, ctx)
    samples, grids = None, None
    if classifier_dir is None or classifier is None:
        grids = sample_grids(samplers, no_quality_reason, ctx)
    else:
        classifier_info = ClassifierInfo(
            directory=str(classifier_dir),
            test_accuracy=read_model_card(classifier_dir).get("test_accuracy"),
            feature_dim=classifier.config.feature_dim,
        )
        samples = sample_quality(samplers, classifier, classifier_info, ctx)
    detections: dict[str, MethodDetection] = {}
    calibrations: dict[str, MethodCalibration] = {}
    pixel: dict[str, MethodPixelCalibration] = {}
    for method in kind.score_methods(model, ctx):
        # The headline bound's per-image figures are that method's scores of the same images.
        known = headline_per_image if method.name == kind.headline_method else None
        detections[method.name], calibration = anomaly_and_calibration(method, ctx, known)
        calibrations[method.name] = with_term_density(kind, model, method, ctx, calibration)
        if (maps := pixel_calibration(kind, model, method, ctx)) is not None:
            pixel[method.name] = maps
    calibrations = with_likelihood_regret(kind, model, ctx, calibrations)
    recommended = {
        name: found
        for name, detection in detections.items()
        if (found := recommend(detection, _calibrated_corrections(calibrations[name])))
    }
    return Measurements(
        kind=kind.name,
        checkpoint=provenance(directory, model),
        likelihood=likelihood,
        sample_quality=samples,
        anomaly=Anomaly(tuple(sorted(ctx.outlier_set_names())), detections, recommended or None),
        calibration=calibrations,
        sample_grids=grids,
        pixel_calibration=pixel,
    )
