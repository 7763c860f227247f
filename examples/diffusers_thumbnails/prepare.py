"""Export the worked example's image folders: plain numpy and Pillow, no elbo-serve import.

    python examples/diffusers_thumbnails/prepare.py --out runs/thumbnails

writes, from Debian's dataset-fashion-mnist (28x28 grayscale, 256 levels):

  OUT/train/    the 60,000 training images as 8x8 thumbnails (each pixel the mean of its box)
  OUT/test/     300 thumbnails of the test split, drawn with --seed: never trained on
  OUT/digits/   300 of scikit-learn's 8x8 digits (their 0..16 levels scaled to 0..255)
  OUT/photos/   300 8x8 patches of scikit-learn's two bundled photographs, 4x downscaled

train/ is what ``train.py --data`` reads; test/ is the normal folder for ``models.evaluate``,
digits/ and photos/ its outlier folders. A team's own folder of small grayscale images
takes train/'s place.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

SIZE = 8


def read_idx_images(path: Path) -> np.ndarray:
    """(N, 28, 28) uint8 from a gzipped IDX image file (16-byte header)."""
    raw = gzip.decompress(path.read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """(N, SIZE, SIZE) uint8: each image shrunk with a box filter."""
    return np.stack(
        [np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BOX)) for image in images]
    )


def digits(count: int, seed: int) -> np.ndarray:
    images = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    return images[np.random.default_rng(seed).permutation(len(images))[:count]]


def photo_patches(count: int, seed: int) -> np.ndarray:
    """``count`` random patches of the bundled photographs, 4x downscaled, grayscale."""
    rng = np.random.default_rng(seed)
    photos = [
        np.asarray(Image.fromarray(p).convert("L").resize((p.shape[1] // 4, p.shape[0] // 4)))
        for p in load_sample_images().images
    ]
    patches = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - SIZE)
        x = rng.integers(0, photo.shape[1] - SIZE)
        patches.append(photo[y : y + SIZE, x : x + SIZE])
    return np.stack(patches)


def write_pngs(images: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/thumbnails"))
    parser.add_argument(
        "--fashion-mnist", type=Path, default=Path("/usr/share/datasets/fashion-mnist")
    )
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train = read_idx_images(args.fashion_mnist / "train-images-idx3-ubyte.gz")
    test = read_idx_images(args.fashion_mnist / "t10k-images-idx3-ubyte.gz")
    chosen = np.random.default_rng(args.seed).choice(len(test), args.held_out, replace=False)
    write_pngs(thumbnails(train), args.out / "train")
    write_pngs(thumbnails(test[np.sort(chosen)]), args.out / "test")
    write_pngs(digits(args.held_out, args.seed), args.out / "digits")
    write_pngs(photo_patches(args.held_out, args.seed), args.out / "photos")
    print(f"wrote {len(train)} training and {args.held_out} held-out thumbnails to {args.out}")


if __name__ == "__main__":
    main()
