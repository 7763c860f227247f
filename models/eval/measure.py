"""Every section of a model card for one checkpoint, each measured through the model's kind."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from models.core.card import (
    OUTLIER_SETS,
    Anomaly,
    ClassifierInfo,
    EvaluationInfo,
    Likelihood,
    MethodCalibration,
    MethodDetection,
    ModelCard,
    Provenance,
    SampleQuality,
)
from models.core.checkpoints import WEIGHTS_FILE, load_checkpoint, read_model_card
from models.eval.context import EvalContext
from models.eval.detection import anomaly_and_calibration
from models.eval.samples import sample_quality
from models.kinds import KindError, kind_of


@dataclass(frozen=True)
class Measurements:
    """A model card but for how it was measured (command, hardware, runtime)."""

    kind: str
    checkpoint: Provenance
    likelihood: Likelihood
    sample_quality: SampleQuality
    anomaly: Anomaly
    calibration: dict[str, MethodCalibration]

    def card(self, evaluation: EvaluationInfo) -> ModelCard:
        return ModelCard(
            self.kind,
            self.checkpoint,
            self.likelihood,
            self.sample_quality,
            self.anomaly,
            self.calibration,
            evaluation,
        )


def provenance(directory: Path, model: torch.nn.Module) -> Provenance:
    """Parameters, size and SHA-256 of the weights file, and the training record if any."""
    weights = (directory / WEIGHTS_FILE).read_bytes()
    training = directory / "training.json"
    return Provenance(
        parameters=sum(p.numel() for p in model.parameters()),
        weights_bytes=len(weights),
        # Ties every figure to these exact weights: loading refuses them beside other weights.
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        training=json.loads(training.read_text()) if training.exists() else None,
    )


def measure(directory: Path, classifier_dir: Path, ctx: EvalContext) -> Measurements:
    """Likelihood, sample quality, anomaly detection and calibration of the checkpoint in
    ``directory``; the Fréchet distances in the features of the classifier in ``classifier_dir``."""
    model = load_checkpoint(directory, ctx.device).model.eval()
    try:
        kind = kind_of(model)
    except KindError as error:
        raise SystemExit(f"{directory}: {error}; evaluate a servable model") from error
    classifier = load_checkpoint(classifier_dir, ctx.device).model.eval()
    likelihood, headline_per_image = kind.likelihood_report(model, ctx)
    classifier_info = ClassifierInfo(
        directory=str(classifier_dir),
        test_accuracy=read_model_card(classifier_dir).get("test_accuracy"),
        feature_dim=classifier.config.feature_dim,
    )
    samples = sample_quality(kind.evaluation_samplers(model, ctx), classifier, classifier_info, ctx)
    detections: dict[str, MethodDetection] = {}
    calibrations: dict[str, MethodCalibration] = {}
    for method in kind.score_methods(model, ctx):
        # The headline bound's per-image figures are that method's scores of the same images.
        known = headline_per_image if method.name == kind.headline_method else None
        detections[method.name], calibrations[method.name] = anomaly_and_calibration(
            method, ctx, known
        )
    return Measurements(
        kind=kind.name,
        checkpoint=provenance(directory, model),
        likelihood=likelihood,
        sample_quality=samples,
        anomaly=Anomaly(tuple(sorted(OUTLIER_SETS)), detections),
        calibration=calibrations,
    )
