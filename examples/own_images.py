"""A worked example of the folder workflow, in minutes on a CPU: handwritten digits are the
normal images, clothing the anomalies.

    python examples/own_images.py runs/own_images     # writes the two folders below

    runs/own_images/digits/    the 1,797 scikit-learn digits, 16x16 grayscale PNGs (normal)
    runs/own_images/clothing/  500 Fashion-MNIST test images, resized to 16x16 (anomalies)

Then, as the README's "Your own images" shows: train on digits/, evaluate and calibrate on
digits/ with clothing/ as an outlier folder, drop the checkpoint into a model directory, serve.
Both sources ship with what the project installs (scikit-learn's bundled digits, Debian's
Fashion-MNIST package): nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 16


def write_digits(folder: Path) -> int:
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = np.round(image * 255.0 / 16.0).astype(np.uint8)  # 0..16 -> 0..255
        big = Image.fromarray(pixels, mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        (folder / str(label)).mkdir(exist_ok=True)  # subfolders: the loader recurses
        big.save(folder / str(label) / f"{index:04d}.png")
    return len(digits.images)


def write_clothing(folder: Path, count: int = 500) -> int:
    from models.data import load_fashion_mnist

    folder.mkdir(parents=True, exist_ok=True)
    images, _ = load_fashion_mnist("test")
    for index, image in enumerate(images[:count]):
        small = Image.fromarray(image[0].numpy(), mode="L").resize(
            (SIZE, SIZE), Image.Resampling.BILINEAR
        )
        small.save(folder / f"{index:04d}.png")
    return count


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "runs/own_images")
    digits = write_digits(root / "digits")
    clothing = write_clothing(root / "clothing")
    print(
        f"{digits} digits in {root / 'digits'}, {clothing} clothing images in {root / 'clothing'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
