"""Folders of your own images: every PNG or JPEG under a directory, recursively, as uint8
(N, C, H, W) in the mode and size a model's config says, with a reproducible held-out split.

Nothing is skipped silently: every file that cannot be read, or has the wrong size when
resizing was not asked for, is named in one :class:`~models.data.DataFormatError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.data import DataFormatError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PIL_MODES = {1: "L", 3: "RGB"}
_MAX_LISTED = 10  # problems named in one error; the count says how many more


@dataclass(frozen=True)
class ImageFolder:
    """Images (N, C, H, W) uint8 and the file each came from, sorted by path."""

    images: torch.Tensor
    paths: tuple[Path, ...]

    def subset(self, index: torch.Tensor) -> ImageFolder:
        return ImageFolder(self.images[index], tuple(self.paths[i] for i in index.tolist()))


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """PNG and JPEG files under ``folder`` (any depth, hidden files and folders left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such directory")
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def load_image_folder(
    folder: str | os.PathLike[str], channels: int, image_size: int, resize: bool = False
) -> ImageFolder:
    """Every image under ``folder`` in mode L (channels 1) or RGB (channels 3), each
    ``image_size`` x ``image_size``: colour converted to luminance or gray repeated in three
    channels, alpha dropped. Another size is an error naming the file, unless ``resize``
    (bilinear, aspect ratio not kept). DataFormatError names every unreadable or mis-sized
    file (the first ten, and how many more)."""
    if channels not in _PIL_MODES:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    paths = image_files(folder)
    if not paths:
        raise DataFormatError(f"{folder}: holds no PNG or JPEG files ({', '.join(IMAGE_SUFFIXES)})")
    arrays, problems = [], []
    for path in paths:
        try:
            arrays.append(_read(path, _PIL_MODES[channels], image_size, resize))
        except _FileError as problem:
            problems.append(f"{path}: {problem}")
    if problems:
        shown = "; ".join(problems[:_MAX_LISTED])
        more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DataFormatError(f"{len(problems)} of {len(paths)} files in {folder}: {shown}{more}")
    stacked = torch.from_numpy(np.stack(arrays))  # (N, H, W) or (N, H, W, 3)
    images = stacked.unsqueeze(1) if channels == 1 else stacked.permute(0, 3, 1, 2)
    return ImageFolder(images.contiguous(), tuple(paths))


class _FileError(Exception):
    """What is wrong with one file, collected so that all of them are reported at once."""


def _read(path: Path, mode: str, size: int, resize: bool) -> np.ndarray:
    """One file as uint8 (H, W) for mode L or (H, W, 3) for RGB, upright as a viewer shows
    it (a camera JPEG's EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = _eight_bit(ImageOps.exif_transpose(opened))
            if image.size != (size, size):
                if not resize:
                    width, height = image.size
                    raise _FileError(
                        f"{width}x{height}, expected {size}x{size} (pass --resize to resize)"
                    )
                image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise _FileError(f"not a readable image ({error})") from error


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale (Pillow's modes I;16* and I) scaled to 8 bits by its high byte:
    Pillow's own conversion to L clips at 255 instead, turning most of the image white."""
    from PIL import Image

    if not image.mode.startswith("I"):
        return image
    high_byte = np.clip(np.asarray(image).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
    return Image.fromarray(high_byte)  # (H, W) uint8: mode L


def holdout_split(n: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices of ``n`` items: a seeded random ``fraction`` held out (at
    least one when 0 < fraction and n > 1), each part in increasing order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    held = round(n * fraction)
    if fraction > 0 and n > 1:
        held = min(max(held, 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values
