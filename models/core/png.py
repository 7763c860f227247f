"""8-bit PNG bytes -> uint8 (C, H, W) in a model's mode and size, checked before decoding.

The one PNG reader behind every way images reach a served or offline-scored model: the
service's request codecs (:mod:`service.imaging`, which names the request field in front of
the message) and offline scoring (:mod:`offline.spark_score`, which names the image's id).
Grayscale models (C = 1) read mode ``L``, colour models (C = 3) mode ``RGB``; nothing is
converted, so an image is accepted or refused the same way wherever it is sent.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

PNG_MODES = {1: "L", 3: "RGB"}  # channels -> the 8-bit PNG mode that holds them
# IHDR colour type -> Pillow's mode name (PNG spec, Sec. 11.2.2).
_PNG_COLOUR_TYPES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageFormatError(ValueError):
    """Bytes that are not a PNG of the expected mode and size; the message says what was
    expected and what was found (``expected a 32x32 RGB image, got 28x28 L``)."""


def png_to_array(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """PNG bytes -> uint8 (C, H, W): an 8-bit grayscale ('L') PNG for C = 1, RGB for C = 3.

    Format, size, bit depth and colour type are checked from the header before any pixel is
    decoded, so a small file that inflates to gigabytes (a 0.87 MB PNG of 30000x30000 zeros)
    costs nothing. The error says both: "expected a 32x32 RGB image, got 28x28 L".
    """
    c, h, w = shape
    header = _png_header(data)
    if header is not None and header != ((w, h), PNG_MODES[c]):
        raise ImageFormatError(f"expected {describe(shape)}, got {_size(header[0])} {header[1]}")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        _check_header(image, shape)
        image.load()
    except ImageFormatError:
        raise
    except Image.DecompressionBombError as error:  # another format's header: too large
        raise ImageFormatError(f"expected {describe(shape)} ({error})") from error
    except UnidentifiedImageError as error:  # its message holds an object's address
        raise ImageFormatError("not a readable PNG image (unrecognised data)") from error
    # Pillow reports broken files as SyntaxError ("broken PNG file"), truncated ones as OSError.
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageFormatError(f"not a readable PNG image ({error})") from error
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


def _check_header(image: Image.Image, shape: tuple[int, int, int]) -> None:
    c, h, w = shape
    if image.format != "PNG":
        raise ImageFormatError(f"expected a PNG image, got {image.format}")
    if image.size != (w, h) or image.mode != PNG_MODES[c]:
        raise ImageFormatError(f"expected {describe(shape)}, got {_size(image.size)} {image.mode}")


def describe(shape: tuple[int, int, int]) -> str:
    """(C, H, W) -> 'a 28x28 L image' (the PNG mode: L for grayscale, RGB for colour)."""
    c, h, w = shape
    if c not in PNG_MODES:
        raise ValueError(f"images have 1 (L) or 3 (RGB) channels, not {c}")
    return f"a {w}x{h} {PNG_MODES[c]} image"


def _size(width_height: tuple[int, int]) -> str:
    return f"{width_height[0]}x{width_height[1]}"
