"""What every evaluation section shares: how many images each figure uses, the data, the
device, one seeded generator, and the bounds measured as anomaly scores.

Fashion-MNIST test-set split: images [0, CALIBRATION_START) are the normal side of the anomaly
metrics (and the likelihood subset when not all 10,000 are used); images from CALIBRATION_START
on are held out for calibration, so the false-positive rate each threshold gives on the first
half checks it. A folder of your own images is split the same way, by a seeded draw
(models/eval/folder_data.py): ``test`` is then the measured part, ``held_out`` the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from models.core.card import OUTLIER_SETS, Estimate
from models.eval.outliers import outlier_sets
from models.eval.scoring import BoundFn, in_chunks

CALIBRATION_START = 5000  # test images from here on are held out for calibration


@dataclass(frozen=True)
class EvaluationSizes:
    """How many images each figure is measured on; the card records them beside the figures."""

    likelihood_images: int = 10_000  # VAE ELBO; DDPM exact bound (T network calls per image)
    iwae_images: int = 100
    iwae_k: int = 1000
    score_iwae_k: int = 32  # IWAE used as an anomaly score
    score_mc_k: int = 10  # DDPM Monte-Carlo bound used as an anomaly score
    fd_samples: int = 10_000  # VAE samples; DDPM DDIM samples
    ddim_steps: int = 50
    ancestral_samples: int = 100
    anomaly_images: int = 1000  # per set, for the cheap scores
    anomaly_exact_images: int = 20  # per set, for the exact DDPM bound
    calibration_images: int = 2000
    calibration_exact_images: int = 50
    # The Likelihood Regret (kinds that offer one): normal images and images per outlier set
    # for its AUROC, and held-out images for its calibration; each costs a short optimisation.
    regret_images: int = 1000
    regret_calibration_images: int = 2000
    batch_size: int = 250
    # Images per network call of the exact DDPM bound (several timesteps of a chunk share a
    # call); a GPU wants thousands, a CPU gains nothing past a few hundred.
    network_batch: int = 256
    # Images whose bound is measured twice, in strict float32 and in TF32, when --tf32 is on.
    precision_check_images: int = 50

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"{field.name} must be >= 0")
        for name in ("anomaly_images", "anomaly_exact_images"):
            if getattr(self, name) > CALIBRATION_START:
                raise ValueError(f"{name} must be <= {CALIBRATION_START}")


@dataclass(frozen=True)
class EvalContext:
    """What every section needs: data, device, one seeded generator, sizes."""

    # Normal images measured (likelihood, the normal side of AUROC), uint8 (N, C, H, W):
    # the 10,000 Fashion-MNIST test images, or the measured part of a normal folder.
    test: torch.Tensor
    # Fashion-MNIST's 60,000 training images (the Fréchet distance's real-data floor); None
    # where there is no Fréchet distance to measure (your own images).
    train: torch.Tensor | None
    device: torch.device
    generator: torch.Generator
    sizes: EvaluationSizes
    out_dir: Path
    # DDIM's eta for the sample-quality section (1: the service's default sampler).
    ddim_eta: float = 1.0
    # Normal images held out for calibration, none of them in ``test``; None: the Fashion-MNIST
    # test images from CALIBRATION_START on. ``held_out_source`` says what they are.
    held_out: torch.Tensor | None = None
    held_out_source: str = "Fashion-MNIST test images"
    # Outlier set name -> uint8 images of the normal images' shape (your own folders); None:
    # ``synthetic_sets`` made from the normal images (models/eval/outliers.py).
    outliers: Mapping[str, torch.Tensor] | None = None
    synthetic_sets: tuple[str, ...] = tuple(OUTLIER_SETS)

    def outlier_set_names(self) -> tuple[str, ...]:
        return tuple(self.synthetic_sets if self.outliers is None else self.outliers)

    def outlier_images(self, normal: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """Each outlier set, at most ``n`` images: the synthetic sets of ``normal`` (N, C, H, W)
        or the first images of each outlier folder (in their seeded order)."""
        if self.outliers is None:
            generated = outlier_sets(normal, self.generator)
            return {name: generated[name] for name in self.synthetic_sets}
        return {name: images[:n] for name, images in self.outliers.items()}

    def calibration_images(self, n: int) -> tuple[torch.Tensor, str]:
        """At most ``n`` held-out normal images (N, C, H, W) and where they come from."""
        if self.held_out is None:
            images = self.test[CALIBRATION_START : CALIBRATION_START + n]
            last = CALIBRATION_START + len(images) - 1
            return images, f"{self.held_out_source} {CALIBRATION_START}..{last}"
        images = self.held_out[:n]
        return images, f"{self.held_out_source}: {len(images)} of {len(self.held_out)}"

    def score(
        self, bound: BoundFn, images: torch.Tensor, label: str, chunk: int | None = None
    ) -> torch.Tensor:
        """``bound`` of uint8 images (N, C, H, W) in chunks, with a progress bar: (N,) float64."""
        bar = tqdm(total=images.shape[0], desc=label, leave=False, dynamic_ncols=True)
        try:
            return in_chunks(bound, images, self.device, chunk or self.sizes.batch_size, bar.update)
        finally:
            bar.close()


@dataclass(frozen=True)
class ScoreMethod:
    """A bound measured and calibrated as an anomaly score."""

    name: str  # the service's method name
    k: int | None
    bound: BoundFn
    normal_images: int  # per set, for AUROC / FPR@95
    calibration_images: int
    chunk: int | None = None  # images per call, when the batch size would not fit


def mean_and_stderr(values: torch.Tensor) -> Estimate:
    """Mean of (N,) per-image values and its standard error (NaN for one image)."""
    values = values.double()
    stderr = values.std().item() / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return Estimate(values.mean().item(), stderr)
