"""The served models, loaded from the model repository and looked up by name.

A :class:`ServedModel` is one loaded checkpoint with its kind (:mod:`models.kinds`) and its
costs; the endpoints ask it for a bound, a sampler's options, a latent shape, and never ask
which kind it is. An unknown name is a 400 that lists the served ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.costs import Cost, ModelCosts
from service.errors import RequestError

if TYPE_CHECKING:
    from torch import nn

    from models.core.checkpoints import Checkpoint
    from models.core.serving_defaults import ServingDefaults
    from models.eval.maps import PixelCalibration
    from models.kinds import BoundMethod, ModelKind, Work
    from service.scoring import CalibratedScore

logger = logging.getLogger("elbo_serve")
_PNG_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class ServedModel:
    name: str
    kind: ModelKind
    checkpoint: Checkpoint
    costs: ModelCosts
    # The sampler and options measured best for these weights (None: the kind's defaults).
    serving_defaults: ServingDefaults | None = None
    # method, correction -> its calibration, read from the card on first use
    _calibrations: dict[tuple[str, str], CalibratedScore] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @property
    def model(self) -> nn.Module:
        return self.checkpoint.model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this model reads and writes."""
        return self.kind.image_shape(self.model.config)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.kind.latent_shape(self.model)

    def method(self, name: str | None) -> BoundMethod:
        return self.kind.method_for(self.model, name)

    def sample_options(self, sampler: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
        """The sampler and options a /sample request runs with (OptionError for bad ones)."""
        from models.core.serving_defaults import sample_options

        return sample_options(self.kind, self.model, self.serving_defaults, sampler, given)

    def cost(self, work: Work) -> Cost:
        return self.costs.estimate(work)

    def calibration(self, method: str, correction: str) -> CalibratedScore:
        """The card's calibration of ``method`` for ``correction`` (409 when it has none),
        built once rather than per request."""
        from service.scoring import calibration_for

        key = (method, correction)
        if key not in self._calibrations:
            self._calibrations[key] = calibration_for(self.card, self.name, method, correction)
        return self._calibrations[key]

    def pixel_calibration(self, method: BoundMethod, k: int | None) -> PixelCalibration:
        """The card's pixel calibration for anomaly maps (400 or 409 when there is none)."""
        from service.maps import pixel_calibration_for

        return pixel_calibration_for(self.card, self.name, method, k)

    @property
    def card(self) -> dict[str, Any]:
        return self.checkpoint.card

    def describe(self) -> dict[str, Any]:
        """What a client needs to call this model: shapes, methods with their k, samplers
        and the options of each operation with their defaults and limits."""
        channels, height, width = self.image_shape
        methods = {
            name: {"description": m.description, "k_range": m.k_range, "default_k": m.default_k}
            for name, m in self.kind.methods(self.model).items()
        }
        limits = self.kind.option_limits(self.model)
        options = {
            operation: {
                name: {"default": option.default, "description": option.description}
                | ({"range": limits[name]} if name in limits else {})
                for name, option in declared.items()
            }
            for operation, declared in (
                ("sample", self.kind.sample_options),
                ("encode", self.kind.encode_options),
                ("decode", self.kind.decode_options),
            )
        }
        return {
            "image": {
                "channels": channels,
                "height": height,
                "width": width,
                "mode": _PNG_MODES.get(channels, f"{channels} channels"),
            },
            "latent_shape": list(self.latent_shape),
            "methods": methods,
            "samplers": list(self.kind.samplers(self.model)),
            "default_sample": self.sample_options(None, {}),
            "sampler_defaults": {
                sampler: self.sample_options(sampler, {})
                for sampler in self.kind.samplers(self.model)
            },
            "serving_defaults": (
                None if self.serving_defaults is None else self.serving_defaults.to_dict()
            ),
            "options": options,
            "source": self.checkpoint.source,
        }


class Repository(Mapping[str, ServedModel]):
    """The served models by name."""

    def __init__(self, served: Mapping[str, ServedModel]) -> None:
        self._served = dict(served)

    def __getitem__(self, name: str) -> ServedModel:
        return self._served[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._served)

    def __len__(self) -> int:
        return len(self._served)

    def get_served(self, name: str) -> ServedModel:
        """The model called ``name``; a 400 naming the served ones for any other name."""
        if name not in self._served:
            served = ", ".join(repr(n) for n in self._served)
            raise RequestError("model", f"no model is served as {name!r}; served: {served}")
        return self._served[name]


def summaries(directories: Mapping[str, Path]) -> dict[str, str]:
    """name -> "kind, WxH mode" from each checkpoint's config alone (no weights loaded)."""
    from models.core.checkpoints import read_config
    from models.kinds import kind_of

    described = {}
    for name, directory in directories.items():
        kind_name, config = read_config(directory)
        channels, height, width = kind_of(kind_name).image_shape(config)
        mode = _PNG_MODES.get(channels, f"{channels} channels")
        described[name] = f"{kind_name}, {width}x{height} {mode}"
    return described


def load_repository(directories: Mapping[str, Path], device: str, on_loaded=None) -> Repository:
    """Load every checkpoint (with its model card, which serving needs) onto ``device``;
    ``on_loaded(name, seconds)`` after each."""
    from models.core.card import CardError, calibrations_in, pixel_calibrations_in
    from models.core.checkpoints import (
        CARD_FILE,
        CheckpointError,
        load_checkpoint,
        require_model_card,
    )
    from models.core.serving_defaults import read_serving_defaults
    from models.kinds import kind_of

    served = {}
    for name, directory in directories.items():
        start = time.perf_counter()
        checkpoint = require_model_card(load_checkpoint(directory, device))
        try:  # read now, so a malformed calibration stops the start, not a /score later
            calibrations_in(checkpoint.card)
            pixel_calibrations_in(checkpoint.card)
        except CardError as error:
            raise CheckpointError(f"{directory / CARD_FILE}: {error}") from error
        kind = kind_of(checkpoint.kind)
        costs = ModelCosts(
            kind.networks_gflop(checkpoint.model),
            lambda work, kind=kind, model=checkpoint.model: kind.evaluations(model, work),
        )
        defaults = read_serving_defaults(directory, kind, checkpoint.model, checkpoint.card)
        served[name] = ServedModel(name, kind, checkpoint, costs, defaults)
        if on_loaded is not None:
            on_loaded(name, time.perf_counter() - start)
        logger.info("loaded %s (%s) from %s on %s", name, kind.name, directory, device)
    return Repository(served)
