import pytest
import torch

from models.eval.outliers import (
    GAUSSIAN_NOISE_STD_PIXELS,
    blurred,
    handwritten_digits,
    inverted,
    outlier_sets,
    uniform_noise,
    with_gaussian_noise,
)


def _gray(value: int, n: int = 4) -> torch.Tensor:
    return torch.full((n, 1, 28, 28), value, dtype=torch.uint8)


def test_digits_are_upsampled_to_28x28_and_use_the_full_8_bit_range():
    from sklearn.datasets import load_digits

    digits = handwritten_digits(28)
    assert digits.shape == (1797, 1, 28, 28) and digits.dtype == torch.uint8
    assert digits.max() == 255  # the 16s of load_digits map to 255
    source = torch.from_numpy(load_digits().images).float() * 255 / 16
    # Bilinear upsampling preserves the mean up to border effects.
    assert abs(digits.float().mean() - source.mean()) < 3.0


def test_inverting_twice_gives_the_image_back():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(inverted(inverted(images)), images)
    assert torch.equal(inverted(_gray(0)), _gray(255))


def test_blur_keeps_a_flat_image_and_smooths_a_checkerboard():
    assert torch.equal(blurred(_gray(77)), _gray(77))
    board = ((torch.arange(28)[:, None] + torch.arange(28)[None, :]) % 2 * 255).to(torch.uint8)
    smoothed = blurred(board.expand(1, 1, 28, 28))
    assert smoothed.float().std() < 0.2 * board.float().std()
    assert abs(smoothed.float().mean() - 127.5) < 2


def test_gaussian_noise_has_the_stated_standard_deviation():
    noisy = with_gaussian_noise(_gray(128, 20), torch.Generator().manual_seed(0))
    deviation = noisy.float() - 128
    assert abs(deviation.mean()) < 1.0
    assert abs(deviation.std() - GAUSSIAN_NOISE_STD_PIXELS) < 1.0


def test_uniform_noise_covers_all_pixel_values_evenly():
    noise = uniform_noise(50, (1, 28, 28), torch.Generator().manual_seed(0))
    counts = torch.bincount(noise.flatten().long(), minlength=256).float()
    assert noise.shape == (50, 1, 28, 28) and counts.min() > 0
    assert abs(noise.float().mean() - 127.5) < 2


def test_outlier_sets_match_the_normal_batch_in_size_and_are_reproducible():
    normal = torch.randint(0, 256, (5, 1, 28, 28), generator=torch.Generator().manual_seed(1)).to(
        torch.uint8
    )
    first = outlier_sets(normal, torch.Generator().manual_seed(0))
    again = outlier_sets(normal, torch.Generator().manual_seed(0))
    assert set(first) == {"digits", "gaussian_noise", "inverted", "blurred", "uniform_noise"}
    for name, images in first.items():
        assert images.shape == normal.shape and images.dtype == torch.uint8, name
        assert torch.equal(images, again[name]), name


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16), (1, 64, 64), (3, 32, 32)])
def test_every_outlier_set_has_the_shape_of_the_normal_images(shape):
    normal = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    sets = outlier_sets(normal, torch.Generator().manual_seed(0))
    for name, images in sets.items():
        assert images.shape == normal.shape and images.dtype == torch.uint8, name


def test_rgb_digits_are_the_grey_digits_in_every_channel():
    grey, rgb = handwritten_digits(16), handwritten_digits(16, channels=3)
    assert rgb.shape == (1797, 3, 16, 16)
    assert all(torch.equal(rgb[:, c : c + 1], grey) for c in range(3))


def test_blur_treats_each_channel_on_its_own():
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    per_channel = torch.cat([blurred(x[:, c : c + 1]) for c in range(3)], dim=1)
    assert torch.equal(blurred(x), per_channel)
