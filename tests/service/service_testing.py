"""Helpers shared by the service tests."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image


def png_b64(image: torch.Tensor | np.ndarray) -> str:
    """uint8 (1, H, W) or (H, W) -> base64 PNG."""
    array = np.asarray(image, dtype=np.uint8).reshape(image.shape[-2], image.shape[-1])
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def png_pixels(text: str) -> np.ndarray:
    """base64 PNG -> uint8 (H, W)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
