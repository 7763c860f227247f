"""A DDPM: the epsilon-prediction UNet together with the diffusion process it was trained on."""

from __future__ import annotations

import torch
from torch import nn

from models.core.config import DDPMConfig
from models.diffusion.gaussian import GaussianDiffusion
from models.nn.unet import UNet


class DDPM(nn.Module):
    """``unet`` predicts noise (and variance values when learned); ``diffusion`` holds the maths.

    Calling the module runs the network: (x_t (B, C, H, W), t (B,)) -> (B, C or 2C, H, W),
    the form every sampler and bound in :mod:`models` accepts as ``model``.
    """

    def __init__(
        self,
        config: DDPMConfig,
        unet: nn.Module | None = None,
        diffusion: GaussianDiffusion | None = None,
    ) -> None:
        """Our UNet and the config's chain, or a network and chain another format loaded
        (:mod:`models.formats`), whose ``config`` gives ``unet.image_channels``,
        ``unet.image_size`` and ``diffusion`` as a DDPMConfig does."""
        super().__init__()
        self.config = config
        if unet is None:
            channels = config.unet.image_channels
            out_channels = 2 * channels if config.diffusion.learns_variance else channels
            unet = UNet(config.unet, out_channels)
        self.unet = unet
        self.diffusion = GaussianDiffusion(config.diffusion) if diffusion is None else diffusion

    @property
    def image_shape(self) -> tuple[int, int, int]:
        unet = self.config.unet
        return (unet.image_channels, unet.image_size, unet.image_size)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t)
