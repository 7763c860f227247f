"""Background models for the likelihood-ratio score (Ren et al. 2019, arXiv 1906.02845).

A background model is trained on perturbed normal images: each dimension (a pixel's value in
each channel) is replaced, independently with probability R, by a value drawn uniformly from
0..255 (Sec. 3.1: "mutation" at rate mu). It learns the population-level statistics of the
images (their backgrounds, their pixel histograms) and little of their semantics, so that

    LLR(x) = bound_foreground(x) - bound_background(x)      (bits/dim, Eq. 5 as a codelength)

discounts what both models find easy. A background may also be trained on any folder the user
names (``--data``), with or without mutation.

:class:`BackgroundOf` is what a background run is tied to (the foreground's checkpoint and the
rate); it is part of the run's :class:`models.training.experiment.Experiment`, so a resumed run
continues only under the same one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.training.sources import FASHION_MNIST

# The exported checkpoint of a run directory, and the record beside it.
_EXPORT_DIR = "checkpoint"
_TRAINING_FILE = "training.json"
DEFAULT_MUTATION_RATE = 0.2


@dataclass(frozen=True)
class BackgroundOf:
    """A background run: the foreground checkpoint it is the background of (its directory and
    the SHA-256 of its weights when the run started) and the mutation rate R in [0, 1)."""

    foreground: str
    foreground_sha256: str
    mutation_rate: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.mutation_rate < 1.0:
            raise ValueError(f"the mutation rate must be in [0, 1), got {self.mutation_rate}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "foreground": self.foreground,
            "foreground_sha256": self.foreground_sha256,
            "mutation_rate": self.mutation_rate,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> BackgroundOf:
        return cls(payload["foreground"], payload["foreground_sha256"], payload["mutation_rate"])


def mutate(images: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, C, H, W) -> uint8 (B, C, H, W): each value replaced, independently with
    probability ``rate``, by a uniform draw from 0..255 (Ren et al. 2019, Sec. 3.1).

    The draws come from ``generator`` (on its device, then moved), the mask first, then the
    replacement values, so a seeded run is reproducible."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if rate == 0.0:
        return images
    device = generator.device
    replace = torch.rand(images.shape, generator=generator, device=device) < rate
    values = torch.randint(
        0, 256, images.shape, generator=generator, device=device, dtype=torch.uint8
    )
    return torch.where(replace.to(images.device), values.to(images.device), images)


@dataclass(frozen=True)
class Foreground:
    """What a background run needs of its foreground: its exported checkpoint directory, the
    experiment it was trained under (as saved in ``training.json``) and its data source."""

    checkpoint: Path
    experiment: dict[str, Any]
    data: str  # a folder or 'fashion-mnist'
    resize: bool


def read_foreground(path: Path) -> Foreground:
    """The foreground of ``--background-of PATH``: a run directory (its ``checkpoint/``) or an
    exported checkpoint directory, with the ``training.json`` training writes beside it.
    FileNotFoundError naming what is missing."""
    checkpoint = path / _EXPORT_DIR if (path / _EXPORT_DIR / _TRAINING_FILE).exists() else path
    record_path = checkpoint / _TRAINING_FILE
    if not record_path.exists():
        raise FileNotFoundError(
            f"{path}: no {_TRAINING_FILE} in it or in {path / _EXPORT_DIR}; --background-of "
            "takes a training run directory or a checkpoint that models.train exported"
        )
    record = json.loads(record_path.read_text())
    data = record.get("data") or {"source": FASHION_MNIST}  # runs before folders existed
    folder = data.get("folder") if data.get("source") == "folder" else None
    return Foreground(
        checkpoint=checkpoint,
        experiment=record["experiment"],
        data=folder or FASHION_MNIST,
        resize=bool(data.get("resized", False)),
    )
