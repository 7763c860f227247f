"""Synthetic defects with known masks, and the pixel-level AUROC of anomaly maps on them.

Each normal image gets one defect, the kinds taking turns:
- ``patch``: a square of 6..10 pixels cut from another (donor) image and pasted elsewhere;
- ``scratch``: a one-pixel line of length 10..20 at a random angle, white on dark pixels and
  black on bright ones;
- ``blotch``: a filled disc of radius 1.5..3.5 pixels, 128 levels off the pixels it covers.

The mask of a defect is the set of pixels it changed: the drawn region (the square, the line,
the disc) less the pixels that kept their value (a black patch pasted on black background
changes nothing there, and no detector could see it). Every pixel outside the mask is the
normal image's own. Defects are drawn away from a 2-pixel border, where garments are.

Measure the bundled checkpoints (their cards need a pixel calibration, models.eval.maps):

    python -m models.eval.defects checkpoints/vae checkpoints/ddpm --images 300
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

DEFECT_KINDS = ("patch", "scratch", "blotch")
_BORDER = 2  # pixels kept clear of defects on every side
_MIN_CHANGED = 3  # a defect changing fewer pixels is drawn again


@dataclass(frozen=True)
class Defects:
    """Defective images uint8 (N, C, H, W), the pixels each defect changed (``masks``) and
    where it was drawn (``regions``), bool (N, H, W), and each one's kind (N,)."""

    images: torch.Tensor
    masks: torch.Tensor
    regions: torch.Tensor
    kinds: tuple[str, ...]


def synthetic_defects(
    images: torch.Tensor,
    donors: torch.Tensor,
    generator: torch.Generator,
    kinds: tuple[str, ...] = DEFECT_KINDS,
) -> Defects:
    """One defect per uint8 image (N, C, H, W), image i getting kinds[i % len(kinds)];
    patches come from ``donors`` (M, C, H, W)."""
    if images.dtype != torch.uint8 or donors.dtype != torch.uint8:
        raise TypeError("expected uint8 images and donors")
    out, masks, regions = images.clone(), [], []
    for i, image in enumerate(images):
        kind = kinds[i % len(kinds)]
        for _ in range(20):  # redraw defects that change (almost) nothing
            region = torch.zeros(image.shape[1:], dtype=torch.bool)
            defective = _draw(kind, image, donors, region, generator)
            changed = region & (defective != image).any(dim=0)
            if int(changed.sum()) >= _MIN_CHANGED:
                break
        out[i] = defective
        masks.append(changed)
        regions.append(region)
    return Defects(
        out,
        torch.stack(masks),
        torch.stack(regions),
        tuple(kinds[i % len(kinds)] for i in range(len(images))),
    )


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _integer(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform in low..high inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _draw(
    kind: str,
    image: torch.Tensor,
    donors: torch.Tensor,
    region: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """A copy of ``image`` (C, H, W) with one defect; marks where it drew in ``region``."""
    out = image.clone()
    _, height, width = image.shape
    if kind == "patch":
        size = _integer(generator, 6, 10)
        top, left = (_integer(generator, _BORDER, n - _BORDER - size) for n in (height, width))
        donor = donors[_integer(generator, 0, donors.shape[0] - 1)]
        src_top, src_left = (
            _integer(generator, _BORDER, n - _BORDER - size) for n in image.shape[1:]
        )
        out[:, top : top + size, left : left + size] = donor[
            :, src_top : src_top + size, src_left : src_left + size
        ]
        region[top : top + size, left : left + size] = True
    elif kind == "scratch":
        length, angle = _integer(generator, 10, 20), _uniform(generator, 0.0, math.pi)
        row, col = (_uniform(generator, _BORDER, n - 1 - _BORDER) for n in (height, width))
        steps = torch.linspace(-length / 2, length / 2, 4 * length)
        rows = (row + steps * math.sin(angle)).round().long().clamp(_BORDER, height - 1 - _BORDER)
        cols = (col + steps * math.cos(angle)).round().long().clamp(_BORDER, width - 1 - _BORDER)
        region[rows, cols] = True
        mean = float(image[:, region].float().mean())
        out[:, region] = 255 if mean < 128 else 0
    elif kind == "blotch":
        radius = _uniform(generator, 1.5, 3.5)
        row, col = (_uniform(generator, _BORDER + 2, n - 3 - _BORDER) for n in (height, width))
        grid_rows = torch.arange(height).unsqueeze(1).float()
        grid_cols = torch.arange(width).unsqueeze(0).float()
        region |= (grid_rows - row) ** 2 + (grid_cols - col) ** 2 <= radius**2
        mean = float(image[:, region].float().mean())
        out[:, region] = round(mean + 128 if mean < 128 else mean - 128)
    else:
        raise ValueError(f"unknown defect kind {kind!r}; known: {DEFECT_KINDS}")
    return out


def pixel_auroc(scores: torch.Tensor, masks: torch.Tensor) -> float:
    """AUROC of per-pixel scores (N, H, W) against masks (N, H, W), all pixels pooled."""
    from models.eval.anomaly import auroc

    flat_scores, flat_masks = scores.reshape(-1).double(), masks.reshape(-1)
    return auroc(flat_scores[~flat_masks], flat_scores[flat_masks])


# The benchmark ---------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.eval.defects",
        description="Pixel-level AUROC of checkpoints' normalised anomaly maps on Fashion-MNIST "
        "test images with synthetic defects (patches, scratches, blotches).",
    )
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--images", type=int, default=300, help="defective images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument(
        "--example", type=Path, default=Path("docs"), help="folder for one heat-map PNG per kind"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from models.core.card import pixel_calibrations_in
    from models.core.checkpoints import load_checkpoint
    from models.core.noise import seeded_generator
    from models.data import load_fashion_mnist
    from models.eval.context import CALIBRATION_START
    from models.eval.maps import PixelCalibration, measure_pixel_maps
    from models.kinds import kind_of

    args = _arguments(argv)
    test_images, _ = load_fashion_mnist("test")
    # Targets from the evaluation half of the test set, donors from its other end; the pixel
    # calibration used images from CALIBRATION_START on.
    targets = test_images[: args.images]
    donors = test_images[CALIBRATION_START // 2 : CALIBRATION_START]
    defects = synthetic_defects(targets, donors, seeded_generator(args.seed))
    # A model-free baseline: each pixel's intensity z-score against the same normal images.
    normal = test_images[CALIBRATION_START : CALIBRATION_START + 1000].double()
    intensity_z = (targets.double() - normal.mean(dim=0)).abs() / (normal.std(dim=0) + 1.0)
    rows = {"intensity |z| (no model)": _figures(intensity_z.amax(dim=1), defects)}
    for directory in args.checkpoints:
        checkpoint = load_checkpoint(directory)
        kind, model = kind_of(checkpoint.kind), checkpoint.model
        method, record = next(iter(pixel_calibrations_in(checkpoint.card).items()))
        calibration = PixelCalibration.of_card(method, record)
        start = time.perf_counter()
        maps = measure_pixel_maps(
            kind,
            model,
            defects.images,
            seeded_generator(args.seed),
            method,
            calibration.k,
            args.batch_size,
        )
        seconds = time.perf_counter() - start
        z = calibration.normalise(maps)
        label = f"{directory.name} {method}" + (f" k={calibration.k}" if calibration.k else "")
        rows[f"{label}: raw nats"] = _figures(maps.amax(dim=1), defects)
        rows[f"{label}: z"] = _figures(z.amax(dim=1), defects) | {
            "seconds_per_image": round(seconds / len(maps), 4)
        }
        _write_example(args.example / f"anomaly_maps_{directory.name}.png", defects, z)
    print(json.dumps({"images": args.images, "seed": args.seed, "pixel_auroc": rows}, indent=2))


def _figures(scores: torch.Tensor, defects: Defects) -> dict[str, float]:
    """Pixel AUROC over all defective images and per defect kind."""
    figures = {"all": round(pixel_auroc(scores, defects.masks), 4)}
    for kind in DEFECT_KINDS:
        rows = torch.tensor([k == kind for k in defects.kinds])
        figures[kind] = round(pixel_auroc(scores[rows], defects.masks[rows]), 4)
    return figures


def _write_example(path: Path, defects: Defects, z: torch.Tensor, count: int = 6) -> None:
    """Columns of (defective image, heat map, mask), 4x enlarged: a small PNG for the README."""
    import torch.nn.functional as F

    from models.core.pixels import image_grid
    from models.eval.maps import heatmap_overlay

    images = defects.images[:count]
    heat = heatmap_overlay(images, z[:count].to(torch.float64))
    mask = (defects.masks[:count].unsqueeze(1).to(torch.uint8) * 255).expand(-1, 3, -1, -1)
    rows = torch.stack([images.expand(-1, 3, -1, -1), heat, mask], dim=1)  # (n, 3, 3, H, W)
    tiles = rows.reshape(-1, *rows.shape[2:])
    big = F.interpolate(tiles.float(), scale_factor=4, mode="nearest").to(torch.uint8)
    grid = image_grid(big, columns=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(grid.permute(1, 2, 0).numpy(), mode="RGB").save(path, optimize=True)


if __name__ == "__main__":
    main()
