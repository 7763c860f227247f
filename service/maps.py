"""Anomaly maps for /score: the card's pixel calibration, and the maps as response fields.

The maths (the bound per dimension, its normalisation, the heat map's colours) is in
:mod:`models.eval.maps`; here the request is checked against the card, and tensors become
nested lists and base64 PNGs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.errors import MissingCalibrationError, RequestError

if TYPE_CHECKING:
    import torch

    from models.eval.maps import PixelCalibration
    from models.kinds import BoundMethod


def pixel_calibration_for(
    card: dict[str, Any], model: str, method: BoundMethod, k: int | None
) -> PixelCalibration:
    """The card's pixel calibration of ``method`` at ``k``: 400 when the method has no
    per-pixel form, 409 when the card has no pixel calibration for it (or one at another k)."""
    from models.core.card import pixel_calibrations_in
    from models.eval.maps import PixelCalibration

    if method.run_per_dim is None:
        raise RequestError("maps", f"the {method.name} bound has no per-pixel form; leave maps out")
    calibrations = pixel_calibrations_in(card)
    record = calibrations.get(method.name)
    if record is None:
        raise MissingCalibrationError(
            "maps",
            f"the {model} model card has no pixel calibration for method {method.name!r}, "
            f"which anomaly maps are normalised with (python -m models.eval.maps CHECKPOINT); "
            f"pixel-calibrated: {', '.join(calibrations) or 'nothing'}",
        )
    if record.k != k:
        raise MissingCalibrationError(
            "maps",
            f"the {model} model card's pixel calibration of {method.name} used k={record.k}, "
            f"its score calibration k={k}; re-run python -m models.eval.maps with --k {k}",
        )
    return PixelCalibration.of_card(method.name, record)


def map_fields(
    calibration: PixelCalibration,
    maps_nats: torch.Tensor,
    pixels: torch.Tensor,
    normalisation: str = "pixel",
) -> list[dict[str, Any]]:
    """Per image, ``anomaly_map`` (the normalised map as nested (C, H, W) floats) and
    ``heatmap_png`` (base64 RGB PNG of the image under a heat map of it): maps (B, C, H, W)
    nats, pixels uint8 (B, C, H, W)."""
    from models.eval.maps import heatmap_overlay
    from service.imaging import to_base64_png

    z = calibration.normalise(maps_nats, normalisation)  # type: ignore[arg-type]
    heat = heatmap_overlay(pixels, z)
    return [
        {"anomaly_map": z[i].float().tolist(), "heatmap_png": to_base64_png(heat[i])}
        for i in range(len(z))
    ]
