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
