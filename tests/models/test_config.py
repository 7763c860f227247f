"""Config dataclasses and their dict/JSON form (models/core/config.py)."""

from __future__ import annotations

import json

import pytest

from models.core.config import (
    ConfigError,
    DDPMConfig,
    DiffusionConfig,
    UNetConfig,
    VAEConfig,
    config_from_dict,
    config_to_dict,
)

CONFIGS = [
    VAEConfig(),
    VAEConfig(image_channels=3, image_size=32, latent_dim=7, channels=(8, 16, 32), num_mixtures=5),
    UNetConfig(),
    UNetConfig(channel_mults=(1, 2, 3, 4), attention_resolutions=(14, 7), image_size=56),
    DiffusionConfig(),
    DiffusionConfig(
        num_timesteps=4000, schedule="cosine", variance="learned_range", vlb_weight=0.5
    ),
    DDPMConfig(),
    DDPMConfig(
        UNetConfig(
            base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=()
        ),
        DiffusionConfig(num_timesteps=20, variance="fixed_large"),
    ),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_config_round_trips_through_a_dict(config):
    assert config_from_dict(type(config), config_to_dict(config)) == config


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_config_round_trips_through_json_with_tuples_restored(config):
    data = json.loads(json.dumps(config_to_dict(config)))
    rebuilt = config_from_dict(type(config), data)
    assert rebuilt == config
    hash(rebuilt)  # frozen and built from tuples, not lists


def test_nested_ddpm_config_dict_is_plain_json_data():
    data = config_to_dict(DDPMConfig())
    assert isinstance(data["unet"], dict) and isinstance(data["diffusion"], dict)
    assert data["unet"]["channel_mults"] == (1, 2, 2)
    rebuilt = config_from_dict(DDPMConfig, json.loads(json.dumps(data)))
    assert isinstance(rebuilt.unet, UNetConfig)
    assert rebuilt.unet.channel_mults == (1, 2, 2)
    assert rebuilt.unet.attention_resolutions == (7,)


def test_missing_fields_take_their_defaults():
    assert config_from_dict(VAEConfig, {"latent_dim": 3}) == VAEConfig(latent_dim=3)
    assert config_from_dict(DDPMConfig, {}) == DDPMConfig()


def test_integer_is_accepted_for_a_float_field():
    assert config_from_dict(DiffusionConfig, {"vlb_weight": 1}).vlb_weight == 1


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: DiffusionConfig(schedule="quadratic"), "schedule"),  # type: ignore[arg-type]
        (lambda: DiffusionConfig(variance="huge"), "variance"),  # type: ignore[arg-type]
        (lambda: DiffusionConfig(num_timesteps=1), "num_timesteps"),
        (lambda: VAEConfig(num_mixtures=0), "num_mixtures"),
        (lambda: VAEConfig(latent_dim=0), "latent_dim"),
        (lambda: VAEConfig(image_channels=0), "image_channels"),
        (lambda: VAEConfig(channels=()), "channels"),
        (lambda: VAEConfig(image_size=30, channels=(8, 16, 32)), "image_size"),
        (lambda: UNetConfig(image_size=28, channel_mults=(1, 2, 2, 2)), "image_size"),
        (lambda: UNetConfig(base_channels=0), "base_channels"),
        (lambda: UNetConfig(channel_mults=()), "channel_mults"),
    ],
)
def test_invalid_value_raises_config_error_naming_the_field(build, field):
    with pytest.raises(ConfigError, match=field):
        build()


@pytest.mark.parametrize("cls", [VAEConfig, UNetConfig])
@pytest.mark.parametrize(
    "fields, message",
    [
        ({"image_channels": 2}, r"image_channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"),
        ({"image_channels": 4}, r"image_channels must be 1 \(grayscale\) or 3 \(RGB\), got 4"),
        ({"image_size": 4}, r"image_size must be in 8\.\.64, got 4"),
        ({"image_size": 128}, r"image_size must be in 8\.\.64, got 128"),
    ],
)
def test_servable_configs_refuse_images_outside_grayscale_or_rgb_8_to_64(cls, fields, message):
    with pytest.raises(ConfigError, match=message):
        cls(**fields)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(cls, fields)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 28, 32, 64])
def test_servable_configs_accept_grayscale_and_rgb_from_8_to_64(
    channels, size, tiny_vae_config, tiny_unet_config
):
    assert tiny_vae_config(channels, size).image_channels == channels
    assert tiny_unet_config(channels, size, attention_resolutions=(size // 2,)).image_size == size


def test_unet_resolutions_run_from_the_image_size_down_to_the_middle_block():
    assert UNetConfig().resolutions == (28, 14, 7)
    wide = UNetConfig(image_size=64, channel_mults=(1, 2, 2, 2), attention_resolutions=(8,))
    assert wide.resolutions == (64, 32, 16, 8)


def test_attention_at_a_resolution_the_unet_never_reaches_is_a_config_error():
    # The default attends at 7x7, which a 16x16 UNet (16, 8, 4) never reaches: silently no
    # attention at all was the old behaviour.
    with pytest.raises(
        ConfigError, match=r"attention_resolutions \[7\] are never reached.*\[16, 8, 4\]"
    ):
        UNetConfig(image_channels=3, image_size=16)
    assert UNetConfig(image_size=16, attention_resolutions=(8,)).attention_resolutions == (8,)
    assert UNetConfig(image_size=16, attention_resolutions=()).attention_resolutions == ()


@pytest.mark.parametrize(
    "cls, data, field",
    [
        (VAEConfig, {"channels": [8, "16"]}, "channels"),
        (VAEConfig, {"image_size": -28}, "image_size"),
        (UNetConfig, {"num_heads": 0}, "num_heads"),
        (UNetConfig, {"num_heads": 3}, "num_heads"),
        (UNetConfig, {"dropout": 1.5}, "dropout"),
        (UNetConfig, {"channel_mults": [1, 0]}, "channel_mults"),
    ],
)
def test_config_that_cannot_describe_a_model_raises_config_error(cls, data, field):
    with pytest.raises(ConfigError, match=field):
        config_from_dict(cls, data)
