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
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from models.core.pixels import image_grid
from service.errors import RequestError

_PNG_MODES = {1: "L", 3: "RGB"}  # channels -> the 8-bit PNG mode that holds them
# IHDR colour type -> Pillow's mode name (PNG spec, Sec. 11.2.2).
_PNG_COLOUR_TYPES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
_DATA_URL_PREFIX = "data:image/png;base64,"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    """PNG bytes -> uint8 (C, H, W): an 8-bit grayscale ('L') PNG for C = 1, RGB for C = 3.

    Format, size, bit depth and colour type are checked from the header before any pixel is
    decoded, so a small file that inflates to gigabytes (a 0.87 MB PNG of 30000x30000 zeros)
    costs nothing. The error says both: "expected a 32x32 RGB image, got 28x28 L".
    """
    c, h, w = shape
    header = _png_header(data)
    if header is not None and header != ((w, h), _PNG_MODES[c]):
        raise RequestError(
            where, f"expected {_describe(shape)}, got {_size(header[0])} {header[1]}"
        )
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        _check_header(image, shape, where)
        image.load()
    except Image.DecompressionBombError as error:  # another format's header: too large
        raise RequestError(where, f"expected {_describe(shape)} ({error})") from error
    except UnidentifiedImageError as error:  # its message holds an object's address
        raise RequestError(where, "not a readable PNG image (unrecognised data)") from error
    # Pillow reports broken files as SyntaxError ("broken PNG file"), truncated ones as OSError.
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise RequestError(where, f"not a readable PNG image ({error})") from error
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if c == 1 else array.transpose(2, 0, 1)


def _png_header(data: bytes) -> tuple[tuple[int, int], str] | None:
    """((width, height), mode) from the IHDR chunk, which a PNG must start with (after its
    8-byte signature); None when the bytes do not start like a PNG (Pillow then says what they
    are). The mode is Pillow's name for the colour type, with the bit depth when it is not 8."""
    if len(data) < 26 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    mode = _PNG_COLOUR_TYPES.get(colour_type, f"colour type {colour_type}")
    return (width, height), mode if depth == 8 else f"{mode} ({depth}-bit)"


def _check_header(image: Image.Image, shape: tuple[int, int, int], where: str) -> None:
    c, h, w = shape
    if image.format != "PNG":
        raise RequestError(where, f"expected a PNG image, got {image.format}")
    if image.size != (w, h) or image.mode != _PNG_MODES[c]:
        raise RequestError(
            where, f"expected {_describe(shape)}, got {_size(image.size)} {image.mode}"
        )


def _describe(shape: tuple[int, int, int]) -> str:
    """(C, H, W) -> 'a 28x28 L image' (the PNG mode: L for grayscale, RGB for colour)."""
    c, h, w = shape
    if c not in _PNG_MODES:
        raise ValueError(f"images have 1 (L) or 3 (RGB) channels, not {c}")
    return f"a {w}x{h} {_PNG_MODES[c]} image"


def _size(width_height: tuple[int, int]) -> str:
    return f"{width_height[0]}x{width_height[1]}"


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
    if image.ndim != 3 or image.dtype != torch.uint8 or image.shape[0] not in _PNG_MODES:
        raise ValueError(f"need uint8 (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    array = image.cpu().numpy()
    c = array.shape[0]
    pixels = array[0] if c == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=_PNG_MODES[c]).save(buffer, format="PNG")
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
