import base64
import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from service_testing import png_bomb

from service.errors import RequestError
from service.imaging import (
    decode_images,
    decode_latents,
    encode_png,
    grid,
    images_payload,
    png_to_array,
    to_base64_png,
)

SHAPE = (1, 28, 28)


def _png(array: np.ndarray, mode: str = "L", fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_png_and_array_inputs_decode_to_the_same_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    decoded = decode_images(
        [_png(pixels), pixels.tolist(), [pixels.tolist()], "data:image/png;base64," + _png(pixels)],
        SHAPE,
    )
    assert decoded.dtype == torch.uint8 and decoded.shape == (4, 1, 28, 28)
    for image in decoded:
        assert np.array_equal(image[0].numpy(), pixels)


def test_png_payload_round_trips_exactly():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    payload = images_payload(images, "png")
    assert torch.equal(decode_images(payload["images"], SHAPE), images)
    assert images_payload(images, "array")["arrays"] == images.tolist()


def test_grid_tiles_images_with_gaps():
    images = torch.full((5, 1, 28, 28), 255, dtype=torch.uint8)
    tiled = grid(images)
    assert tiled.shape == (1, 2 * 30 + 2, 3 * 30 + 2)  # 3 columns, 2 rows
    assert tiled[0, 2:30, 2:30].eq(255).all() and tiled[0, 0].eq(0).all()
    assert png_to_array(
        base64.b64decode(images_payload(images, "grid")["grid"]), (1, 62, 92), "g"
    ).shape == (1, 62, 92)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"hello").decode(), "not a readable PNG"),
        (_png(np.zeros((28, 28, 3), np.uint8), mode="RGB"), "a 28x28 L image, got 28x28 RGB"),
        (_png(np.zeros((27, 28), np.uint8)), "expected a 28x28 L image, got 28x27 L"),
        (_png(np.zeros((28, 28), np.uint8), fmt="JPEG"), "expected a PNG image, got JPEG"),
        (np.zeros((28, 27)).tolist(), "expected shape (28, 28)"),
        ([[1, 2], [3]], "nested array of integers"),
        (np.full((28, 28), 256).tolist(), "integers 0..255"),
        (np.full((28, 28), 0.5).tolist(), "integers 0..255"),
        ([["a"] * 28] * 28, "nested array of integers"),
    ],
)
def test_bad_images_name_the_item_and_what_is_expected(item, expected):
    good = np.zeros((28, 28), np.uint8).tolist()
    with pytest.raises(RequestError) as error:
        decode_images([good, item], SHAPE)
    assert error.value.field == "images[1]"
    assert expected in str(error.value)


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail the test if Pillow decodes any pixel data."""

    def load(self):
        raise AssertionError(f"decoded the pixels of a {self.size} {self.format} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize(("width", "height"), [(30000, 30000), (10000, 10000), (3000, 2000)])
def test_a_png_of_the_wrong_size_is_refused_from_its_header(no_pixel_decoding, width, height):
    # 30000x30000: over Pillow's error limit; 10000x10000: over its warning limit.
    bomb = png_bomb(width, height)
    with pytest.raises(RequestError) as error:
        decode_images([base64.b64encode(bomb).decode()], SHAPE)
    assert str(error.value) == f"images[0]: expected a 28x28 L image, got {width}x{height} L"


def test_the_decompression_bomb_is_small():
    assert len(png_bomb(30000, 30000)) < 1_000_000  # 0.89 MB, 900 MB of pixels


def test_another_formats_oversized_header_is_refused_before_decoding(no_pixel_decoding):
    # A BMP header claiming 20000x20000 (8-bit, palette): Pillow's DecompressionBombError.
    info = struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 8, 0, 0, 0, 0, 256, 0)
    bmp = b"BM" + struct.pack("<IHHI", 1078, 0, 0, 1078) + info + bytes(1024)
    with pytest.raises(RequestError, match=r"images\[0\]: expected a 28x28 L image \(Image size"):
        decode_images([base64.b64encode(bmp).decode()], SHAPE)


def test_every_truncated_or_corrupted_png_is_a_request_error():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    data = base64.b64decode(_png(pixels))
    broken = [data[:n] for n in range(len(data))]
    for i in range(len(data)):
        for value in (0, 255, data[i] ^ 1):
            if value != data[i]:
                broken.append(data[:i] + bytes([value]) + data[i + 1 :])
    for item in broken:  # some still read (a flipped pixel); none may raise anything else
        try:
            png_to_array(item, SHAPE, "images[0]")
        except RequestError as error:
            assert error.field == "images[0]"


def test_latents_must_have_the_models_shape():
    assert decode_latents([[0.0] * 4, [1.0] * 4], (4,), 10.0).shape == (2, 4)
    with pytest.raises(RequestError, match=r"latents\[0\]: expected shape \(4,\), got \(3,\)"):
        decode_latents([[0.0] * 3], (4,), 10.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "expected an array of floats of shape (2, 3); got the non-finite nan"),
        (float("-inf"), "expected an array of floats of shape (2, 3); got the non-finite -inf"),
        (1e308, "1e+308 is outside -10..10"),  # finite in float64, inf in float32
        (-10.5, "-10.5 is outside -10..10"),
    ],
)
def test_latents_must_be_finite_and_bounded_and_the_error_names_the_value(value, message):
    bad = [[0.0, 0.0, value], [0.0, 0.0, value]]
    with pytest.raises(RequestError) as error:
        decode_latents([[[10.0] * 3, [-10.0] * 3], bad], (2, 3), 10.0)
    assert str(error.value).startswith(f"latents[1][0][2]: {message}")
    assert error.value.field == "latents[1][0][2]"


# Any image shape a servable model allows: L or RGB, 8x8 to 64x64 -----------------------------


def _png_bytes(array: np.ndarray, mode: str, bits: int = 8) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array, mode=mode)
    if bits == 16:  # 16-bit grayscale: Pillow's I;16
        image = Image.fromarray(array.astype(np.uint16) * 257).convert("I;16")
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 8, 8), (1, 64, 64), (3, 64, 64), (3, 8, 8)])
def test_pngs_and_arrays_of_every_shape_round_trip_exactly(shape):
    images = torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=_seeded(0))
    pngs = images_payload(images, "png")["images"]
    assert torch.equal(decode_images(pngs, shape), images)
    arrays = images_payload(images, "array")["arrays"]
    assert torch.equal(decode_images(arrays, shape), images)
    if shape[0] == 1:  # grayscale arrays may also leave the channel out: (H, W)
        assert torch.equal(decode_images([a[0] for a in arrays], shape), images)


def test_rgb_pngs_are_rgb_in_the_file_and_channels_first_in_the_tensor():
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    image[0], image[2, :8] = 255, 128  # red everywhere, some blue in the top half
    decoded = Image.open(io.BytesIO(base64.b64decode(to_base64_png(image))))
    assert decoded.mode == "RGB" and decoded.size == (16, 16)
    assert decoded.getpixel((0, 0)) == (255, 0, 128) and decoded.getpixel((0, 15)) == (255, 0, 0)


def test_a_grid_of_rgb_images_keeps_their_colours():
    images = torch.zeros(5, 3, 16, 16, dtype=torch.uint8)
    images[:, 1] = 200  # green
    tiled = grid(images)
    assert tiled.shape == (3, 2 * 18 + 2, 3 * 18 + 2)  # 3 columns, 2 rows, 2-pixel gaps
    assert tiled[:, 2, 2].tolist() == [0, 200, 0] and tiled[:, 0, 0].tolist() == [0, 0, 0]
    png = base64.b64decode(images_payload(images, "grid")["grid"])
    assert torch.equal(torch.from_numpy(png_to_array(png, (3, 38, 56), "grid").copy()), tiled)


@pytest.mark.parametrize(
    ("array", "mode", "shape", "message"),
    [
        (np.zeros((28, 28), np.uint8), "L", (3, 32, 32), "expected a 32x32 RGB image, got 28x28 L"),
        (np.zeros((16, 16), np.uint8), "L", (3, 16, 16), "expected a 16x16 RGB image, got 16x16 L"),
        (
            np.zeros((16, 16, 3), np.uint8),
            "RGB",
            (1, 16, 16),
            "expected a 16x16 L image, got 16x16 RGB",
        ),
        (
            np.zeros((8, 8, 4), np.uint8),
            "RGBA",
            (3, 8, 8),
            "expected a 8x8 RGB image, got 8x8 RGBA",
        ),
        (np.zeros((8, 8, 2), np.uint8), "LA", (1, 8, 8), "expected a 8x8 L image, got 8x8 LA"),
        (np.zeros((64, 32), np.uint8), "L", (1, 64, 64), "expected a 64x64 L image, got 32x64 L"),
        (np.zeros((8, 8), np.uint8), "P", (1, 8, 8), "expected a 8x8 L image, got 8x8 P (1-bit)"),
    ],
)
def test_a_png_of_the_wrong_size_or_mode_names_both(no_pixel_decoding, array, mode, shape, message):
    with pytest.raises(RequestError) as error:
        png_to_array(_png_bytes(array, mode), shape, "images[0]")
    assert str(error.value) == f"images[0]: {message}"


def test_a_16_bit_png_is_refused_naming_its_depth(no_pixel_decoding):
    png = _png_bytes(np.zeros((8, 8), np.uint8), "L", bits=16)
    with pytest.raises(RequestError, match=r"expected a 8x8 L image, got 8x8 L \(16-bit\)$"):
        png_to_array(png, (1, 8, 8), "images[0]")


def test_a_bomb_is_refused_from_its_header_for_an_rgb_model_too(no_pixel_decoding):
    with pytest.raises(RequestError) as error:
        decode_images([base64.b64encode(png_bomb(30000, 30000)).decode()], (3, 16, 16))
    assert str(error.value) == "images[0]: expected a 16x16 RGB image, got 30000x30000 L"


@pytest.mark.parametrize(
    ("array", "shape", "message"),
    [
        (np.zeros((16, 16)), (3, 16, 16), "expected shape (3, 16, 16), got (16, 16)"),
        (
            np.zeros((16, 16, 3)),
            (3, 16, 16),
            "expected shape (3, 16, 16), got (16, 16, 3) (channels last: send (C, H, W)",
        ),
        (np.zeros((1, 16, 16)), (3, 16, 16), "expected shape (3, 16, 16), got (1, 16, 16)"),
        (np.zeros((3, 8, 8)), (1, 8, 8), "expected shape (8, 8), got (3, 8, 8)"),
        (np.zeros((28, 28)), (1, 64, 64), "expected shape (64, 64), got (28, 28)"),
    ],
)
def test_an_array_of_the_wrong_shape_says_what_was_expected_and_got(array, shape, message):
    with pytest.raises(RequestError) as error:
        decode_images([array.tolist()], shape)
    assert str(error.value).startswith(f"images[0]: {message}")


def test_only_grayscale_or_rgb_images_encode_to_png():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        encode_png(torch.zeros(2, 8, 8, dtype=torch.uint8))


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
