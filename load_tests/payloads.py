"""Request images for load: real Fashion-MNIST test images and anomalous ones, pre-encoded
as base64 PNGs once so that generating load costs the load generator little CPU."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from models.core.noise import seeded_generator
from models.data import load_fashion_mnist
from models.eval.outliers import handwritten_digits, inverted, with_gaussian_noise
from service.imaging import to_base64_png


@dataclass(frozen=True)
class ImagePool:
    normal: list[str]
    anomalous: list[str]

    def draw(self, rng: random.Random, count: int, anomalous_share: float) -> list[str]:
        """``count`` images, each anomalous with probability ``anomalous_share``."""
        return [
            rng.choice(self.anomalous if rng.random() < anomalous_share else self.normal)
            for _ in range(count)
        ]


def image_pool(size: int = 256, seed: int = 0) -> ImagePool:
    """``size`` test images, and as many anomalous ones: a third each handwritten digits,
    noisy and inverted test images (the evaluation's outlier kinds)."""
    test, _ = load_fashion_mnist("test")
    normal = test[:size]
    third = max(1, size // 3)
    anomalous = torch.cat(
        [
            handwritten_digits(test.shape[-1])[:third],
            with_gaussian_noise(normal[:third], seeded_generator(seed)),
            inverted(normal[third : 2 * third]),
        ]
    )
    return ImagePool([to_base64_png(x) for x in normal], [to_base64_png(x) for x in anomalous])
