"""Lossless codecs as complexity estimates: each codelength is the codec's own output size, the
output decodes back to the image, and simpler images cost fewer bits."""

from __future__ import annotations

import bz2
import io
import lzma
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from models.eval.anomaly import png_bits_per_dim
from models.eval.codecs import CODECS, codec_bits_per_dim, lzma_bytes


def _images(channels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (2, channels, 12, 10), generator=generator, dtype=torch.uint8)
    flat = torch.full((1, channels, 12, 10), 40, dtype=torch.uint8)
    return torch.cat([noise, flat])


def _decoded_pillow(data: bytes, channels: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _independent_size_and_decoded(codec: str, image: np.ndarray) -> tuple[int, np.ndarray]:
    """The codec called here, not through models.eval.codecs: its byte count and the image
    its bytes decode to."""
    c = image.shape[0]
    pixels = image[0] if c == 1 else image.transpose(1, 2, 0)
    if codec in ("png", "webp"):
        buffer = io.BytesIO()
        options = (
            {"optimize": True}
            if codec == "png"
            else {"lossless": True, "quality": 100, "method": 6}
        )
        Image.fromarray(pixels).save(buffer, format=codec.upper(), **options)
        data = buffer.getvalue()
        return len(data), _decoded_pillow(data, c)
    raw = image.tobytes()
    if codec == "lzma":
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
        data = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters)  # 64 MiB dictionary
        assert lzma_bytes(image) == data  # a dictionary the image's size: the same bytes
        back = lzma.decompress(data, format=lzma.FORMAT_RAW, filters=filters)
    elif codec == "zlib":
        data = zlib.compress(raw, 9)
        back = zlib.decompress(data)
    else:
        data = bz2.compress(raw, 9)
        back = bz2.decompress(data)
    return len(data), np.frombuffer(back, dtype=np.uint8).reshape(image.shape)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("codec", list(CODECS))
def test_codelength_is_the_codecs_own_output_size_and_decodes_losslessly(codec, channels):
    images = _images(channels)
    bits = codec_bits_per_dim(images, codec)
    assert bits.dtype == torch.float64 and bits.shape == (3,)
    for i, image in enumerate(images.numpy()):
        size, decoded = _independent_size_and_decoded(codec, image)
        assert bits[i].item() == 8.0 * size / image.size
        assert np.array_equal(decoded, image)  # lossless
    assert bits[2] < bits[:2].min()  # a flat image is simpler than noise


def test_png_codec_is_the_png_corrections_codelength():
    images = _images(1)
    assert torch.equal(codec_bits_per_dim(images, "png"), png_bits_per_dim(images))


def test_an_unknown_codec_or_a_non_image_is_refused():
    with pytest.raises(ValueError, match="codec: one of png, webp"):
        codec_bits_per_dim(_images(1), "jpeg")
    with pytest.raises(ValueError, match=r"need uint8 images \(B, 1 or 3, H, W\)"):
        codec_bits_per_dim(torch.zeros(2, 2, 4, 4, dtype=torch.uint8), "webp")
