"""Pixel maps, IDX reading, Fashion-MNIST loading, PNG folders (models/data.py, core/pixels.py)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from models.core.pixels import (
    NonFiniteError,
    pixels_to_signed_unit,
    require_finite,
    signed_unit_to_pixels,
)
from models.data import (
    FASHION_MNIST_ENV,
    DataFormatError,
    load_fashion_mnist,
    read_idx,
)

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file as the format defines it: 0, 0, type, ndim, big-endian u32 sizes, data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_split(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([3, 0, 9, 1, 1, 5, 2], dtype=np.uint8)


@pytest.fixture
def fashion_dir(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    write_split(tmp_path, "train", images, labels)
    write_split(tmp_path, "t10k", images[:3], labels[:3])
    return tmp_path


# --- 8-bit <-> [-1, 1] --------------------------------------------------------------------


def test_all_256_pixel_values_round_trip_exactly():
    pixels = torch.arange(256, dtype=torch.uint8)
    back = signed_unit_to_pixels(pixels_to_signed_unit(pixels))
    assert back.dtype == torch.uint8
    assert torch.equal(back, pixels)


def test_pixel_map_is_k_over_127_5_minus_1():
    x = pixels_to_signed_unit(torch.arange(256, dtype=torch.int64))
    assert x.dtype == torch.float32
    expected = np.arange(256) / 127.5 - 1.0
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-7)
    assert x[0].item() == -1.0 and x[255].item() == 1.0


def test_signed_unit_to_pixels_rounds_to_the_nearest_value():
    step = 2.0 / 255.0
    grid = -1.0 + step * torch.arange(256, dtype=torch.float64)
    k = torch.arange(255)
    just_above = (grid[:-1] + 0.4 * step).float()
    just_below = (grid[1:] - 0.4 * step).float()
    assert torch.equal(signed_unit_to_pixels(just_above), k.to(torch.uint8))
    assert torch.equal(signed_unit_to_pixels(just_below), (k + 1).to(torch.uint8))


def test_signed_unit_to_pixels_clips_outside_the_unit_interval():
    x = torch.tensor([-100.0, -1.5, -1.0000001, 1.0000001, 2.0, 1e9, -3e38])
    assert signed_unit_to_pixels(x).tolist() == [0, 0, 0, 255, 255, 255, 0]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_signed_unit_to_pixels_refuses_non_finite_values_and_names_their_rows(value):
    # NaN cast to uint8 is undefined behaviour (0 on AMD, arbitrary on Intel): never a pixel.
    x = torch.zeros(4, 1, 2, 2)
    x[1, 0, 1, 0] = value
    x[3, 0, 0, 1] = value
    with pytest.raises(NonFiniteError, match="pixel values") as error:
        signed_unit_to_pixels(x)
    assert error.value.rows == (1, 3)


def test_require_finite_names_rows_and_accepts_finite_tensors():
    require_finite(torch.tensor([[0.0, 1e38], [-1e38, 5.0]]), "latents")
    with pytest.raises(NonFiniteError, match=r"bounds: NaN or infinite values in rows \[2\]"):
        require_finite(torch.tensor([1.0, 2.0, float("nan")], dtype=torch.float64), "bounds")
    with pytest.raises(NonFiniteError) as error:
        require_finite(torch.tensor(float("inf")), "a scalar")
    assert error.value.rows == (0,)


# --- read_idx -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["data-idx3-ubyte", "data-idx3-ubyte.gz"])
def test_read_idx_reads_plain_and_gzipped_files(tmp_path, images, name):
    path = write_idx(tmp_path / name, images)
    array = read_idx(path, expected_ndim=3)
    assert array.dtype == np.uint8
    assert array.shape == (7, 28, 28)
    np.testing.assert_array_equal(array, images)


def test_read_idx_reads_a_one_dimensional_label_file(tmp_path, labels):
    array = read_idx(write_idx(tmp_path / "labels.gz", labels), expected_ndim=1)
    np.testing.assert_array_equal(array, labels)


def test_read_idx_result_is_writable_and_independent_of_the_file(tmp_path, labels):
    array = read_idx(write_idx(tmp_path / "labels", labels))
    array[0] = 200  # a read-only frombuffer view would raise here
    assert array[0] == 200


def test_missing_idx_file_error_names_the_path(tmp_path):
    missing = tmp_path / "nowhere-idx3-ubyte.gz"
    with pytest.raises(FileNotFoundError) as info:
        read_idx(missing)
    assert str(missing) in str(info.value)


def _assert_format_error(path: Path, problem: str, expected_ndim: int | None = None) -> None:
    with pytest.raises(DataFormatError) as info:
        read_idx(path, expected_ndim=expected_ndim)
    message = str(info.value)
    assert path.name in message
    assert problem in message


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_file_is_a_format_error(tmp_path, images, suffix):
    path = tmp_path / f"images{suffix}"
    data = idx_bytes(images)[:-10]
    path.write_bytes(gzip.compress(data) if suffix else data)
    _assert_format_error(path, "truncated")


def test_truncated_idx_header_is_a_format_error(tmp_path):
    path = tmp_path / "header-only"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 10))  # 1 of 3 sizes
    _assert_format_error(path, "truncated header")


def test_too_short_idx_file_is_a_format_error(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"\x00\x00")
    _assert_format_error(path, "too short")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_file_with_trailing_bytes_is_a_format_error(tmp_path, labels, suffix):
    path = tmp_path / f"labels{suffix}"
    data = idx_bytes(labels) + b"\x00\x01"
    path.write_bytes(gzip.compress(data) if suffix else data)
    _assert_format_error(path, "trailing bytes")


@pytest.mark.parametrize(
    "magic", [bytes([0, 0, 0x0D, 1]), bytes([1, 0, 8, 1]), bytes([0x1F, 0x8B, 8, 1])]
)
def test_bad_idx_magic_is_a_format_error(tmp_path, magic):
    path = tmp_path / "bad-magic"
    path.write_bytes(magic + struct.pack(">I", 3) + b"\x01\x02\x03")
    _assert_format_error(path, "bad IDX magic")


def test_wrong_number_of_dimensions_is_a_format_error(tmp_path, labels):
    path = write_idx(tmp_path / "labels.gz", labels)
    _assert_format_error(path, "1 dimensions, expected 3", expected_ndim=3)


@pytest.mark.parametrize(
    "content",
    [b"this is not gzip data at all", b"\x1f\x8b\x08\x00", "truncated-stream"],
    ids=["not-gzip", "header-only", "truncated-stream"],
)
def test_corrupt_gzip_is_a_format_error(tmp_path, images, content):
    path = tmp_path / "images.gz"
    if content == "truncated-stream":
        blob = gzip.compress(idx_bytes(images))
        content = blob[: len(blob) // 2]
    path.write_bytes(content)
    _assert_format_error(path, "not a readable gzip file")


def test_gzip_with_corrupt_deflate_stream_is_a_format_error(tmp_path, labels):
    blob = bytearray(gzip.compress(idx_bytes(labels), mtime=0))
    blob[10] = 0xFF  # first deflate block header: BTYPE = 11, which is reserved (invalid)
    path = tmp_path / "labels.gz"
    path.write_bytes(bytes(blob))
    _assert_format_error(path, "not a readable gzip file")


# --- load_fashion_mnist -------------------------------------------------------------------


def test_load_fashion_mnist_from_root(fashion_dir, images, labels):
    x, y = load_fashion_mnist("train", root=fashion_dir)
    assert x.dtype == torch.uint8 and x.shape == (7, 1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (7,)
    np.testing.assert_array_equal(x[:, 0].numpy(), images)
    np.testing.assert_array_equal(y.numpy(), labels)

    x_test, y_test = load_fashion_mnist("test", root=str(fashion_dir))
    np.testing.assert_array_equal(x_test[:, 0].numpy(), images[:3])
    np.testing.assert_array_equal(y_test.numpy(), labels[:3])


def test_load_fashion_mnist_uses_the_environment_variable(fashion_dir, labels, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(fashion_dir))
    x, y = load_fashion_mnist("train")
    assert x.shape == (7, 1, 28, 28)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_root_argument_overrides_the_environment_variable(fashion_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "elsewhere"))
    x, _ = load_fashion_mnist("test", root=fashion_dir)
    assert x.shape == (3, 1, 28, 28)


def test_environment_variable_pointing_nowhere_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere.*train-images-idx3-ubyte.gz"):
        load_fashion_mnist("train")


def test_mismatched_image_and_label_counts_raise(tmp_path, images, labels):
    write_split(tmp_path, "train", images, labels[:5])
    with pytest.raises(DataFormatError, match="7 images but 5 labels"):
        load_fashion_mnist("train", root=tmp_path)


def test_unknown_split_raises(fashion_dir):
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root=fashion_dir)  # type: ignore[arg-type]


@pytest.mark.parametrize("split, count", [("train", 60_000), ("test", 10_000)])
def test_real_fashion_mnist_has_the_published_shapes_and_balanced_classes(split, count):
    images_file = REAL_FASHION_MNIST / "t10k-images-idx3-ubyte.gz"
    assert images_file.is_file(), (
        f"{images_file} is missing: install Debian's dataset-fashion-mnist package "
        "(`make data`); these tests must not be skipped"
    )
    x, y = load_fashion_mnist(split, root=REAL_FASHION_MNIST)

    assert x.shape == (count, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (count,) and y.dtype == torch.int64
    assert y.min() >= 0 and y.max() <= 9
    np.testing.assert_array_equal(np.bincount(y.numpy(), minlength=10), [count // 10] * 10)
    # Real photographs, not a constant or truncated array: both extremes occur.
    assert x.min() == 0 and x.max() == 255


# --- image_grid ----------------------------------------------------------------------


def test_image_grid_places_images_row_by_row_with_padding():
    from models.core.pixels import image_grid

    images = torch.stack([torch.full((1, 2, 3), v, dtype=torch.uint8) for v in (10, 20, 30)])
    grid = image_grid(images, columns=2, padding=1)
    assert grid.shape == (1, 2 * 3 + 1, 2 * 4 + 1)
    assert grid[0, 1, 1] == 10 and grid[0, 1, 5] == 20 and grid[0, 4, 1] == 30
    assert grid[0, 4, 5] == 0 and grid[0, 0].sum() == 0  # empty slot and padding are black


def test_image_grid_tiles_rgb_images_keeping_each_channel():
    from models.core.pixels import image_grid

    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    for i in range(3):
        images[i, i] = 255  # red, green, blue
    grid = image_grid(images, columns=3, padding=2)
    assert grid.shape == (3, 8 + 4, 3 * 10 + 2)
    assert grid[:, 2, 2].tolist() == [255, 0, 0]
    assert grid[:, 2, 12].tolist() == [0, 255, 0] and grid[:, 2, 22].tolist() == [0, 0, 255]
