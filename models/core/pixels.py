"""8-bit pixels and their exact map to [-1, 1]; non-finite values as errors; image grids."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class NonFiniteError(ValueError):
    """A tensor that must hold finite numbers holds NaN or +-Inf.

    ``rows`` are the indices along dim 0 that do, so that a caller holding several requests'
    rows in one batch can fail only the requests they belong to.
    """

    def __init__(self, what: str, rows: Sequence[int]) -> None:
        self.what = what
        self.rows = tuple(rows)
        super().__init__(f"{what}: NaN or infinite values in rows {list(self.rows)}")


def require_finite(x: torch.Tensor, what: str) -> None:
    """Raise NonFiniteError naming the rows (dim 0) of ``x`` that hold NaN or +-Inf."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    bad_rows = bad.reshape(bad.shape[0], -1).any(dim=1) if x.ndim else bad.reshape(1)
    raise NonFiniteError(what, bad_rows.nonzero().flatten().tolist())


def pixels_to_signed_unit(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit values 0..255 (any dtype) -> float32 in [-1, 1]: x = k / 127.5 - 1."""
    return pixels.to(torch.float32) / 127.5 - 1.0


def signed_unit_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Float in [-1, 1] -> uint8 0..255, rounding to the nearest value and clipping outside.

    NaN or +-Inf raise NonFiniteError: a non-finite value is a failure upstream, not a pixel,
    and casting NaN to an integer is undefined behaviour (0 on AMD CPUs and CUDA, arbitrary
    bytes on Intel), which would hide that failure in an image.
    """
    require_finite(x, "pixel values")
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)


def image_grid(images: torch.Tensor, columns: int = 8, padding: int = 2) -> torch.Tensor:
    """Tile uint8 images (N, C, H, W) into one uint8 (C, rows*(H+p)+p, columns*(W+p)+p) image
    on a black background, row by row."""
    if images.ndim != 4 or images.shape[0] == 0 or images.dtype != torch.uint8:
        raise ValueError(f"need uint8 images (N >= 1, C, H, W), got {tuple(images.shape)}")
    n, channels, height, width = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    grid = torch.zeros(
        channels,
        rows * (height + padding) + padding,
        columns * (width + padding) + padding,
        dtype=torch.uint8,
    )
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = image
    return grid
