import base64
import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from service_testing import png_bomb

from service.errors import RequestError
from service.imaging import decode_images, decode_latents, grid, images_payload, png_to_array

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
        (_png(np.zeros((28, 28, 3), np.uint8), mode="RGB"), "mode 'RGB'"),
        (_png(np.zeros((27, 28), np.uint8)), "expected a 28x28 image, got 28x27"),
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
    assert str(error.value) == f"images[0]: expected a 28x28 image, got {width}x{height}"


def test_the_decompression_bomb_is_small():
    assert len(png_bomb(30000, 30000)) < 1_000_000  # 0.89 MB, 900 MB of pixels


def test_another_formats_oversized_header_is_refused_before_decoding(no_pixel_decoding):
    # A BMP header claiming 20000x20000 (8-bit, palette): Pillow's DecompressionBombError.
    info = struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 8, 0, 0, 0, 0, 256, 0)
    bmp = b"BM" + struct.pack("<IHHI", 1078, 0, 0, 1078) + info + bytes(1024)
    with pytest.raises(RequestError, match=r"images\[0\]: expected a 28x28 image \(Image size"):
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
