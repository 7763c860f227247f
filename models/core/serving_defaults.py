"""A checkpoint's serving defaults: what ``/sample`` draws when a request names no sampler or
leaves options out, chosen from the checkpoint's own measured figures.

They live beside the checkpoint in ``serving_defaults.json`` (any format: our checkpoints and
diffusers folders alike), so that re-running the evaluation, which rewrites the card, keeps
them::

    {
      "sample": {"sampler": "ddim", "steps": 50, "eta": 0.0},
      "weights_sha256": "8c18...",    # the weights the figures were measured on
      "measured": "Frechet distance at 10,000 samples: ddim eta 0 8.1, ancestral 8.9"
    }

A checkpoint without the file keeps its kind's defaults. The options are those of the
kind's sampler (:meth:`models.kinds.ModelKind.sample_options_for` checks them when the
checkpoint loads, so a bad file stops the start, not a request). They apply to a request that
names no sampler or the same one; a request naming another sampler gets that sampler's kind
defaults, since the measured options belong to the measured sampler.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.core.checkpoints import CheckpointError
from models.kinds import OptionError

if TYPE_CHECKING:
    from torch import nn

    from models.kinds import ModelKind

SERVING_DEFAULTS_FILE = "serving_defaults.json"


class ServingDefaultsError(CheckpointError):
    """A serving-defaults file that cannot be served; the message names the file."""


@dataclass(frozen=True)
class ServingDefaults:
    sample: Mapping[str, Any]  # "sampler" and the options it runs with
    measured: str  # which figures chose them
    weights_sha256: str | None = None

    @property
    def sampler(self) -> str:
        return self.sample["sampler"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample": dict(self.sample),
            "weights_sha256": self.weights_sha256,
            "measured": self.measured,
        }


def sample_options(
    kind: ModelKind,
    model: nn.Module,
    defaults: ServingDefaults | None,
    sampler: str | None,
    given: Mapping[str, Any],
) -> dict[str, Any]:
    """The sampler and options a request runs with: ``given`` (what it set) over the
    checkpoint's serving defaults when it names no sampler or theirs, over the kind's
    defaults otherwise. Raises :class:`models.kinds.OptionError`."""
    if defaults is None or sampler not in (None, defaults.sampler):
        return kind.sample_options_for(model, sampler, given)
    measured = {name: value for name, value in defaults.sample.items() if name != "sampler"}
    return kind.sample_options_for(model, defaults.sampler, {**measured, **given})


def read_serving_defaults(
    directory: Path,
    kind: ModelKind,
    model: nn.Module,
    card: Mapping[str, Any],
) -> ServingDefaults | None:
    """``directory``'s serving defaults, checked against the kind's samplers and the weights
    the card measured; None when the file is absent. Raises :class:`ServingDefaultsError`."""
    path = directory / SERVING_DEFAULTS_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        defaults = ServingDefaults(
            sample=dict(payload["sample"]),
            measured=str(payload["measured"]),
            weights_sha256=payload.get("weights_sha256"),
        )
        defaults.sample["sampler"]  # noqa: B018 (a KeyError names the missing key)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ServingDefaultsError(
            f"{path}: expected {{'sample': {{'sampler': ..., options}}, 'measured': ...}}: "
            f"{error!r}"
        ) from error
    card_weights = card.get("checkpoint", {}).get("weights_sha256")
    if defaults.weights_sha256 and card_weights and defaults.weights_sha256 != card_weights:
        raise ServingDefaultsError(
            f"{path}: measured on weights {defaults.weights_sha256[:16]}..., but the model "
            f"card is of {card_weights[:16]}...; measure these weights again"
        )
    try:
        sample_options(kind, model, defaults, None, {})
    except OptionError as error:
        raise ServingDefaultsError(f"{path}: sample.{error.field}: {error.message}") from error
    return defaults


def write_serving_defaults(directory: Path, defaults: ServingDefaults) -> Path:
    path = directory / SERVING_DEFAULTS_FILE
    path.write_text(json.dumps(defaults.to_dict(), indent=1) + "\n")
    return path
