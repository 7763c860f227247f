"""Anomaly maps for /score as response fields.

The maths (the bound per dimension, its normalisation, the heat map's colours) is in
:mod:`models.eval.maps`, and which pixel calibration a request's maps use is decided with the
rest of its scoring plan (:mod:`models.eval.plan`); here tensors become nested lists and
base64 PNGs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from models.eval.maps import PixelCalibration


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
