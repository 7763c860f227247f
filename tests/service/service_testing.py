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


def metric_value(client, name: str, **labels: str) -> float:
    """Sum of the /metrics samples called ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def concurrently(calls):
    """Run the zero-argument ``calls`` in threads at once; their results, in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))
