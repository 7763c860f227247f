"""diffusers DDPM folders, loaded as DDPMs of our kind ("formats are loaders, kinds are behaviour").

A folder written by ``DDPMPipeline.save_pretrained`` (``model_index.json``, ``unet/``,
``scheduler/``), or just ``unet/`` + ``scheduler/``, becomes a :class:`~models.diffusion.ddpm.DDPM`
whose network is diffusers' own ``UNet2DModel`` (wrapped by :class:`DiffusersUNet` so that it
returns what our maths reads: eps, and the variance values when learned) and whose chain is
built from the scheduler's betas alone. The bound, samplers and scores are ours and see no
difference; the scheduler's settings map as follows (docs/diffusers.md has the table):

- betas: those of the alpha-bars the scheduler class builds from ``beta_schedule`` (linear,
  scaled_linear, squaredcos_cap_v2) or ``trained_betas``; posteriors and bounds from our
  formulas, in float64.
- ``prediction_type``: epsilon as is; sample (x_0) and v_prediction (Salimans & Ho 2022,
  arXiv 2202.00512, Eq. 17) converted to eps by the adapter (Ho et al. 2020 Eq. 4).
- ``variance_type``: fixed_small and fixed_small_log are beta-tilde_t (the _log form only
  changes how diffusers computes the same std); fixed_large and fixed_large_log are beta_t
  (Glide's max_log); learned_range is Nichol & Dhariwal 2021 Eq. 15 (2C output channels).
  At t = 0, where diffusers clamps beta-tilde_0 = 0 to 1e-20 (fixed_small) or uses beta_0
  (fixed_large), L_0's discretized decoder follows improved-diffusion: the clipped
  posterior log-variance, log beta-tilde_1 (Nichol & Dhariwal 2021, their
  ``posterior_log_variance_clipped``), so bits/dim are comparable with published ones.
- ``clip_sample`` / ``clip_sample_range``: the predicted x_0 is clipped to [-r, r] where our
  maths clips it (sampling, the bound), and /decode clips as the scheduler's loop does.
- DDIM: the timesteps of ``DDIMScheduler.set_timesteps`` (``timestep_spacing``,
  ``steps_offset``) and its step to t - T // S with the model's own eps
  (:class:`~models.diffusion.timesteps.DDIMTimesteps`).

Refused at load, with the file, key and value: dynamic ``thresholding``,
``rescale_betas_zero_snr``, an unknown ``timestep_spacing``, ``variance_type`` "learned"
(diffusers' step takes that output as the variance itself, undefined where it is negative),
class-conditional UNets, latent pipelines (a VAE/VQ-VAE in ``model_index.json``) and any
other network or scheduler class. Nothing reaches a hub: the folder is read from disk only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.core.checkpoints import CheckpointError, check_state_matches, read_json
from models.core.config import DiffusionConfig
from models.diffusion.ddpm import DDPM
from models.diffusion.gaussian import GaussianDiffusion
from models.diffusion.timesteps import DDIMTimesteps

# Offline: a diffusers folder is read from disk; nothing may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

MODEL_INDEX = "model_index.json"
UNET_CONFIG = Path("unet") / "config.json"
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
SAFETENSORS_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
BIN_WEIGHTS = Path("unet") / "diffusion_pytorch_model.bin"
PIPELINE_PARTS = {"unet", "scheduler"}
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
VARIANCES = {  # diffusers variance_type -> ours
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "learned_range",
}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
IMAGE_CHANNELS, MIN_SIZE, MAX_SIZE = (1, 3), 8, 256  # 256: google/ddpm-cat-256
# model_index.json parts of latent pipelines (diffusers' component names, not our kinds)
LATENT_AUTOENCODERS = frozenset({"vae", "vqvae", "vqgan"})


class RefusedSettingError(CheckpointError):
    """A diffusers folder asks for something with no defined bound or sampler here; the
    message names the file, the key and its value. The repository serves the other models."""

    def __init__(self, path: Path, key: str, value: Any, why: str) -> None:
        super().__init__(f"{path}: {key} = {json.dumps(value)} is refused: {why}")


def is_diffusers_folder(directory: Path) -> bool:
    """A pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``) or ``unet/`` +
    ``scheduler/`` alone."""
    return (directory / "unet").is_dir() and (directory / "scheduler").is_dir()


@dataclass(frozen=True)
class DiffusersUNetConfig:
    """The UNet2DModel's config.json as diffusers reads it, and the image it reads."""

    image_channels: int
    image_size: int
    config: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class DiffusersScheduler:
    """The scheduler settings that decide the maths, diffusers' defaults filled in."""

    class_name: str
    num_train_timesteps: int
    beta_schedule: str
    trained_betas: bool
    prediction_type: str
    variance_type: str
    clip_sample: bool
    clip_sample_range: float
    timestep_spacing: str
    steps_offset: int
    set_alpha_to_one: bool


@dataclass(frozen=True)
class DiffusersDDPMConfig:
    """What a diffusers folder rebuilds: ``unet`` and ``diffusion`` are what our DDPM kind
    reads (image shape, T, variance type); ``scheduler`` the source settings."""

    unet: DiffusersUNetConfig
    diffusion: DiffusionConfig
    scheduler: DiffusersScheduler


def read_diffusers_config(directory: Path) -> DiffusersDDPMConfig:
    """The folder's config, or :class:`RefusedSettingError` for what we cannot serve."""
    _check_pipeline(directory)
    unet = _read_unet(directory / UNET_CONFIG)
    scheduler = _read_scheduler(directory / SCHEDULER_CONFIG)
    channels = unet.image_channels
    expected = 2 * channels if scheduler.variance_type == "learned_range" else channels
    if unet.config.get("out_channels", channels) != expected:
        raise RefusedSettingError(
            directory / UNET_CONFIG,
            "out_channels",
            unet.config.get("out_channels"),
            f"variance_type {scheduler.variance_type!r} needs {expected} output channels for "
            f"{channels} input channels",
        )
    diffusion = DiffusionConfig(
        num_timesteps=scheduler.num_train_timesteps,
        schedule="linear",  # unused: the chain is built from the scheduler's own betas
        variance=VARIANCES[scheduler.variance_type],  # type: ignore[arg-type]
        vlb_weight=0.0,
    )
    return DiffusersDDPMConfig(unet, diffusion, scheduler)


def _check_pipeline(directory: Path) -> None:
    path = directory / MODEL_INDEX
    if not path.is_file():
        return
    index = read_json(path)
    for key, value in index.items():
        if key.startswith("_") or key in PIPELINE_PARTS or value in (None, [None, None]):
            continue
        why = (
            "a latent pipeline: its bound would be on the autoencoder's latents, not on pixels"
            if key in LATENT_AUTOENCODERS
            else "a pixel-space DDPM pipeline holds only a unet and a scheduler"
        )
        raise RefusedSettingError(path, key, value, why)


def _read_unet(path: Path) -> DiffusersUNetConfig:
    config = read_json(path)
    if config.get("_class_name") != "UNet2DModel":
        raise RefusedSettingError(
            path, "_class_name", config.get("_class_name"), "only UNet2DModel is served"
        )
    for key in ("num_class_embeds", "class_embed_type"):
        if config.get(key) is not None:
            raise RefusedSettingError(
                path,
                key,
                config[key],
                "class-conditional UNets have no unconditional bound or sampler here",
            )
    if config.get("time_embedding_type", "positional") != "positional":
        raise RefusedSettingError(
            path,
            "time_embedding_type",
            config["time_embedding_type"],
            "a Fourier-embedded UNet is a score-SDE model, not a DDPM",
        )
    channels = config.get("in_channels", 3)
    if channels not in IMAGE_CHANNELS:
        why = "images are 1 (L) or 3 (RGB) channels"
        raise RefusedSettingError(path, "in_channels", channels, why)
    size = config.get("sample_size")
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise RefusedSettingError(
            path, "sample_size", size, f"a square image of {MIN_SIZE}..{MAX_SIZE} pixels is served"
        )
    return DiffusersUNetConfig(channels, size, config)


def _read_scheduler(path: Path) -> DiffusersScheduler:
    import diffusers

    raw = read_json(path)
    class_name = raw.get("_class_name")
    if class_name not in SCHEDULERS:
        why = f"only {' and '.join(SCHEDULERS)}"
        raise RefusedSettingError(path, "_class_name", class_name, why)
    own = getattr(diffusers, class_name).from_config(raw).config  # diffusers' defaults
    ddim = diffusers.DDIMScheduler.from_config(raw).config  # what DDIM runs with
    refusals = {
        "thresholding": (
            own.get("thresholding", False),
            "dynamic thresholding has no Gaussian reverse step, so no bound",
        ),
        "rescale_betas_zero_snr": (
            own.get("rescale_betas_zero_snr", False),
            "alpha-bar_T = 0 makes L_T and the first step undefined",
        ),
    }
    for key, (value, why) in refusals.items():
        if value:
            raise RefusedSettingError(path, key, value, why)
    checks = {
        "beta_schedule": (own.beta_schedule, BETA_SCHEDULES),
        "prediction_type": (own.prediction_type, PREDICTIONS),
        "timestep_spacing": (ddim.timestep_spacing, SPACINGS),
        "variance_type": (own.get("variance_type", "fixed_small"), tuple(VARIANCES)),
    }
    for key, (value, allowed) in checks.items():
        if key == "beta_schedule" and own.trained_betas is not None:
            continue
        if value not in allowed:
            why = f"served: {', '.join(allowed)}"
            if value == "learned":
                why = (
                    "diffusers' step takes this output as the variance itself (its square "
                    "root scales the noise), undefined where it is negative; " + why
                )
            raise RefusedSettingError(path, key, value, why)
    return DiffusersScheduler(
        class_name=class_name,
        num_train_timesteps=int(own.num_train_timesteps),
        beta_schedule="trained_betas" if own.trained_betas is not None else own.beta_schedule,
        trained_betas=own.trained_betas is not None,
        prediction_type=own.prediction_type,
        variance_type=own.get("variance_type", "fixed_small"),
        clip_sample=bool(own.clip_sample),
        clip_sample_range=float(own.clip_sample_range),
        timestep_spacing=ddim.timestep_spacing,
        steps_offset=int(ddim.steps_offset),
        set_alpha_to_one=bool(ddim.set_alpha_to_one),
    )


def scheduler_betas(directory: Path, scheduler: DiffusersScheduler) -> torch.Tensor:
    """The betas (T,) float64 of the alpha-bars the folder's scheduler class builds:
    beta_t = 1 - abar_t / abar_{t-1}, so that our float64 chain has exactly the scheduler's
    own (float32) alphas_cumprod, which every one of its steps reads."""
    import diffusers

    raw = read_json(directory / SCHEDULER_CONFIG)
    alphas_cumprod = getattr(diffusers, scheduler.class_name).from_config(raw).alphas_cumprod
    alphas_cumprod = alphas_cumprod.detach().to(torch.float64)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return 1.0 - alphas_cumprod / previous


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` with our network's call signature and output:
    (x_t (B, C, H, W), t (B,)) -> eps (B, C, H, W), then the variance values (B, C, H, W)
    when the scheduler learns them.

    ``sample`` predicts x_0: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t) (Ho et al.
    Eq. 4 solved for eps); ``v_prediction`` predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0:
    eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t (Salimans & Ho 2022, Sec. 4).
    """

    def __init__(self, unet: nn.Module, prediction_type: str, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = self.unet(x_t, t).sample
        if self.prediction_type == "epsilon":
            return output
        channels = x_t.shape[1]
        prediction, rest = output[:, :channels], output[:, channels:]
        abar = self.alphas_cumprod.to(t.device)[t].reshape(-1, 1, 1, 1)
        if self.prediction_type == "sample":
            eps = (x_t.double() - abar.sqrt() * prediction.double()) / (1 - abar).sqrt()
        else:
            eps = abar.sqrt() * prediction.double() + (1 - abar).sqrt() * x_t.double()
        return torch.cat([eps.to(output.dtype), rest], dim=1)


def weights_path(directory: Path) -> Path:
    """The UNet's weights: safetensors, else the .bin (read with weights_only=True)."""
    safetensors_path = directory / SAFETENSORS_WEIGHTS
    return safetensors_path if safetensors_path.is_file() else directory / BIN_WEIGHTS


def load_diffusers_ddpm(directory: Path, config: DiffusersDDPMConfig) -> DDPM:
    """The folder's DDPM with its weights loaded (strictly), in eval mode on the CPU."""
    from diffusers import UNet2DModel

    betas = scheduler_betas(directory, config.scheduler)
    scheduler = config.scheduler
    chain = GaussianDiffusion(
        config.diffusion,
        betas=betas,
        clip_range=scheduler.clip_sample_range if scheduler.clip_sample else None,
        ddim=DDIMTimesteps(
            spacing=scheduler.timestep_spacing,  # type: ignore[arg-type]
            steps_offset=scheduler.steps_offset,
            final_alpha_bar_is_one=scheduler.set_alpha_to_one,
            keep_model_eps=True,
            decode_clips=scheduler.clip_sample,
        ),
    )
    unet = UNet2DModel.from_config(config.unet.config)
    path = weights_path(directory)
    state = _read_unet_weights(path)
    check_state_matches(path, unet.state_dict(), state)
    unet.load_state_dict(state, strict=True)
    network = DiffusersUNet(unet, scheduler.prediction_type, chain.alphas_cumprod)
    return DDPM(config, unet=network, diffusion=chain).eval()


def _read_unet_weights(path: Path) -> dict[str, torch.Tensor]:
    from models.core.checkpoints import read_safetensors

    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path.parent}: missing diffusion_pytorch_model.safetensors (or .bin)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses pickled code: say so, with the file
        raise CheckpointError(f"{path}: not a tensors-only state dict ({error})") from error


def describe_source(config: DiffusersDDPMConfig) -> dict[str, Any]:
    """What /models shows of where the model came from."""
    from dataclasses import asdict

    unet = config.unet.config
    return {
        "format": "diffusers",
        "unet": {
            "class": "UNet2DModel",
            "sample_size": config.unet.image_size,
            "block_out_channels": list(unet.get("block_out_channels", [])),
        },
        "scheduler": asdict(config.scheduler),
        "served_variance": config.diffusion.variance,
    }
