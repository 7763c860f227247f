"""Images and latents between their wire formats and tensors.

Wire formats: base64-encoded PNGs, nested integer arrays, uploaded PNG files. Tensors are
uint8 (B, C, H, W) for images and float32 for latents. Every problem raises RequestError
naming the item (``images[3]``) and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.core.pixels import image_grid
from models.core.png import PNG_MODES, ImageFormatError
from models.core.png import png_to_array as decode_png
from service.errors import RequestError

_DATA_URL_PREFIX = "data:image/png;base64,"


def decode_images(
    items: Sequence[str | list[Any]], shape: tuple[int, int, int], field: str = "images"
) -> torch.Tensor:
    """Base64 PNG strings or nested arrays -> uint8 (B, C, H, W) of the model's ``shape``.

    PNGs must be 8-bit L for C = 1 and 8-bit RGB for C = 3; arrays (H, W) or (1, H, W) for
    C = 1 and (C, H, W), channels first, for C = 3."""
    decoded = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if isinstance(item, str):
            decoded.append(png_to_array(_b64decode(item, where), shape, where))
        else:
            decoded.append(_array_to_pixels(item, shape, where))
    return torch.from_numpy(np.stack(decoded))


def png_to_array(data: bytes, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """PNG bytes -> uint8 (C, H, W) of the model's ``shape``, the header checked before any
    pixel is decoded (:mod:`models.core.png`); a RequestError naming ``where``."""
    try:
        return decode_png(data, shape)
    except ImageFormatError as error:
        raise RequestError(where, str(error)) from error


def _b64decode(text: str, where: str) -> bytes:
    if text.startswith(_DATA_URL_PREFIX):
        text = text[len(_DATA_URL_PREFIX) :]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(where, f"not valid base64 ({error})") from error


def _array_to_pixels(item: Any, shape: tuple[int, int, int], where: str) -> np.ndarray:
    c, h, w = shape
    expected = f"({h}, {w})" if c == 1 else f"({c}, {h}, {w})"
    array = _numeric_array(item, where, f"a nested array of integers 0..255 of shape {expected}")
    if c == 1 and array.shape == (h, w):
        array = array[None]
    if array.shape != (c, h, w):
        hint = ""
        if c > 1 and array.shape == (h, w, c):
            hint = " (channels last: send (C, H, W), channels first)"
        raise RequestError(where, f"expected shape {expected}, got {array.shape}{hint}")
    if not np.all(array == np.round(array)) or array.min() < 0 or array.max() > 255:
        raise RequestError(where, "expected integers 0..255")
    return array.astype(np.uint8)


def _numeric_array(item: Any, where: str, expected: str) -> np.ndarray:
    try:
        array = np.asarray(item, dtype=np.float64)
    except (ValueError, TypeError) as error:
        # Ragged or non-numeric nesting.
        raise RequestError(where, f"expected {expected}") from error
    non_finite = np.argwhere(~np.isfinite(array))
    if len(non_finite):  # JSON parsers read NaN, Infinity and 1e999
        position = "".join(f"[{index}]" for index in non_finite[0])
        value = array[tuple(non_finite[0])]
        raise RequestError(where + position, f"expected {expected}; got the non-finite {value}")
    return array


def decode_latents(
    items: Sequence[list[Any]], shape: tuple[int, ...], max_abs: float, field: str = "latents"
) -> torch.Tensor:
    """Nested float lists -> float32 (B, *shape), every value finite and within +-max_abs
    (a value finite in float64 can still overflow float32: 1e308 becomes inf)."""
    rows = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        array = _numeric_array(item, where, f"an array of floats of shape {shape}")
        if array.shape != tuple(shape):
            raise RequestError(where, f"expected shape {tuple(shape)}, got {array.shape}")
        outside = np.argwhere(np.abs(array) > max_abs)
        if len(outside):
            position = "".join(f"[{index}]" for index in outside[0])
            value = array[tuple(outside[0])]
            raise RequestError(
                where + position,
                f"{value:g} is outside -{max_abs:g}..{max_abs:g} (real latents are a few units)",
            )
        rows.append(array)
    return torch.from_numpy(np.stack(rows)).float()


def encode_png(image: torch.Tensor) -> bytes:
    """uint8 (C, H, W) -> PNG bytes: mode L for C = 1, RGB for C = 3."""
    if image.ndim != 3 or image.dtype != torch.uint8 or image.shape[0] not in PNG_MODES:
        raise ValueError(f"need uint8 (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    array = image.cpu().numpy()
    c = array.shape[0]
    pixels = array[0] if c == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=PNG_MODES[c]).save(buffer, format="PNG")
    return buffer.getvalue()


def to_base64_png(image: torch.Tensor) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")


def grid(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> one uint8 (C, H', W') tile of ceil(sqrt(B)) columns, black gaps."""
    return image_grid(images, columns=math.ceil(math.sqrt(images.shape[0])))


def images_payload(images: torch.Tensor, output: str) -> dict[str, Any]:
    """uint8 (B, C, H, W) -> the response fields for ``output`` ('png', 'grid' or 'array')."""
    if output == "png":
        return {"images": [to_base64_png(image) for image in images]}
    if output == "grid":
        return {"grid": to_base64_png(grid(images))}
    return {"arrays": images.tolist()}
