import math

import numpy as np
import pytest

from models.eval.baselines import (
    lzma_bits_per_dim,
    per_pixel_categorical_bits_per_dim,
    png_bits_per_dim,
    uniform_bits_per_dim,
)


def test_uniform_model_scores_exactly_eight_bits_per_dim():
    assert uniform_bits_per_dim() == pytest.approx(8.0, abs=1e-12)


def test_per_pixel_categorical_matches_add_one_smoothed_counts():
    # Pixel 0 is always 7 in training; pixel 1 alternates between 0 and 255.
    train = np.array([[7, 0], [7, 255], [7, 0], [7, 255]], dtype=np.uint8)
    test = np.array([[7, 255], [3, 0]], dtype=np.uint8)
    p_seen_const = 5 / (4 + 256)  # count 4 plus the smoothing 1, over 4 + 256
    p_unseen = 1 / (4 + 256)
    p_alternating = 3 / (4 + 256)
    nll_bits = -(2 * math.log2(p_alternating) + math.log2(p_seen_const) + math.log2(p_unseen))
    assert per_pixel_categorical_bits_per_dim(train, test) == pytest.approx(nll_bits / 4)


def test_compressors_find_constant_images_cheap_and_noise_expensive():
    rng = np.random.default_rng(0)
    constant = np.zeros((50, 784), dtype=np.uint8)
    noise = rng.integers(0, 256, size=(50, 784), dtype=np.uint8)
    assert lzma_bits_per_dim(constant) < 0.1
    assert lzma_bits_per_dim(noise) > 7.9  # incompressible: about 8 bits per byte
    assert png_bits_per_dim(constant, 28) < png_bits_per_dim(noise, 28)
    assert png_bits_per_dim(noise, 28) > 8.0  # PNG cannot beat raw bytes on noise
