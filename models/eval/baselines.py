"""Reference codelengths on the Fashion-MNIST test set, in bits per dimension.

Any model we ship must beat these clearly; they also sanity-check the unit conversion
(a uniform model over 256 values is exactly 8 bits/dim).

    python -m models.eval.baselines [--root DIR] [--limit N] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.core.likelihood import nats_to_bits_per_dim
from models.data import load_fashion_mnist


@dataclass(frozen=True)
class Baseline:
    name: str
    bits_per_dim: float
    how: str


def uniform_bits_per_dim() -> float:
    """Every one of the 256 values equally likely: log2(256) = 8 bits for every pixel."""
    return nats_to_bits_per_dim(torch.tensor(math.log(256.0)), 1).item()


def per_pixel_categorical_bits_per_dim(train: np.ndarray, test: np.ndarray) -> float:
    """Independent categorical per pixel position, fit on train with add-one smoothing.

    train, test: (N, H*W) uint8. Returns the mean test negative log-likelihood, bits per dim.
    """
    num_pixels = train.shape[1]
    counts = np.ones((num_pixels, 256))  # Laplace smoothing: unseen values stay possible
    np.add.at(counts, (np.arange(num_pixels)[None, :].repeat(len(train), 0), train), 1)
    log_probs = np.log(counts / counts.sum(axis=1, keepdims=True))
    nll_nats = -log_probs[np.arange(num_pixels)[None, :], test].sum()
    return float(nats_to_bits_per_dim(torch.tensor(nll_nats), test.size))


def png_bits_per_dim(test: np.ndarray, image_size: int) -> float:
    """Each image as its own optimised 8-bit grayscale PNG file, headers included."""
    from PIL import Image

    total_bytes = 0
    for row in test:
        buffer = io.BytesIO()
        Image.fromarray(row.reshape(image_size, image_size), mode="L").save(
            buffer, format="PNG", optimize=True
        )
        total_bytes += buffer.tell()
    return 8.0 * total_bytes / test.size


def lzma_bits_per_dim(test: np.ndarray) -> float:
    """The whole test set as one raw byte stream, compressed with LZMA (preset 9, extreme)."""
    compressed = lzma.compress(test.tobytes(), preset=9 | lzma.PRESET_EXTREME)
    return 8.0 * len(compressed) / test.size


def compute_baselines(root: str | None = None, limit: int | None = None) -> list[Baseline]:
    train_images, _ = load_fashion_mnist("train", root)
    test_images, _ = load_fashion_mnist("test", root)
    if limit is not None:
        test_images = test_images[:limit]
    image_size = test_images.shape[-1]
    train = train_images.flatten(1).numpy()
    test = test_images.flatten(1).numpy()
    n = len(test)
    return [
        Baseline("uniform", uniform_bits_per_dim(), "log2(256) per pixel"),
        Baseline(
            "per-pixel categorical",
            per_pixel_categorical_bits_per_dim(train, test),
            "independent pixels, fit on the 60,000 training images",
        ),
        Baseline("PNG", png_bits_per_dim(test, image_size), f"one optimised PNG per image, {n}"),
        Baseline("LZMA", lzma_bits_per_dim(test), f"LZMA over all {n} test images at once"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--limit", type=int, help="use only the first N test images")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    baselines = compute_baselines(args.root, args.limit)
    print(f"{'baseline':<24}{'bits/dim':>10}  how")
    for b in baselines:
        print(f"{b.name:<24}{b.bits_per_dim:>10.3f}  {b.how}")
    if args.json:
        args.json.write_text(json.dumps([asdict(b) for b in baselines], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
