"""Generic lossless codecs as complexity estimates: per image, its compressed size in bits/dim.

Serra et al. 2019 (arXiv 1909.11480, Sec. 3) subtract a generic compressor's codelength L(x)
from the model's, S(x) = L_model(x) - L_codec(x) (Eq. 2), and find that the better the codec,
the better the score. PNG is what they and we started with; these are the other lossless codecs
a standard install offers (Pillow's WebP, Python's lzma, zlib and bz2), each an independent
per-image codelength:

    codec_bits_per_dim(images, "webp")   # (B,) float64: 8 * bytes / D, D = C*H*W

A container's fixed header is part of the codelength; it is the same for every image of a
shape, so it shifts scores and thresholds together and leaves rankings as they are.

CLI: AUROC and FPR@95 of bits/dim minus each codec against the Fashion-MNIST outlier sets of a
model card (:mod:`models.eval.outliers`), with the same normal images for every codec; with
``--calibrate CODEC``, also the calibration of bits/dim minus that codec on held-out test images
(5000..), written into the card for the ``correction`` that names the codec::

    python -m models.eval.codecs checkpoints/vae --normal-images 500 --per-set 500
    python -m models.eval.codecs checkpoints/vae --calibrate webp --calibration-images 2000
"""

from __future__ import annotations

import argparse
import bz2
import io
import lzma
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

# image (C, H, W) uint8 -> its compressed bytes
Encoder = Callable[[np.ndarray], bytes]


def _pillow(image: np.ndarray, format: str, **options) -> bytes:
    from PIL import Image

    channels = image.shape[0]
    pixels = image[0] if channels == 1 else image.transpose(1, 2, 0)  # (H, W[, 3])
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L" if channels == 1 else "RGB").save(
        buffer, format=format, **options
    )
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """Pillow's optimised PNG ('L' or 'RGB'): what :func:`models.eval.anomaly.png_bits_per_dim`
    measures."""
    return _pillow(image, "PNG", optimize=True)


def webp_bytes(image: np.ndarray) -> bytes:
    """WebP lossless at its slowest, smallest setting (method 6, quality 100: effort). WebP has
    no grayscale mode: an 'L' image is stored as RGB with equal channels, which its
    subtract-green transform codes at nearly no cost."""
    return _pillow(image, "WEBP", lossless=True, quality=100, method=6)


def lzma_filters(image_bytes: int) -> list[dict]:
    """LZMA2 at preset 9 extreme, its dictionary the image's size (at least LZMA2's 4 KiB):
    the same output as preset 9's 64 MiB dictionary for an image that size, without
    allocating it (0.6 ms an image here instead of 180 ms)."""
    return [
        {
            "id": lzma.FILTER_LZMA2,
            "preset": 9 | lzma.PRESET_EXTREME,
            "dict_size": max(1 << 12, image_bytes),
        }
    ]


def lzma_bytes(image: np.ndarray) -> bytes:
    """Raw LZMA2 (no .xz container) of the (C, H, W) bytes in raster order."""
    filters = lzma_filters(image.nbytes)
    return lzma.compress(image.tobytes(), format=lzma.FORMAT_RAW, filters=filters)


def zlib_bytes(image: np.ndarray) -> bytes:
    """zlib (deflate) level 9 of the raster-order bytes: PNG without its row filters."""
    return zlib.compress(image.tobytes(), 9)


def bz2_bytes(image: np.ndarray) -> bytes:
    """bzip2 level 9 of the raster-order bytes."""
    return bz2.compress(image.tobytes(), 9)


CODECS: Mapping[str, Encoder] = {
    "png": png_bytes,
    "webp": webp_bytes,
    "lzma": lzma_bytes,
    "zlib": zlib_bytes,
    "bz2": bz2_bytes,
}


def codec_bits_per_dim(images: torch.Tensor, codec: str) -> torch.Tensor:
    """Per image, its size under ``codec`` in bits per dimension, 8 * bytes / (C*H*W): (B,)
    float64. ``images`` are uint8 (B, C, H, W) with C = 1 or 3."""
    if codec not in CODECS:
        raise ValueError(f"codec: one of {', '.join(CODECS)}, got {codec!r}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"need uint8 images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    encode = CODECS[codec]
    sizes = [8.0 * len(encode(image)) / image.size for image in images.cpu().numpy()]
    return torch.tensor(sizes, dtype=torch.float64)


def with_codec_calibration(
    card: Mapping[str, Any],
    method: str,
    codec: str,
    held_out_bits_per_dim: torch.Tensor,
    held_out: torch.Tensor,
    source: str,
    other_bits_per_dim: torch.Tensor,
    other: torch.Tensor,
) -> dict[str, Any]:
    """``card`` with ``method``'s calibration of bits/dim minus ``codec``: the bounds (N,) of
    held-out images (N, C, H, W) uint8 minus their codelengths, with the false-positive rate
    its thresholds give on other normal images (M,) / (M, C, H, W). Nothing else changes."""
    from models.core.card import MethodCalibration
    from models.eval.ratio import checked_calibration

    held = held_out_bits_per_dim.double() - codec_bits_per_dim(held_out, codec)
    others = other_bits_per_dim.double() - codec_bits_per_dim(other, codec)
    calibration = dict(card.get("calibration", {}))
    entry = dict(calibration.get(method, {"k": None, "scores": {}}))
    entry["scores"] = {
        **entry.get("scores", {}),
        f"bits_per_dim_minus_{codec}": checked_calibration(held, source, others).to_dict(),
    }
    calibration[method] = MethodCalibration.from_dict(entry).to_dict()  # checks the layout
    return {**card, "calibration": calibration}


def main(argv: list[str] | None = None) -> int:
    from models.core.card import OUTLIER_SETS
    from models.core.checkpoints import load_checkpoint
    from models.core.noise import seeded_generator
    from models.core.pixels import pixels_to_signed_unit
    from models.core.progressive import run_to_end
    from models.data import load_fashion_mnist
    from models.eval.anomaly import auroc, fpr_at_tpr
    from models.eval.outliers import outlier_sets
    from models.eval.ratio import bound_bits_per_dim
    from models.kinds import kind_of

    parser = argparse.ArgumentParser(description="AUROC of bits/dim minus each lossless codec.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--method", default=None, help="the bound (default: the kind's first)")
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--normal-images", type=int, default=500, help="test images 0..N-1")
    parser.add_argument("--per-set", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    parser.add_argument(
        "--calibrate", choices=list(CODECS), help="write this codec's calibration into the card"
    )
    parser.add_argument("--calibration-images", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    checkpoint = load_checkpoint(args.checkpoint)
    kind, model = kind_of(checkpoint.kind), checkpoint.model.eval()
    method = kind.method_for(model, args.method)
    test = load_fashion_mnist("test", args.data_root)[0]
    normal = test[: args.normal_images]
    sets = outlier_sets(test[: args.per_set], torch.Generator().manual_seed(args.seed))

    def bound(images: torch.Tensor) -> torch.Tensor:
        x = pixels_to_signed_unit(images)
        with torch.no_grad():
            loop = method.run(model, x, args.k, seeded_generator(args.seed), 250)
            return run_to_end(loop)["total_bits_per_dim"].double()

    if args.calibrate is not None:
        from models.core.checkpoints import write_model_card
        from models.eval.context import CALIBRATION_START

        end = CALIBRATION_START + args.calibration_images
        held_out = test[CALIBRATION_START:end]
        entry = checkpoint.card.get("calibration", {}).get(method.name, {})
        k = entry.get("k", args.k)
        card = with_codec_calibration(
            checkpoint.card,
            method.name,
            args.calibrate,
            bound_bits_per_dim(method, model, held_out, k, args.seed),
            held_out,
            f"Fashion-MNIST test images {CALIBRATION_START}..{end - 1}",
            bound_bits_per_dim(method, model, normal, k, args.seed),
            normal,
        )
        write_model_card(args.checkpoint, card)
        print(
            f"calibrated {method.name} minus {args.calibrate} on {len(held_out)} images in "
            f"{time.perf_counter() - started:.0f} s"
        )
        return 0

    codelengths = {"bound": {"normal": bound(normal)}}
    for name, images in sets.items():
        codelengths["bound"][name] = bound(images)
    seconds = {}
    for codec in CODECS:
        t = time.perf_counter()
        codelengths[codec] = {"normal": codec_bits_per_dim(normal, codec)}
        for name, images in sets.items():
            codelengths[codec][name] = codec_bits_per_dim(images, codec)
        count = len(normal) + sum(len(images) for images in sets.values())
        seconds[codec] = (time.perf_counter() - t) / count

    columns = ["bits/dim", *(f"minus {codec}" for codec in CODECS)]
    print(
        f"{args.checkpoint} {method.name}: AUROC / FPR@95, {len(normal)} normal test images, "
        f"{args.per_set} per set"
    )
    print("| set | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    means = {column: [] for column in columns}
    for name in OUTLIER_SETS:
        cells = []
        for column, codec in zip(columns, [None, *CODECS], strict=True):

            def score(part: str, codec=codec) -> torch.Tensor:
                raw = codelengths["bound"][part]
                return raw if codec is None else raw - codelengths[codec][part]

            a = auroc(score("normal"), score(name))
            f = fpr_at_tpr(score("normal"), score(name))
            means[column].append(a)
            cells.append(f"{a:.3f} / {f:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| mean AUROC | " + " | ".join(f"{np.mean(v):.3f}" for v in means.values()) + " |")
    print(
        "mean codelength of normal images, bits/dim: "
        + ", ".join(f"{codec} {codelengths[codec]['normal'].mean():.3f}" for codec in CODECS)
    )
    print(
        "codec seconds per image: "
        + ", ".join(f"{c} {s * 1000:.2f} ms" for c, s in seconds.items())
    )
    print(f"in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
