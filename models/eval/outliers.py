"""Inputs that are not Fashion-MNIST, for the anomaly evaluation. All uint8 (N, C, H, W), of
the shape of the model's images (grayscale or RGB, any size).

Two kinds: a different dataset (scikit-learn's bundled handwritten digits, an MNIST-like set of
the kind that fools raw likelihoods, Nalisnick et al. 2019) and corrupted normal images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAUSSIAN_NOISE_STD_PIXELS = 25.5  # 0.2 in the model's [-1, 1] units
BLUR_SIGMA_PIXELS = 1.0


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


def handwritten_digits(image_size: int = 28, channels: int = 1) -> torch.Tensor:
    """The 1,797 8x8 digits of ``sklearn.datasets.load_digits`` (values 0..16), rescaled to
    0..255 and bilinearly resized to image_size x image_size, grey in every one of
    ``channels``: (1797, C, S, S)."""
    from sklearn.datasets import load_digits

    digits = torch.from_numpy(load_digits().images).float().unsqueeze(1) * (255.0 / 16.0)
    upsampled = F.interpolate(
        digits, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return _to_uint8(upsampled).expand(-1, channels, -1, -1).contiguous()


def with_gaussian_noise(
    images: torch.Tensor, generator: torch.Generator, std_pixels: float = GAUSSIAN_NOISE_STD_PIXELS
) -> torch.Tensor:
    """x + N(0, std^2) per pixel, rounded and clipped back to 0..255."""
    noise = torch.randn(images.shape, generator=generator) * std_pixels
    return _to_uint8(images.float() + noise)


def inverted(images: torch.Tensor) -> torch.Tensor:
    """255 - x: dark garments on a bright background."""
    return 255 - images


def blurred(images: torch.Tensor, sigma_pixels: float = BLUR_SIGMA_PIXELS) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius 3 sigma) with reflected borders, each channel on
    its own: (N, C, H, W) -> (N, C, H, W)."""
    radius = max(1, round(3 * sigma_pixels))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma_pixels) ** 2)
    kernel = kernel / kernel.sum()
    n, c, h, w = images.shape
    x = images.float().reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return _to_uint8(x.reshape(n, c, h, w))


def uniform_noise(n: int, image_shape: tuple[int, int, int], generator: torch.Generator):
    """Independent uniform pixels: the 8 bits/dim image, (n, C, H, W)."""
    return torch.randint(0, 256, (n, *image_shape), generator=generator, dtype=torch.uint8)


def outlier_sets(normal: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Named outlier sets of the shape of ``normal`` (N, C, H, W) uint8, C = 1 or 3 (the digits
    set is cycled or cut to N)."""
    n, image_shape = normal.shape[0], tuple(normal.shape[1:])
    digits = handwritten_digits(image_shape[-1], image_shape[0])
    return {
        "digits": digits[torch.arange(n) % digits.shape[0]],
        "gaussian_noise": with_gaussian_noise(normal, generator),
        "inverted": inverted(normal),
        "blurred": blurred(normal),
        "uniform_noise": uniform_noise(n, image_shape, generator),
    }
