"""Fashion-MNIST: the IDX files of Debian's package, as uint8 (N, 1, 28, 28) with labels.

Folders of your own images are read by :mod:`models.folders`.

Fashion-MNIST is read from Debian's ``dataset-fashion-mnist`` package (nothing is downloaded).
Its directory is, in order of precedence, the ``root`` argument, the ``ELBO_SERVE_FASHION_MNIST``
environment variable, then ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "ELBO_SERVE_FASHION_MNIST"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), then the number of dimensions.
_IDX_UBYTE = 0x08

Split = Literal["train", "test"]


class DataFormatError(ValueError):
    """A data file exists but its contents are not what the format promises."""


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get(FASHION_MNIST_ENV, DEFAULT_FASHION_MNIST_DIR))


def load_fashion_mnist(
    split: Split = "train", root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images (N, 1, 28, 28) uint8 and labels (N,) int64 for ``split``."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = fashion_mnist_dir(root)
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(directory / f"{prefix}-images-idx3-ubyte.gz", expected_ndim=3)
    labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", expected_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels for {split!r}"
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64)


def read_idx(path: str | os.PathLike[str], expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped if the name ends in .gz) into a uint8 array.

    Raises FileNotFoundError for a missing file and DataFormatError, naming the file, for a
    corrupt gzip stream, a wrong magic number or a size that does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (install Debian's dataset-fashion-mnist package, or set "
            f"{FASHION_MNIST_ENV} to a directory holding the IDX files)"
        )
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    zero1, zero2, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or type_code != _IDX_UBYTE:
        raise DataFormatError(
            f"{path}: bad IDX magic number {raw[:4].hex()} (expected 0000 08 xx: unsigned bytes)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataFormatError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataFormatError(f"{path}: truncated header ({len(raw)} of {header_size} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected_bytes = header_size + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected_bytes:
        problem = "truncated" if len(raw) < expected_bytes else "has trailing bytes"
        raise DataFormatError(
            f"{path}: {problem}: header says shape {tuple(shape)} = {expected_bytes} bytes, "
            f"file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise DataFormatError(f"{path}: not a readable gzip file ({error})") from error
