"""Checkpoint directories (models/core/checkpoints.py): round trips, formats, error messages."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

from models.core.checkpoints import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
    write_model_card,
)
from models.core.config import DDPMConfig, DiffusionConfig, UNetConfig, VAEConfig, config_from_dict
from models.diffusion.ddpm import DDPM
from models.vae.model import VAE

TINY_VAE = VAEConfig(latent_dim=4, channels=(8, 16), num_res_blocks=1, num_mixtures=2)
TINY_DDPM = DDPMConfig(
    UNetConfig(
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(14,),
        num_heads=2,
    ),
    DiffusionConfig(num_timesteps=20, variance="learned_range"),
)


def build(kind: str) -> VAE | DDPM:
    torch.manual_seed(0)
    model = VAE(TINY_VAE) if kind == "vae" else DDPM(TINY_DDPM)
    # Fresh DDPM output projections are zero-initialised; perturb every weight so that a
    # checkpoint that silently kept fresh weights could not produce the same outputs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def outputs(model: VAE | DDPM) -> list[torch.Tensor]:
    """Deterministic outputs that depend on every weight of the model."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 28, 28, generator=g) * 2 - 1
    with torch.no_grad():
        if isinstance(model, VAE):
            posterior = model.encode(x)
            decoded = model.decode(posterior.mean)
            return [
                posterior.mean,
                posterior.logvar,
                decoded.logit_weights,
                decoded.means,
                decoded.log_scales,
            ]
        return [model(x, torch.tensor([0, 13]))]


@pytest.fixture(params=["vae", "ddpm"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def vae_dir(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "vae", build("vae"))


def read_header(directory: Path) -> dict:
    return json.loads((directory / CONFIG_FILE).read_text())


def write_header(directory: Path, header: dict) -> None:
    (directory / CONFIG_FILE).write_text(json.dumps(header))


def load_error(directory: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    return str(info.value)


# --- round trips --------------------------------------------------------------------------


def test_saved_then_loaded_model_gives_identical_outputs(tmp_path, kind):
    model = build(kind).eval()
    save_checkpoint(tmp_path / "ckpt", model)

    checkpoint = load_checkpoint(tmp_path / "ckpt")

    assert checkpoint.kind == kind
    assert type(checkpoint.model) is type(model)
    for loaded, original in zip(outputs(checkpoint.model), outputs(model), strict=True):
        assert torch.equal(loaded, original)


def test_loaded_config_equals_the_saved_config(tmp_path, kind):
    model = build(kind)
    save_checkpoint(tmp_path / "ckpt", model)
    assert load_checkpoint(tmp_path / "ckpt").model.config == model.config


def test_model_card_round_trips(tmp_path):
    card = {"bits_per_dim": 3.25, "iwae_k": 5000, "notes": "toy", "per_class": [1.5, 2.0]}
    save_checkpoint(tmp_path / "ckpt", build("vae"), card=card)
    checkpoint = load_checkpoint(tmp_path / "ckpt")
    assert checkpoint.card == card
    assert json.loads((tmp_path / "ckpt" / CARD_FILE).read_text()) == card


def test_checkpoint_without_a_card_loads_with_an_empty_card(vae_dir):
    assert not (vae_dir / CARD_FILE).exists()
    assert load_checkpoint(vae_dir).card == {}


def test_loaded_model_is_in_eval_mode(tmp_path, kind):
    model = build(kind).train()
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_checkpoint(tmp_path / "ckpt").model
    assert not any(module.training for module in loaded.modules())


def test_save_leaves_only_the_checkpoint_files(tmp_path):
    save_checkpoint(tmp_path / "ckpt", build("vae"), card={"a": 1})
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == sorted([CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_weights_file_is_as_readable_as_the_config_under_any_umask(tmp_path, umask):
    # safetensors alone writes 0600: a container's user could not read a mounted checkpoint.
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ckpt", build("vae"))
    finally:
        os.umask(previous)
    files = (CONFIG_FILE, WEIGHTS_FILE)
    modes = {name: (tmp_path / "ckpt" / name).stat().st_mode & 0o777 for name in files}
    assert modes == {CONFIG_FILE: 0o666 & ~umask, WEIGHTS_FILE: 0o666 & ~umask}


# --- file formats -------------------------------------------------------------------------


def test_weights_file_follows_the_safetensors_layout(tmp_path, kind):
    model = build(kind)
    path = save_checkpoint(tmp_path / "ckpt", model) / WEIGHTS_FILE
    raw = path.read_bytes()

    # safetensors: u64 little-endian header length, a JSON header, then raw tensor bytes.
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    header.pop("__metadata__", None)
    assert set(header) == set(model.state_dict())
    data_end = max(entry["data_offsets"][1] for entry in header.values())
    assert len(raw) == 8 + header_len + data_end
    assert not raw.startswith(b"PK")  # not torch.save's zip archive of pickles


def test_weights_file_loads_with_safetensors_alone(tmp_path, kind):
    model = build(kind)
    path = save_checkpoint(tmp_path / "ckpt", model) / WEIGHTS_FILE

    tensors = safetensors.torch.load_file(str(path))

    expected = model.state_dict()
    assert set(tensors) == set(expected)
    for name, tensor in tensors.items():
        assert torch.equal(tensor, expected[name]), name


def test_config_json_alone_rebuilds_the_model(tmp_path, kind):
    model = build(kind).eval()
    directory = save_checkpoint(tmp_path / "ckpt", model)

    header = json.loads((directory / CONFIG_FILE).read_text())

    assert header["kind"] == kind
    assert header["format_version"] == 1
    config_cls = VAEConfig if kind == "vae" else DDPMConfig
    model_cls = VAE if kind == "vae" else DDPM
    rebuilt = model_cls(config_from_dict(config_cls, header["config"]))
    rebuilt.load_state_dict(safetensors.torch.load_file(str(directory / WEIGHTS_FILE)))
    rebuilt.eval()
    for a, b in zip(outputs(rebuilt), outputs(model), strict=True):
        assert torch.equal(a, b)


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_missing_checkpoint_file_is_named_in_error(vae_dir, missing):
    (vae_dir / missing).unlink()
    message = load_error(vae_dir)
    assert str(vae_dir / missing) in message
    assert "missing" in message


def test_missing_checkpoint_directory_names_the_config_file(tmp_path):
    assert CONFIG_FILE in load_error(tmp_path / "absent")


@pytest.mark.parametrize("content", ["{not json", "", "\xff\xfe", "[1, 2, 3]"])
def test_corrupt_config_json_is_named_in_error(vae_dir, content):
    (vae_dir / CONFIG_FILE).write_bytes(content.encode("latin-1"))
    assert CONFIG_FILE in load_error(vae_dir)


def test_corrupt_model_card_is_named_in_error(vae_dir):
    (vae_dir / CARD_FILE).write_text("{oops")
    assert CARD_FILE in load_error(vae_dir)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "bad-header"])
def test_corrupt_weights_file_is_named_in_error(vae_dir, damage):
    path = vae_dir / WEIGHTS_FILE
    raw = path.read_bytes()
    damaged = {
        "garbage": bytes(range(256)) * 4,
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "bad-header": raw[:8] + b"{" * 16 + raw[24:],
    }[damage]
    path.write_bytes(damaged)
    message = load_error(vae_dir)
    assert WEIGHTS_FILE in message
    assert "safetensors" in message


def test_config_with_a_different_latent_dim_names_the_wrongly_shaped_tensor(vae_dir):
    header = read_header(vae_dir)
    header["config"]["latent_dim"] = 6
    write_header(vae_dir, header)

    message = load_error(vae_dir)

    assert WEIGHTS_FILE in message
    assert "wrong shape" in message
    # to_posterior maps to 2 * latent_dim: saved (8, flat), the config expects (12, flat).
    assert "to_posterior.weight (8, 3136) (config expects (12, 3136))" in message
    assert "from_latent.weight" in message


def _rewrite_weights(directory: Path, edit) -> None:
    path = directory / WEIGHTS_FILE
    tensors = safetensors.torch.load_file(str(path))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path))


def test_weights_missing_a_tensor_name_it(vae_dir):
    _rewrite_weights(vae_dir, lambda t: t.pop("to_posterior.bias"))
    message = load_error(vae_dir)
    assert "missing: to_posterior.bias" in message
    assert WEIGHTS_FILE in message


def test_weights_with_an_extra_tensor_name_it(vae_dir):
    _rewrite_weights(vae_dir, lambda t: t.update({"stowaway.weight": torch.zeros(3)}))
    message = load_error(vae_dir)
    assert "unexpected: stowaway.weight" in message


def test_ddpm_weights_in_a_vae_checkpoint_are_rejected(tmp_path):
    directory = save_checkpoint(tmp_path / "ckpt", build("vae"))
    ddpm_weights = {k: v.contiguous() for k, v in build("ddpm").state_dict().items()}
    safetensors.torch.save_file(ddpm_weights, str(directory / WEIGHTS_FILE))
    message = load_error(directory)
    assert "missing" in message and "unexpected" in message


@pytest.mark.parametrize("kind_value", ["gan", None, 3])
def test_unknown_model_kind_is_named_in_error(vae_dir, kind_value):
    header = read_header(vae_dir)
    header["kind"] = kind_value
    write_header(vae_dir, header)
    message = load_error(vae_dir)
    assert CONFIG_FILE in message
    assert "'kind'" in message and repr(kind_value) in message


def test_unsupported_format_version_is_named_in_error(vae_dir):
    header = read_header(vae_dir)
    header["format_version"] = 2
    write_header(vae_dir, header)
    assert "format_version 2" in load_error(vae_dir)


def test_unknown_config_field_is_named_in_error(vae_dir):
    header = read_header(vae_dir)
    header["config"]["colour_space"] = "rgb"
    write_header(vae_dir, header)
    message = load_error(vae_dir)
    assert CONFIG_FILE in message and "colour_space" in message


@pytest.mark.parametrize(
    "field, value",
    [("latent_dim", "32"), ("latent_dim", 4.5), ("channels", 8), ("num_mixtures", None)],
)
def test_wrongly_typed_config_field_is_named_in_error(vae_dir, field, value):
    header = read_header(vae_dir)
    header["config"][field] = value
    write_header(vae_dir, header)
    message = load_error(vae_dir)
    assert CONFIG_FILE in message and f"VAEConfig.{field}" in message


def test_wrongly_typed_nested_ddpm_field_is_named_in_error(tmp_path):
    directory = save_checkpoint(tmp_path / "ckpt", build("ddpm"))
    header = read_header(directory)
    header["config"]["diffusion"]["schedule"] = "quadratic"
    write_header(directory, header)
    message = load_error(directory)
    assert "DiffusionConfig.schedule" in message and "quadratic" in message


def test_invalid_config_value_is_named_in_error(vae_dir):
    header = read_header(vae_dir)
    header["config"]["num_mixtures"] = 0
    write_header(vae_dir, header)
    assert "num_mixtures" in load_error(vae_dir)


def test_saving_new_weights_without_a_card_removes_the_stale_card(tmp_path):
    from models.core.checkpoints import CARD_FILE, save_checkpoint
    from models.core.config import VAEConfig
    from models.vae.model import VAE

    model = VAE(VAEConfig(latent_dim=4, channels=(8, 16)))
    save_checkpoint(tmp_path, model, card={"bits_per_dim": 3.9})
    assert (tmp_path / CARD_FILE).exists()
    save_checkpoint(tmp_path, model)
    assert not (tmp_path / CARD_FILE).exists()


def test_float16_export_stores_rounded_parameters_and_keeps_buffers_exact(tmp_path, kind):
    model = build(kind)
    save_checkpoint(tmp_path, model, parameter_dtype=torch.float16)
    stored = safetensors.torch.load_file(str(tmp_path / WEIGHTS_FILE))
    parameter_names = {name for name, _ in model.named_parameters()}
    for name, tensor in model.state_dict().items():
        if name in parameter_names:
            assert stored[name].dtype == torch.float16, name
            assert torch.equal(stored[name], tensor.to(torch.float16)), name
        else:  # schedules and other buffers keep their precision
            assert stored[name].dtype == tensor.dtype and torch.equal(stored[name], tensor), name
    loaded = load_checkpoint(tmp_path).model
    rounded = build(kind)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.float16).float())
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for got, expected in zip(outputs(loaded), outputs(rounded.eval()), strict=True):
        assert torch.equal(got, expected)


def test_weights_other_than_the_ones_the_card_measured_are_refused(vae_dir):
    card = {"checkpoint": {"weights_sha256": weights_sha256(vae_dir / WEIGHTS_FILE)}}
    write_model_card(vae_dir, card)
    assert load_checkpoint(vae_dir).card == card
    save_checkpoint(vae_dir / "other", build("vae"), parameter_dtype=torch.float16)
    (vae_dir / WEIGHTS_FILE).write_bytes((vae_dir / "other" / WEIGHTS_FILE).read_bytes())
    message = load_error(vae_dir)
    assert str(vae_dir / WEIGHTS_FILE) in message and "SHA-256" in message and CARD_FILE in message
