"""Which CPU speed mode each served model's networks run in: forced by the settings or chosen
by measurement on this machine (:mod:`models.nn.mode_choice`), applied at load, logged and
exported as metrics. /models shows each choice."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.nn.mode_choice import ModeChoice
    from service.repository import Repository
    from service.settings import Settings

logger = logging.getLogger("elbo_serve")


def serve_in_chosen_modes(
    repository: Repository, settings: Settings, device: str, metrics: Any
) -> dict[str, ModeChoice]:
    """name -> the mode each model now runs in (none on a GPU)."""
    from models.nn.acceleration import accelerate
    from models.nn.mode_choice import (
        acceleration_named,
        candidate_modes,
        choose_mode,
        forced,
        hot_calls,
    )

    if device.startswith("cuda"):
        return {}
    rows = settings.chunk_rows(device) or 4  # the sampling chunk; 4 rows when chunks are off
    modes = candidate_modes(settings.bf16_autocast)
    choices = {}
    for name, served in repository.items():
        if (mode := settings.acceleration(device)) is not None:
            choice = forced(mode.name)
        else:
            choice = choose_mode(
                served.model,
                lambda served=served: hot_calls(served.model, rows),
                modes,
                settings.cpu_mode_cache_dir,
                probe=f"rows={rows}",
            )
            mode = acceleration_named(choice.mode)
        accelerate(served.model, mode)
        metrics.set_cpu_mode(name, choice)
        logger.info(
            "%s runs with %s (%s on %s, torch %s, %d thread(s), flags %s; speed-up over "
            "fp32_eager %s; bound moved %s bits/dim; measuring took %.1f s)",
            name,
            choice.mode,
            choice.source,
            choice.machine.cpu,
            choice.machine.torch,
            choice.machine.threads,
            ",".join(choice.machine.flags),
            {m: round(s, 3) for m, s in choice.speedups().items()},
            {m: f"{d:.1e}" for m, d in choice.bound_diff_bits_per_dim.items()},
            choice.measure_seconds,
        )
        choices[name] = choice
    return choices


def cpu_mode_info(choice: ModeChoice | None):
    """The schema of ``choice`` for /models; None stays None (a GPU)."""
    from service.schemas import CpuModeInfo

    return None if choice is None else CpuModeInfo.model_validate(choice.to_dict())
