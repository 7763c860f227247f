"""Fixtures shared by every test package: one intra-op thread, and the tiny-model configs.

The config factories are the one place tests get a small VAE or DDPM from; ask for the fixture
and call it: ``tiny_vae_config(channels=3, size=16)``, ``tiny_ddpm_config(size=8)``. Keyword
overrides reach the config dataclass unchanged, so a test states only what it cares about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from models.core.config import DDPMConfig, DiffusionConfig, UNetConfig, VAEConfig


@pytest.fixture(scope="session", autouse=True)
def one_intra_op_thread():
    """The test networks are tiny: with two OpenMP threads on a busy 2-CPU machine each of the
    thousands of small convolutions waits on a thread barrier (one file took 100 s instead of
    5 s). One thread keeps the suite's runtime independent of the machine's load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_tiny_vae_config(channels: int = 1, size: int = 28, **overrides: Any) -> VAEConfig:
    """A VAE of a few thousand parameters for (channels, size, size) images."""
    fields: dict[str, Any] = dict(latent_dim=4, channels=(8, 16), num_res_blocks=1, num_mixtures=2)
    return VAEConfig(image_channels=channels, image_size=size, **{**fields, **overrides})


def make_tiny_unet_config(channels: int = 1, size: int = 8, **overrides: Any) -> UNetConfig:
    """A two-level UNet (size, then size/2 with the attending middle block) of width 8/16."""
    fields: dict[str, Any] = dict(
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        num_heads=1,
    )
    return UNetConfig(image_channels=channels, image_size=size, **{**fields, **overrides})


def make_tiny_ddpm_config(
    channels: int = 1,
    size: int = 8,
    num_timesteps: int = 20,
    variance: str = "learned_range",
    **unet_overrides: Any,
) -> DDPMConfig:
    """A tiny UNet (:func:`make_tiny_unet_config`) on a short linear-schedule diffusion."""
    return DDPMConfig(
        make_tiny_unet_config(channels, size, **unet_overrides),
        DiffusionConfig(num_timesteps=num_timesteps, variance=variance),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def tiny_vae_config() -> Callable[..., VAEConfig]:
    return make_tiny_vae_config


@pytest.fixture(scope="session")
def tiny_unet_config() -> Callable[..., UNetConfig]:
    return make_tiny_unet_config


@pytest.fixture(scope="session")
def tiny_ddpm_config() -> Callable[..., DDPMConfig]:
    return make_tiny_ddpm_config
