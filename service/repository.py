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
    from models.eval.plan import Background, Scoring, ScoringPlan
    from models.kinds import BoundMethod, ModelKind, Work
    from service.schemas import ScoreRequest

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
    # The background model of the card's 'ratio' score, checked at load: as served (its
    # bound runs through the batcher under its own name) and as the plan sees it.
    background: ServedModel | None = None
    background_bound: Background | None = None
    # The card read once into a models.eval.plan.Scoring, on first use (or at load)
    _scoring: list[Scoring] = field(default_factory=list, init=False, compare=False, repr=False)

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

    @property
    def scoring(self) -> Scoring:
        """The model's scoring (models.eval.plan), its card read once."""
        if not self._scoring:
            from models.eval.plan import Scoring

            scoring = Scoring(self.name, self.kind, self.model, self.card, self.background_bound)
            self._scoring.append(scoring)
        return self._scoring[0]

    def plan(self, request: ScoreRequest) -> ScoringPlan:
        """How ``request`` is scored: 400 for options the model cannot honour, 409 for those
        its card has no calibration for."""
        from service.scoring import plan_for

        return plan_for(self.scoring, request)

    def _scores(self, method: BoundMethod) -> dict[str, dict[str, Any]]:
        """Per correction the card calibrates ``method`` for, what /score then takes: only
        the k its calibration used, and a false-positive rate the calibration resolves."""
        from typing import get_args

        from models.eval.plan import score_k
        from models.kinds import OptionError
        from service.schemas import Correction

        calibrated = {}
        for correction in get_args(Correction):
            try:  # NoCalibrationError, or an OptionError: no regret of this bound
                entry = self.scoring.calibration_of(method.name, correction)
            except OptionError:
                continue
            k = score_k(method, None, entry.k)
            calibrated[correction] = {"k": k, "min_fpr": entry.calibration.min_fpr}
            if entry.regret_steps is not None:
                calibrated[correction]["regret_steps"] = entry.regret_steps
        return calibrated

    @property
    def card(self) -> dict[str, Any]:
        return self.checkpoint.card

    def describe(self) -> dict[str, Any]:
        """What a client needs to call this model: shapes, methods with their k, samplers
        and the options of each operation with their defaults and limits."""
        channels, height, width = self.image_shape
        methods = {
            name: {
                "description": m.description,
                "k_range": m.k_range,
                "default_k": m.default_k,
                "maps": m.run_per_dim is not None,
                "scores": self._scores(m),
                "recommended_correction": self.scoring.recommended_correction(name),
            }
            for name, m in self.kind.methods(self.model).items()
        }
        limits = self.kind.option_limits(self.model)
        regret = self.kind.likelihood_regret(self.model)
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
            "likelihood_regret": None
            if regret is None
            else {
                "bound": regret.bound,
                "description": regret.description,
                "steps_range": list(regret.steps_range),
                "default_steps": regret.default_steps,
                "learning_rate": regret.learning_rate,
            },
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
    from models.core.card import CardError, background_in, calibrations_in, pixel_calibrations_in
    from models.core.checkpoints import (
        CARD_FILE,
        CheckpointError,
        load_checkpoint,
        require_model_card,
    )

    served = {}
    for name, directory in directories.items():
        start = time.perf_counter()
        checkpoint = require_model_card(load_checkpoint(directory, device))
        try:  # read now, so a malformed calibration stops the start, not a /score later
            calibrations_in(checkpoint.card)
            pixel_calibrations_in(checkpoint.card)
            background_in(checkpoint.card)
        except CardError as error:
            raise CheckpointError(f"{directory / CARD_FILE}: {error}") from error
        served[name] = _served(name, checkpoint, directory)
        if on_loaded is not None:
            on_loaded(name, time.perf_counter() - start)
        logger.info("loaded %s (%s) from %s on %s", name, served[name].kind.name, directory, device)
    for name, directory in directories.items():
        if background_in(served[name].card) is not None:
            served[name] = _with_background(served[name], directory, served, device)
    return Repository(served)


def _served(name: str, checkpoint: Checkpoint, directory: Path) -> ServedModel:
    from models.core.serving_defaults import read_serving_defaults
    from models.kinds import kind_of

    kind = kind_of(checkpoint.kind)
    costs = ModelCosts(
        kind.networks_gflop(checkpoint.model),
        lambda work, kind=kind, model=checkpoint.model: kind.evaluations(model, work),
    )
    defaults = read_serving_defaults(directory, kind, checkpoint.model, checkpoint.card)
    return ServedModel(name, kind, checkpoint, costs, serving_defaults=defaults)


def _with_background(
    foreground: ServedModel, directory: Path, served: Mapping[str, ServedModel], device: str
) -> ServedModel:
    """``foreground`` with the background its card names, checked now so that a missing or
    mismatched one stops the start (CheckpointError naming the card): the served model of that
    name, else the checkpoint of that name beside the foreground's directory (the model
    repository it was measured in), loaded but not served under its own name."""
    import dataclasses

    from models.core.card import background_in
    from models.core.checkpoints import (
        CARD_FILE,
        CheckpointError,
        is_checkpoint,
        load_checkpoint,
        weights_path,
        weights_sha256,
    )
    from models.eval.plan import BackgroundError, check_background

    card_path = directory / CARD_FILE
    reference = background_in(foreground.card)
    assert reference is not None
    background = served.get(reference.name)
    if background is None:
        sibling = directory.resolve().parent / reference.name
        if not is_checkpoint(sibling):
            raise CheckpointError(
                f"{card_path}: its background model {reference.name!r} (correction 'ratio') is "
                f"neither served nor a checkpoint beside it ({sibling}); serve it too, or "
                "remove the card's background section"
            )
        background = _served(reference.name, load_checkpoint(sibling, device), sibling)
        logger.info("loaded %s as the background of %s", reference.name, foreground.name)
    try:
        bound = check_background(
            foreground.card,
            foreground.name,
            foreground.image_shape,
            background.name,
            background.kind,
            background.model,
            weights_sha256(weights_path(background.checkpoint.directory)),
        )
    except BackgroundError as error:
        raise CheckpointError(f"{card_path}: {error}") from error
    with_background = dataclasses.replace(foreground, background=background, background_bound=bound)
    _ = with_background.scoring  # the card read now, not at the first /score
    return with_background
