"""Checkpoints on disk: a directory with three files, none of which holds pickled code.

config.json       {"format_version", "kind": a registered architecture (models.kinds),
                  "config": {...}}: rebuilds the model
model.safetensors the weights (safetensors: tensors only)
model_card.json   measured numbers (written by the evaluation CLI; optional until then)

A diffusers DDPM folder (``unet/`` + ``scheduler/``, :mod:`models.formats.diffusers`) loads
through the same functions: :func:`read_config` and :func:`load_checkpoint` tell the formats
apart here and nowhere else, and its card goes beside its files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from models.core.config import ConfigError, config_from_dict, config_to_dict
from models.kinds import KindError, architecture_of, architectures, refused_kinds

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete or inconsistent; the message names the file."""


class UnavailableKindCheckpointError(CheckpointError):
    """A checkpoint of a kind that is installed but refused (models.kinds.refused_kinds): the
    kind's plug-in failed to import or declares an unsupported interface version. A model
    repository leaves such a checkpoint out and serves the others."""


@dataclass(frozen=True)
class Checkpoint:
    kind: str  # the architecture's name in models.kinds
    model: nn.Module
    directory: Path
    card: dict[str, Any] = field(default_factory=dict)
    # Where the checkpoint came from: {"format": "elbo-serve"} or a diffusers folder's settings.
    source: dict[str, Any] = field(default_factory=lambda: {"format": "elbo-serve"})


def model_kind(model: nn.Module) -> str:
    try:
        return architecture_of(model).name
    except KindError as error:
        raise TypeError(f"not a checkpointable model: {type(model).__name__}") from error


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    card: dict[str, Any] | None = None,
    parameter_dtype: torch.dtype | None = None,
) -> Path:
    """Write config and weights (and the card, when given) into ``directory``.

    Without a card, any card already there is removed: it measured other weights.
    ``parameter_dtype`` (e.g. float16) stores the learned parameters rounded to that type, to
    halve a checkpoint's size; buffers (diffusion schedules) keep theirs, and loading casts
    back to the model's float32. The card must then measure the rounded weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = {
        "format_version": FORMAT_VERSION,
        "kind": model_kind(model),
        "config": config_to_dict(model.config),
    }
    _write_json(directory / CONFIG_FILE, header)
    parameter_names = {name for name, _ in model.named_parameters()}
    state = {
        name: _stored(tensor, parameter_dtype if name in parameter_names else None)
        for name, tensor in model.state_dict().items()
    }
    safetensors.torch.save_file(state, str(directory / WEIGHTS_FILE))
    # safetensors creates the file 0600 whatever the umask; a checkpoint served from a mount by
    # another user (a container's) must be as readable as the config written beside it.
    os.chmod(directory / WEIGHTS_FILE, (directory / CONFIG_FILE).stat().st_mode & 0o777)
    if card is not None:
        write_model_card(directory, card)
    else:
        (directory / CARD_FILE).unlink(missing_ok=True)
    return directory


def _stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach()
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous().cpu()


def write_model_card(directory: str | os.PathLike[str], card: dict[str, Any]) -> None:
    _write_json(Path(directory) / CARD_FILE, card)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    # Write-then-rename so an interrupted save never leaves a half-written file behind.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def load_checkpoint(
    directory: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> Checkpoint:
    """Rebuild the model from ``config.json``, load its weights strictly, move it to ``device``
    in eval mode. Raises CheckpointError naming the file and what is wrong with it, including
    weights that are not the ones the model card measured."""
    directory = Path(directory)
    kind, config = read_config(directory)
    source: dict[str, Any] = {"format": "elbo-serve"}
    if _is_diffusers(directory):
        from models.formats.diffusers import describe_source, load_diffusers_ddpm

        model, source = load_diffusers_ddpm(directory, config), describe_source(config)
    else:
        model = architecture_of(kind).build(config)
        state = read_safetensors(directory / WEIGHTS_FILE)
        check_state_matches(directory / WEIGHTS_FILE, model.state_dict(), state)
        model.load_state_dict(state, strict=True)
    card = read_model_card(directory)
    _check_card_measured_these_weights(weights_path(directory), card)
    return Checkpoint(kind, model.to(device).eval(), directory, card, source)


def _is_diffusers(directory: Path) -> bool:
    """A diffusers folder rather than one of ours: the one place formats are told apart."""
    from models.formats.diffusers import is_diffusers_folder

    return not (directory / CONFIG_FILE).is_file() and is_diffusers_folder(directory)


def is_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint of some format (not whether it is valid)."""
    return (directory / CONFIG_FILE).is_file() or _is_diffusers(directory)


def weights_path(directory: Path) -> Path:
    """The weights file the model card's SHA-256 measures, whatever the format."""
    if _is_diffusers(directory):
        from models.formats.diffusers import weights_path as diffusers_weights

        return diffusers_weights(directory)
    return directory / WEIGHTS_FILE


def require_model_card(checkpoint: Checkpoint) -> Checkpoint:
    """A served model needs its card: the calibration in it turns bounds into decisions."""
    if not checkpoint.card:
        raise CheckpointError(
            f"{checkpoint.directory / CARD_FILE}: missing; a served model needs its model card "
            f"(python -m models.evaluate {checkpoint.directory})"
        )
    return checkpoint


def weights_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_card_measured_these_weights(path: Path, card: dict[str, Any]) -> None:
    """A card's figures and calibrated thresholds belong to the weights whose SHA-256 it
    records; serving them beside other weights would flag anomalies by the wrong model."""
    expected = card.get("checkpoint", {}).get("weights_sha256")
    if expected is None:
        return
    actual = weights_sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"{path}: SHA-256 {actual[:16]}... is not the {expected[:16]}... that "
            f"{path.parent / CARD_FILE} measured; re-run models.evaluate on these weights"
        )


def read_config(directory: Path) -> tuple[str, Any]:
    """(kind, config) of the checkpoint in ``directory``; a diffusers folder is a "ddpm"."""
    if _is_diffusers(directory):
        from models.formats.diffusers import read_diffusers_config

        return "ddpm", read_diffusers_config(directory)
    path = directory / CONFIG_FILE
    header = read_json(path)
    kind = header.get("kind")
    if isinstance(kind, str) and kind in refused_kinds():
        raise UnavailableKindCheckpointError(
            f"{path}: kind {kind!r} is not available: {refused_kinds()[kind]}"
        )
    if kind not in architectures():
        raise CheckpointError(
            f"{path}: 'kind' must be one of {sorted(architectures())}, got {kind!r}"
        )
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is not {FORMAT_VERSION}")
    try:
        config = config_from_dict(architecture_of(kind).config_class, header.get("config"))
    except ConfigError as error:
        raise CheckpointError(f"{path}: invalid config: {error}") from error
    return kind, config


def read_model_card(directory: Path) -> dict[str, Any]:
    """The model card, or an empty dict when none has been written yet."""
    path = directory / CARD_FILE
    return read_json(path) if path.exists() else {}


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    if not os.access(path, os.R_OK):
        mode = path.stat().st_mode & 0o777
        raise CheckpointError(f"{path}: not readable by uid {os.getuid()} (mode {mode:04o})")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return payload


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    if not os.access(path, os.R_OK):
        mode = path.stat().st_mode & 0o777
        raise CheckpointError(f"{path}: not readable by uid {os.getuid()} (mode {mode:04o})")
    try:
        return safetensors.torch.load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


def check_state_matches(
    path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]
) -> None:
    """Name the missing, unexpected and wrongly shaped tensors, if any."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{name} {tuple(found[name].shape)} (config expects {tuple(expected[name].shape)})"
        for name in sorted(set(expected) & set(found))
        if found[name].shape != expected[name].shape
    ]
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{path}: weights do not match {CONFIG_FILE}: " + "; ".join(problems))
