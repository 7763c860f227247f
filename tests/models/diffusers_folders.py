"""Tiny diffusers folders for the tests, written by diffusers' own save_pretrained, and the
published configs of google/ddpm-cifar10-32 and google/ddpm-cat-256 (their scheduler settings
as published; only the UNets' block widths shrunk so that the fixtures stay small)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CIFAR10_UNET = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
CIFAR10_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_large",
}
CAT256_UNET = {
    **CIFAR10_UNET,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": [
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "AttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": [
        "UpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
        "UpBlock2D",
        "UpBlock2D",
        "UpBlock2D",
    ],
    "sample_size": 256,
}
CAT256_SCHEDULER = {**CIFAR10_SCHEDULER, "variance_type": "fixed_small"}
MODEL_INDEX = {
    "_class_name": "DDPMPipeline",
    "_diffusers_version": "0.1.1",
    "scheduler": ["diffusers", "DDPMScheduler"],
    "unet": ["diffusers", "UNet2DModel"],
}


def tiny_unet_config(channels: int, size: int, out_channels: int) -> dict[str, Any]:
    return {
        "_class_name": "UNet2DModel",
        "sample_size": size,
        "in_channels": channels,
        "out_channels": out_channels,
        "layers_per_block": 1,
        "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4,
        "attention_head_dim": 4,
    }


def write_folder(
    directory: Path,
    unet_config: dict[str, Any],
    scheduler_config: dict[str, Any],
    model_index: dict[str, Any] | None = MODEL_INDEX,
    seed: int = 0,
    safe_serialization: bool = True,
) -> Path:
    """The UNet built from ``unet_config`` with random (seeded, non-zero) weights, saved by
    diffusers' save_pretrained, beside ``scheduler_config`` (and ``model_index``)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel.from_config(unet_config)
    with torch.no_grad():  # diffusers zero-initialises nothing we rely on; spread the output
        for parameter in unet.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    unet.save_pretrained(directory / "unet", safe_serialization=safe_serialization)
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config))
    if model_index is not None:
        (directory / "model_index.json").write_text(json.dumps(model_index))
    return directory


def tiny_folder(
    directory: Path, channels: int = 1, size: int = 8, T: int = 50, **scheduler: Any
) -> Path:
    learned = scheduler.get("variance_type") == "learned_range"
    unet = tiny_unet_config(channels, size, 2 * channels if learned else channels)
    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": T, **scheduler}
    return write_folder(directory, unet, config)
