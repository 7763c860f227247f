"""A model repository: a directory holding one checkpoint directory per model, served by name.

Every subdirectory whose ``config.json`` names a servable kind (:mod:`models.kinds`) is a
model, named after the directory, and so is every diffusers DDPM folder
(:mod:`models.formats.diffusers`) whose settings we serve (one with a refused setting is
logged and left out, so the others keep serving, and so is a checkpoint of a kind whose plug-in
was refused: :func:`models.kinds.refused_kinds`); other architectures (the feature classifier)
and directories without a config are not models. A config that cannot be read is an error, not
a model quietly left out.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from models.kinds import servable_kinds

# Names travel in URLs, JSON and metric labels: keep them to a safe, readable alphabet.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
logger = logging.getLogger("elbo_serve")


def check_model_name(name: str) -> str:
    """``name``, or a ValueError saying what a model name may hold."""
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ValueError(
            f"model name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-', starting "
            "with a letter or digit"
        )
    return name


def servable_checkpoints(root: Path) -> dict[str, Path]:
    """name -> checkpoint directory for each servable model under ``root``, sorted by name."""
    from models.core.checkpoints import (
        CheckpointError,
        UnavailableKindCheckpointError,
        is_checkpoint,
        read_config,
    )
    from models.formats.diffusers import RefusedSettingError

    if not root.is_dir():
        raise CheckpointError(f"{root}: the model directory does not exist")
    found = {}
    for directory in sorted(path for path in root.iterdir() if path.is_dir()):
        if not is_checkpoint(directory):
            continue
        try:
            kind, _config = read_config(directory)
        # A setting we have no bound for, or a kind whose plug-in was refused: serve the rest.
        except (RefusedSettingError, UnavailableKindCheckpointError) as refused:
            logger.error("not serving %s: %s", directory.name, refused)
            continue
        if kind in servable_kinds():
            found[check_model_name(directory.name)] = directory
    return found
