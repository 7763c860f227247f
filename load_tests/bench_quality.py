"""DDIM steps (and respaced ancestral steps) against wall time per image and sample quality
(Fréchet distance in the project classifier's features), through the evaluation CLI's own
sample-quality section."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from models.core.card import ClassifierInfo
from models.core.checkpoints import Checkpoint, load_checkpoint
from models.core.pixels import signed_unit_to_pixels
from models.data import load_fashion_mnist
from models.diffusion.samplers import ddim_sample, ddpm_ancestral_sample
from models.eval.context import EvalContext, EvaluationSizes
from models.eval.samples import Sampler, sample_quality


def _samplers(
    ddpm: Checkpoint,
    steps: list[int],
    n: int,
    ancestral_n: int,
    generator,
    eta: float,
    ancestral_steps: list[int],
):
    model, shape = ddpm.model, ddpm.model.image_shape
    num_timesteps = model.diffusion.num_timesteps

    def ddim(k: int) -> Sampler:
        return lambda b: signed_unit_to_pixels(
            ddim_sample(model.diffusion, model, (b, *shape), k, generator, eta=eta)
        )

    def ancestral(k: int) -> Sampler:
        return lambda b: signed_unit_to_pixels(
            ddpm_ancestral_sample(model.diffusion, model, (b, *shape), generator, steps=k)
        )

    name = "ddim_{}" if eta == 0 else f"ddim_{{}}_eta{eta:g}"
    samplers: dict[str, tuple[int, Sampler]] = {name.format(k): (n, ddim(k)) for k in steps}
    samplers.update({f"ancestral_{k}": (n, ancestral(k)) for k in ancestral_steps})
    if ancestral_n >= 2:
        samplers[f"ancestral_{num_timesteps}"] = (ancestral_n, ancestral(num_timesteps))
    return samplers


def ddim_steps_report(
    ddpm: Checkpoint,
    classifier_dir: Path,
    steps: list[int],
    samples: int,
    ancestral_samples: int,
    batch_size: int,
    eta: float = 0.0,
    ancestral_steps: list[int] | None = None,
) -> dict[str, Any]:
    """Per sampler: seconds per image, Fréchet distance and its real-data floor."""
    test, _ = load_fashion_mnist("test")
    train, _ = load_fashion_mnist("train")
    generator = torch.Generator().manual_seed(0)
    classifier = load_checkpoint(classifier_dir).model.eval()
    with tempfile.TemporaryDirectory() as grids:  # the section also saves sample grids
        ctx = EvalContext(
            test,
            train,
            torch.device("cpu"),
            generator,
            EvaluationSizes(batch_size=batch_size),
            Path(grids),
            ddim_eta=eta,
        )
        info = ClassifierInfo(str(classifier_dir), None, classifier.config.feature_dim)
        with torch.no_grad():
            samplers = _samplers(
                ddpm, steps, samples, ancestral_samples, generator, eta, ancestral_steps or []
            )
            quality = sample_quality(samplers, classifier, info, ctx)
    return {name: figures.to_dict() for name, figures in quality.samplers.items()}
