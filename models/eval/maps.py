"""Anomaly maps: where an image's codelength goes, normalised against normal images.

A bound's map (:meth:`models.kinds.ModelKind.pixel_nats`) gives each dimension of an image its
nats; they sum to the image's bound. Some pixels cost many nats in every normal image (edges,
textured regions), others almost none (the background), so a raw map mostly shows where
images are hard. Normalised per pixel against held-out normal images,

    z_i = (map_i - mean_i) / (std_i + eps),

a map shows where an image costs more than normal images do *at that pixel*: an anomaly map.
The per-pixel mean and standard deviation live in the model card's ``pixel_calibration``
section (:class:`models.core.card.MethodPixelCalibration`).

Add the pixel calibration to an existing checkpoint's card (every other figure unchanged):

    python -m models.eval.maps checkpoints/vae --images 2000
    python -m models.eval.maps checkpoints/ddpm --images 300
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from models.core.card import MethodPixelCalibration, PixelGrid, calibrations_in
from models.core.noise import seeded_generator
from models.core.pixels import pixels_to_signed_unit
from models.core.progressive import run_to_end
from models.kinds import ModelKind

# Floor added to every per-pixel standard deviation: pixels that cost the same few nats in
# every normal image (a blank background) would otherwise turn tiny differences into huge z.
DEFAULT_EPS_NATS = 0.05
Normalisation = Literal["pixel", "global"]
# The heat map's fixed colour scale: z from 0 (blue) to HEATMAP_MAX_Z (red), clipped.
HEATMAP_MAX_Z = 6.0
HEATMAP_ALPHA = 0.5  # weight of the colour over the image
_SIGNIFICANT_DIGITS = 6  # of the statistics stored in the card


@dataclass(frozen=True)
class PixelCalibration:
    """Per-pixel statistics of the maps of one bound (``method``) over normal images:
    ``mean_nats``, ``std_nats`` (C, H, W) float64; ``k`` is the bound's k, when it takes one."""

    method: str
    mean_nats: torch.Tensor
    std_nats: torch.Tensor
    num_images: int
    source: str
    k: int | None = None
    eps_nats: float = DEFAULT_EPS_NATS

    def normalise(self, maps_nats: torch.Tensor, how: Normalisation = "pixel") -> torch.Tensor:
        """Maps (B, C, H, W) nats -> z (B, C, H, W) float64.

        "pixel": z = (map - mean) / (std + eps) with each pixel's own statistics, for aligned
        images, where a pixel's normal codelength is a property of its place.
        "global": z = (map - m) / (s + eps) with m, s the mean and standard deviation of a
        normal image's pixels all taken together (s^2 = E[std^2] + Var(mean) over pixels): one
        positive affine map of the nats, so it ranks pixels as the raw map does, for images
        that are not aligned.
        """
        if tuple(maps_nats.shape[1:]) != tuple(self.mean_nats.shape):
            raise ValueError(
                f"maps of shape {tuple(maps_nats.shape)} do not match the calibration's "
                f"(B, {', '.join(map(str, self.mean_nats.shape))})"
            )
        if how == "global":
            mean = self.mean_nats.mean()
            spread = (self.std_nats.pow(2) + (self.mean_nats - mean).pow(2)).mean().sqrt()
            return (maps_nats.double() - mean) / (spread + self.eps_nats)
        return (maps_nats.double() - self.mean_nats) / (self.std_nats + self.eps_nats)

    def to_card(self) -> MethodPixelCalibration:
        return MethodPixelCalibration(
            k=self.k,
            source=self.source,
            num_images=self.num_images,
            eps_nats=self.eps_nats,
            mean_nats=_grid(self.mean_nats),
            std_nats=_grid(self.std_nats),
        )

    @classmethod
    def of_card(cls, method: str, record: MethodPixelCalibration) -> PixelCalibration:
        return cls(
            method=method,
            mean_nats=torch.tensor(record.mean_nats, dtype=torch.float64),
            std_nats=torch.tensor(record.std_nats, dtype=torch.float64),
            num_images=record.num_images,
            source=record.source,
            k=record.k,
            eps_nats=record.eps_nats,
        )


def _grid(values: torch.Tensor) -> PixelGrid:
    """(C, H, W) -> nested tuples of floats rounded to a few significant digits (the card
    stays small; the rounding is far below the images-to-images spread)."""
    return tuple(
        tuple(tuple(float(f"{v:.{_SIGNIFICANT_DIGITS}g}") for v in row) for row in channel)
        for channel in values.double().tolist()
    )


def fit_pixel_calibration(
    maps_nats: torch.Tensor,
    method: str = "",
    source: str = "",
    k: int | None = None,
    eps_nats: float = DEFAULT_EPS_NATS,
) -> PixelCalibration:
    """Per-pixel mean and (unbiased) standard deviation of maps (N, C, H, W) of normal images,
    N >= 2. Both are rounded as the card stores them, so that a calibration read back from a
    card normalises exactly as the fitted one does."""
    if maps_nats.ndim != 4 or maps_nats.shape[0] < 2:
        raise ValueError(f"need maps (N >= 2, C, H, W), got {tuple(maps_nats.shape)}")
    maps = maps_nats.double()
    mean = torch.tensor(_grid(maps.mean(dim=0)), dtype=torch.float64)
    std = torch.tensor(_grid(maps.std(dim=0, unbiased=True)), dtype=torch.float64)
    return PixelCalibration(method, mean, std, maps.shape[0], source, k, eps_nats)


@torch.no_grad()
def measure_pixel_maps(
    kind: ModelKind,
    model: torch.nn.Module,
    images: torch.Tensor,
    generator: torch.Generator,
    method: str | None = None,
    k: int | None = None,
    batch_size: int = 100,
    max_batch: int = 256,
) -> torch.Tensor:
    """The bound's maps of uint8 images (N, C, H, W): (N, C, H, W) float64 nats on the CPU,
    batch after batch with one generator."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    device = next(model.parameters()).device
    maps = []
    for chunk in images.split(batch_size):
        x = pixels_to_signed_unit(chunk).to(device)
        maps.append(run_to_end(kind.pixel_nats(model, x, generator, max_batch, method, k)))
    return torch.cat(maps).double().cpu()


def measure_pixel_calibration(
    kind: ModelKind,
    model: torch.nn.Module,
    normal_images: torch.Tensor,
    generator: torch.Generator,
    method: str | None = None,
    k: int | None = None,
    source: str | None = None,
    batch_size: int = 100,
    max_batch: int = 256,
    eps_nats: float = DEFAULT_EPS_NATS,
) -> PixelCalibration:
    """The pixel calibration of ``method`` (default: the kind's first) from the maps of
    held-out normal uint8 images (N, C, H, W), at ``k`` (default: the method's). A card holds
    it as ``pixel_calibration[calibration.method] = calibration.to_card().to_dict()``."""
    from models.kinds import check_k

    bound = kind.method_for(model, method)
    k = check_k(bound, k)
    maps = measure_pixel_maps(
        kind, model, normal_images, generator, bound.name, k, batch_size, max_batch
    )
    source = source or f"{normal_images.shape[0]} held-out normal images"
    return fit_pixel_calibration(maps, bound.name, source, k, eps_nats)


def heatmap_overlay(
    images: torch.Tensor, z: torch.Tensor, max_z: float = HEATMAP_MAX_Z
) -> torch.Tensor:
    """The images with a heat map of z over them: uint8 (B, C, H, W), z (B, C, H, W) ->
    uint8 RGB (B, 3, H, W).

    Fixed colour scale: z (the largest over channels) clipped to [0, max_z] and coloured
    blue (0: as normal images at that pixel, or below) -> cyan -> yellow -> red (max_z or
    more), blended over the grayscale (C = 1) or colour (C = 3) image with weight
    HEATMAP_ALPHA.
    """
    if images.dtype != torch.uint8 or images.shape != z.shape:
        raise ValueError(f"need uint8 images and z of one shape, got {images.shape}, {z.shape}")
    level = (z.double().amax(dim=1).clamp(0.0, max_z) / max_z).unsqueeze(1)  # (B, 1, H, W)
    colour = torch.cat(  # the 'jet' colour map, piecewise linear
        [(1.5 - (4 * level - c).abs()).clamp(0.0, 1.0) for c in (3.0, 2.0, 1.0)], dim=1
    )
    base = images.double().expand(-1, 3, -1, -1) / 255.0  # grey to RGB, RGB unchanged
    blended = (1.0 - HEATMAP_ALPHA) * base + HEATMAP_ALPHA * colour
    return torch.round(blended * 255.0).to(torch.uint8)


# The CLI: add the pixel calibration to an existing checkpoint's card ------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.eval.maps",
        description="Measure the per-pixel calibration of a checkpoint's anomaly maps on "
        "held-out Fashion-MNIST test images and add it to its model card.",
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=1000, help="normal images to use")
    parser.add_argument(
        "--first",
        type=int,
        default=5000,
        help="index of the first test image (default: "
        "5000, the held-out half the calibrations use)",
    )
    parser.add_argument("--method", default=None, help="default: the model's first bound")
    parser.add_argument(
        "--k", type=int, default=None, help="default: the k of the card's calibration"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--eps-nats", type=float, default=DEFAULT_EPS_NATS)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from models.core.checkpoints import CARD_FILE, load_checkpoint, write_model_card
    from models.data import load_fashion_mnist
    from models.kinds import kind_of

    args = _arguments(argv)
    checkpoint = load_checkpoint(args.checkpoint, args.device)  # checks the card's SHA-256
    kind, model = kind_of(checkpoint.kind), checkpoint.model
    card = dict(checkpoint.card)
    method = kind.method_for(model, args.method)
    k = args.k
    if k is None and method.k_range is not None:  # compare like with like: the scores' k
        calibrated = calibrations_in(card).get(method.name)
        k = calibrated.k if calibrated is not None else method.default_k
    images, _ = load_fashion_mnist("test")
    normal = images[args.first : args.first + args.images]
    source = f"Fashion-MNIST test images {args.first}..{args.first + len(normal) - 1}"
    start = time.perf_counter()
    calibration = measure_pixel_calibration(
        kind,
        model,
        normal,
        seeded_generator(args.seed),
        method.name,
        k,
        source,
        args.batch_size,
        eps_nats=args.eps_nats,
    )
    seconds = time.perf_counter() - start
    section = dict(card.get("pixel_calibration", {}))
    section[calibration.method] = calibration.to_card().to_dict()
    card["pixel_calibration"] = section
    write_model_card(args.checkpoint, card)
    summary = {
        "card": str(args.checkpoint / CARD_FILE),
        "method": calibration.method,
        "k": k,
        "images": len(normal),
        "seconds": round(seconds, 1),
        "mean_nats_per_image": round(float(calibration.mean_nats.sum()), 2),
        "median_std_nats": round(float(calibration.std_nats.median()), 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
