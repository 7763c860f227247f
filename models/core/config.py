"""Frozen configuration dataclasses, saved inside every checkpoint as JSON.

A checkpoint's ``config.json`` rebuilds its model with no other input, so every field that
changes a tensor's shape or the maths lives here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

ScheduleName = Literal["linear", "cosine"]
VarianceType = Literal["fixed_small", "fixed_large", "learned_range"]
ExportDType = Literal["float32", "float16"]

# The images a servable model (VAE, DDPM) may read and write: grayscale ('L') or RGB, square,
# from 8x8 (small enough that a CPU serves them) to 64x64 (still an 8-bit image in the usual
# sense). Bounds are summed over D = C*H*W dimensions; bits/dim divide by that D.
IMAGE_CHANNELS = (1, 3)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 64


@dataclass(frozen=True)
class VAEConfig:
    """Convolutional VAE with a discretized-logistic-mixture decoder (Salimans et al. 2017)."""

    image_channels: int = 1
    image_size: int = 28
    latent_dim: int = 32
    # Channels per resolution level; each level after the first halves the resolution.
    channels: tuple[int, ...] = (32, 64)
    num_res_blocks: int = 1
    # Components of the per-pixel discretized logistic mixture in p(x|z).
    num_mixtures: int = 1

    def __post_init__(self) -> None:
        _require_servable_image(self.image_channels, self.image_size)
        _require(self.latent_dim >= 1, "latent_dim must be >= 1")
        _require(len(self.channels) >= 1, "channels must name at least one level")
        _require(all(c >= 1 for c in self.channels), "channels must all be >= 1")
        _require(self.num_res_blocks >= 0, "num_res_blocks must be >= 0")
        _require(self.num_mixtures >= 1, "num_mixtures must be >= 1")
        _require(
            self.image_size % 2 ** (len(self.channels) - 1) == 0,
            f"image_size {self.image_size} must be divisible by 2**(levels-1)",
        )


@dataclass(frozen=True)
class UNetConfig:
    """Epsilon-prediction UNet (Ho et al. 2020, Appendix B, scaled down)."""

    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    # Feature-map sizes (in pixels) at which self-attention blocks are inserted; each must be
    # one of ``resolutions`` (a size the network never reaches is a ConfigError, not a no-op).
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _require_servable_image(self.image_channels, self.image_size)
        _require(self.base_channels >= 1, "base_channels must be >= 1")
        _require(len(self.channel_mults) >= 1, "channel_mults must name at least one level")
        _require(all(m >= 1 for m in self.channel_mults), "channel_mults must all be >= 1")
        _require(self.num_res_blocks >= 1, "num_res_blocks must be >= 1")
        _require(self.num_heads >= 1, "num_heads must be >= 1")
        _require(
            all(self.base_channels * m % self.num_heads == 0 for m in self.channel_mults),
            f"num_heads {self.num_heads} must divide every level's channel count",
        )
        _require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _require(
            self.image_size % 2 ** (len(self.channel_mults) - 1) == 0,
            f"image_size {self.image_size} must be divisible by 2**(levels-1)",
        )
        reached = self.resolutions
        never = [r for r in self.attention_resolutions if r not in reached]
        _require(
            not never,
            f"attention_resolutions {never} are never reached: a {self.image_size}x"
            f"{self.image_size} UNet with {len(self.channel_mults)} levels runs at "
            f"{list(reached)} (the middle block always attends); name some of those, or ()",
        )

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map sizes of the levels, from the input's down to the middle block's."""
        return tuple(self.image_size // 2**level for level in range(len(self.channel_mults)))


@dataclass(frozen=True)
class DiffusionConfig:
    """Gaussian diffusion process (Ho et al. 2020; Nichol & Dhariwal 2021)."""

    num_timesteps: int = 1000
    schedule: ScheduleName = "linear"
    # fixed_small: sigma_t^2 = beta-tilde_t; fixed_large: beta_t; learned_range: the
    # log-space interpolation between them predicted by the network (Nichol & Dhariwal Eq. 15).
    variance: VarianceType = "fixed_small"
    # lambda of L_hybrid = L_simple + lambda * L_vlb (Nichol & Dhariwal Eq. 16).
    vlb_weight: float = 0.001

    def __post_init__(self) -> None:
        _require(self.num_timesteps >= 2, "num_timesteps must be >= 2")
        _require(self.vlb_weight >= 0.0, "vlb_weight must be >= 0")
        _require(self.schedule in ("linear", "cosine"), f"unknown schedule {self.schedule!r}")
        _require(
            self.variance in ("fixed_small", "fixed_large", "learned_range"),
            f"unknown variance type {self.variance!r}",
        )

    @property
    def learns_variance(self) -> bool:
        return self.variance == "learned_range"


@dataclass(frozen=True)
class DDPMConfig:
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by the VAE and DDPM training loops."""

    steps: int = 10_000
    batch_size: int = 64
    learning_rate: float = 2e-4
    warmup_steps: int = 500
    grad_clip_norm: float = 1.0
    # Exponential moving average of the weights; the exported DDPM uses the EMA copy.
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    # Precision of the exported parameters: float16 halves the file (the model card then
    # measures the rounded weights); training itself always runs in float32.
    export_dtype: ExportDType = "float32"
    # bf16 autocast of the forward pass (matmuls and convolutions; losses stay float32):
    # about twice the images per second on a GPU's tensor cores.
    autocast_bf16: bool = False

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "steps must be >= 1")
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.learning_rate > 0, "learning_rate must be > 0")
        _require(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _require(0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)")
        _require(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        _require(self.log_every >= 1, "log_every must be >= 1")


@dataclass(frozen=True)
class ClassifierConfig:
    """Small CNN classifier whose penultimate activations serve a Fréchet distance.

    Each entry of ``channels`` is one conv3x3 -> GroupNorm -> ReLU -> maxpool2 level; the
    flattened maps go through a linear layer to ``feature_dim`` (ReLU), then to the logits.
    """

    image_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (32, 64)
    norm_groups: int = 8
    feature_dim: int = 128
    num_classes: int = 10

    def __post_init__(self) -> None:
        _require(self.image_channels >= 1, "image_channels must be >= 1")
        _require(self.image_size >= 1, "image_size must be >= 1")
        _require(len(self.channels) >= 1, "channels must name at least one level")
        _require(all(c >= 1 for c in self.channels), "channels must all be >= 1")
        _require(self.norm_groups >= 1, "norm_groups must be >= 1")
        _require(
            all(c % self.norm_groups == 0 for c in self.channels),
            f"norm_groups {self.norm_groups} must divide every level's channel count",
        )
        _require(self.feature_dim >= 1, "feature_dim must be >= 1")
        _require(self.num_classes >= 2, "num_classes must be >= 2")
        _require(
            self.image_size % 2 ** len(self.channels) == 0,
            f"image_size {self.image_size} must be divisible by 2**levels",
        )


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Epoch-based optimisation of the classifier: AdamW with a cosine decay to zero."""

    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs must be >= 1")
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.learning_rate > 0, "learning_rate must be > 0")
        _require(self.weight_decay >= 0, "weight_decay must be >= 0")


class ConfigError(ValueError):
    """A configuration dictionary does not describe a valid config dataclass."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_servable_image(channels: int, size: int) -> None:
    _require(
        channels in IMAGE_CHANNELS,
        f"image_channels must be 1 (grayscale) or 3 (RGB), got {channels}",
    )
    _require(
        MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE,
        f"image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {size}",
    )


ConfigT = TypeVar("ConfigT")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
    """Rebuild ``cls`` from :func:`config_to_dict` output; unknown or ill-typed keys raise.

    JSON has no tuples, so list values become tuples where the field says so.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
    kwargs = {name: _coerce(cls.__name__, name, hints[name], value) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{cls.__name__}: {error}") from error


def _coerce(owner: str, name: str, hint: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin is tuple:
        element_type = typing.get_args(hint)[0]  # fields are homogeneous: tuple[T, ...]
        if not isinstance(value, list | tuple) or not all(
            _matches_scalar_type(item, element_type) for item in value
        ):
            raise ConfigError(
                f"{owner}.{name}: expected a list of {element_type.__name__}, got {value!r}"
            )
        return tuple(value)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{owner}.{name}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if hint in (int, float, bool, str) and not _matches_scalar_type(value, hint):
        raise ConfigError(f"{owner}.{name}: expected {hint.__name__}, got {value!r}")
    return value


def _matches_scalar_type(value: Any, hint: type) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; only a bool field accepts it
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)
