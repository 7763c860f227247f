"""Fashion-MNIST classifier whose penultimate activations feed a Fréchet distance.

The role Inception-v3's pool3 features play in FID (Heusel et al. 2017, arXiv 1706.08500),
scaled to 28x28 grayscale: ``features(x)`` are the post-ReLU inputs of the last linear layer,
and ``forward(x) == head(features(x))``.
"""

from __future__ import annotations

import torch
from torch import nn

from models.core.config import ClassifierConfig
from models.kinds import Architecture


class FashionClassifier(nn.Module):
    """(B, C, H, W) images in [-1, 1] -> logits (B, num_classes) or features (B, feature_dim).

    Each level is conv3x3 -> GroupNorm -> ReLU -> maxpool2, so the maps leaving the last level
    are (B, channels[-1], H / 2**levels, W / 2**levels); they are flattened into ``embed``.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        levels: list[nn.Module] = []
        in_channels = config.image_channels
        for out_channels in config.channels:
            levels += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.GroupNorm(config.norm_groups, out_channels),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.trunk = nn.Sequential(*levels)
        side = config.image_size // 2 ** len(config.channels)
        self.embed = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * side * side, config.feature_dim), nn.ReLU()
        )
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        c, s = self.config.image_channels, self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(
                f"expected float images in [-1, 1], got {x.dtype} "
                "(convert 8-bit pixels with models.core.pixels.pixels_to_signed_unit)"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> penultimate activations (B, feature_dim), >= 0."""
        self._check_input(x)
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> unnormalised class scores (B, num_classes)."""
        return self.head(self.features(x))


class ClassifierArchitecture(Architecture):
    """The classifier as a checkpoint architecture; it is not a served kind."""

    interface_version = 1  # of models.kinds' interface (INTERFACE_VERSION)
    name = "classifier"
    config_class = ClassifierConfig
    model_class = FashionClassifier
