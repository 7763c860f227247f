"""An experiment: which kind of model, its config, and how to train it.

An :class:`Experiment` is what a run directory is tied to: its dictionary is saved in the
resumable state and beside the exported checkpoint (``training.json``), and a run resumes
only under the same one. The kind is a name in the registry (:mod:`models.kinds`), which
gives the config class, the network and the image shape; nothing here knows what a VAE or a
DDPM is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from models.core.config import TrainConfig, config_from_dict, config_to_dict
from models.kinds import ImageShape, ModelKind, kind_of
from models.training.background import BackgroundOf


@dataclass(frozen=True)
class Experiment:
    """A servable kind's name, a config of its ``config_class``, and the training config;
    for a background model (:mod:`models.training.background`), whose background it is and
    the mutation rate of its training images."""

    kind: str
    model_config: Any
    train: TrainConfig
    background: BackgroundOf | None = None

    def __post_init__(self) -> None:
        expected = self.model_kind.config_class  # KindError for a name the registry lacks
        if not isinstance(self.model_config, expected):
            raise TypeError(
                f"a {self.kind} experiment needs a {expected.__name__}, "
                f"got {type(self.model_config).__name__}"
            )

    @property
    def model_kind(self) -> ModelKind:
        return kind_of(self.kind)

    @property
    def image_shape(self) -> ImageShape:
        """(C, H, W) of the images the model trains on."""
        return self.model_kind.image_shape(self.model_config)

    @classmethod
    def from_file(cls, kind: str, path: Path) -> Experiment:
        """Read a JSON file with a ``"model"`` section (the kind's config) and a ``"train"``
        section (:class:`TrainConfig`); a missing section takes the defaults."""
        payload = json.loads(Path(path).read_text())
        return cls(
            kind,
            config_from_dict(kind_of(kind).config_class, payload.get("model", {})),
            config_from_dict(TrainConfig, payload.get("train", {})),
        )

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Experiment:
        """The experiment :meth:`to_dict` wrote (``training.json``'s ``experiment``)."""
        kind = payload["kind"]
        background = payload.get("background")
        return cls(
            kind,
            config_from_dict(kind_of(kind).config_class, payload.get("model", {})),
            config_from_dict(TrainConfig, payload.get("train", {})),
            None if background is None else BackgroundOf.from_dict(background),
        )

    def to_dict(self) -> dict[str, Any]:
        """The experiment as JSON; ``background`` only for a background model, so that the
        records of other runs read as before."""
        out = {
            "kind": self.kind,
            "model": config_to_dict(self.model_config),
            "train": config_to_dict(self.train),
        }
        if self.background is not None:
            out["background"] = self.background.to_dict()
        return out

    def build_model(self) -> nn.Module:
        """A freshly initialised network (from the global RNG)."""
        return self.model_kind.build(self.model_config)
