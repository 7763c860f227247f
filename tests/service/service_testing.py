"""Helpers shared by the service tests."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def png_b64(image: torch.Tensor | np.ndarray) -> str:
    """uint8 (1, H, W) or (H, W) -> base64 PNG."""
    array = np.asarray(image, dtype=np.uint8).reshape(image.shape[-2], image.shape[-1])
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of zeros, built in milliseconds without its pixels.

    Deflate restarts at each full flush, so every 1 MiB of zeros compresses to the same bytes:
    the IDAT stream is that piece repeated, a tail, and the Adler-32 of n zeros (b = n mod
    65521, a = 1). 30000x30000 gives 0.89 MB that inflate to 900 MB.
    """
    raw_bytes = height * (width + 1)  # a filter byte (0) before each row
    block = 1 << 20
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; zlib framing by hand
    deflate.compress(bytes(block))
    deflate.flush(zlib.Z_FULL_FLUSH)
    piece = deflate.compress(bytes(block)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(bytes(raw_bytes % block)) + deflate.flush()
    adler32 = ((raw_bytes % 65521) << 16) | 1
    idat = b"\x78\xda" + piece * (raw_bytes // block) + tail + struct.pack(">I", adler32)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


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


# k of the fixture calibrations: small, to keep the suite fast.
FIXTURE_K = {"iwae": 8, "vlb_mc": 4}


def fixture_calibration(directory: Path, images: torch.Tensor) -> dict:
    """Calibrations of every bound of the model, measured on a few images, in the model
    card's format."""
    from models.core.checkpoints import load_checkpoint
    from models.core.noise import seeded_generator
    from models.core.pixels import pixels_to_signed_unit
    from models.core.progressive import run_to_end
    from models.eval.anomaly import Calibration, complexity_corrected_score, png_bits_per_dim
    from models.kinds import kind_of

    checkpoint = load_checkpoint(directory)
    kind = kind_of(checkpoint.kind)
    x = pixels_to_signed_unit(images[:8])
    png = png_bits_per_dim(images[:8])
    calibration = {}
    for method in kind.methods(checkpoint.model).values():
        k = FIXTURE_K.get(method.name) if method.k_range else None
        with torch.no_grad():
            terms = run_to_end(method.run(checkpoint.model, x, k, seeded_generator(0), 64))
        bpd = terms["total_bits_per_dim"]
        kinds = {
            "bits_per_dim": bpd,
            "bits_per_dim_minus_png": complexity_corrected_score(bpd, png),
        }
        source = f"test fixture: {len(bpd)} test images"
        calibration[method.name] = {
            "k": k,
            "scores": {
                kind: Calibration.of(values, source).to_dict((0.25,))
                for kind, values in kinds.items()
            },
        }
    return calibration


def fixture_pixel_calibration(directory: Path, images: torch.Tensor) -> dict:
    """The pixel calibration of the model's first bound at the k of the card's calibration
    (else its fixture k), measured on a few images, in the model card's format."""
    from models.core.card import calibrations_in
    from models.core.checkpoints import load_checkpoint
    from models.core.noise import seeded_generator
    from models.eval.maps import measure_pixel_calibration
    from models.kinds import kind_of

    checkpoint = load_checkpoint(directory)
    kind = kind_of(checkpoint.kind)
    method = kind.method_for(checkpoint.model, None)
    calibrated = calibrations_in(checkpoint.card).get(method.name)
    k = FIXTURE_K.get(method.name) if method.k_range else None
    k = calibrated.k if calibrated is not None else k
    calibration = measure_pixel_calibration(
        kind, checkpoint.model, images[8:16], seeded_generator(0), method.name, k, "test fixture"
    )
    return {calibration.method: calibration.to_card().to_dict()}


def wait_ready(get, timeout_s: float = 60.0) -> None:
    """Poll /readyz until 200; ``get(path)`` returns a status code."""
    deadline = time.monotonic() + timeout_s
    while get("/readyz") != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("service not ready")
        time.sleep(0.2)


def served_models():
    """The in-process service's served models, name -> ServedModel."""
    from _bentoml_sdk.service import get_current_service

    return get_current_service().calls.repository._served


def replace_card(monkeypatch, name: str, card: dict) -> None:
    """Serve model ``name`` with ``card`` for the rest of the test (monkeypatch undoes it)."""
    import dataclasses

    served = served_models()
    model = served[name]
    checkpoint = dataclasses.replace(model.checkpoint, card=card)
    monkeypatch.setitem(served, name, dataclasses.replace(model, checkpoint=checkpoint))
