"""How the settings share a machine's cores among model calls."""

import re
from pathlib import Path

import pytest

from service.settings import Settings, available_cores


def test_cpu_runs_one_lane_per_core_with_one_thread_each_by_default():
    settings = Settings()
    assert settings.lanes("cpu") == available_cores()
    assert settings.threads_per_call("cpu") == 1


def test_a_gpu_runs_one_lane_and_keeps_torchs_threads():
    settings = Settings()
    assert settings.lanes("cuda:0") == 1
    assert settings.threads_per_call("cuda") is None


def test_fewer_lanes_share_the_cores_out():
    settings = Settings(model_lanes=1)
    assert settings.threads_per_call("cpu") == available_cores()


def test_environment_overrides_lanes_and_threads(monkeypatch):
    monkeypatch.setenv("ELBO_SERVE_MODEL_LANES", "3")
    monkeypatch.setenv("ELBO_SERVE_TORCH_THREADS", "2")
    settings = Settings.from_env()
    assert (settings.lanes("cpu"), settings.threads_per_call("cpu")) == (3, 2)


def test_a_bad_flag_names_the_variable(monkeypatch):
    monkeypatch.setenv("ELBO_SERVE_BATCHING", "sometimes")
    with pytest.raises(ValueError, match="ELBO_SERVE_BATCHING"):
        Settings.from_env()


def test_a_gpu_draws_images_in_larger_fixed_chunks_than_a_cpu(monkeypatch):
    settings = Settings()
    assert settings.chunk_rows("cpu") == 4
    assert settings.chunk_rows("cuda:0") == 64
    monkeypatch.setenv("ELBO_SERVE_CUDA_IMAGE_CHUNK_ROWS", "0")
    monkeypatch.setenv("ELBO_SERVE_IMAGE_CHUNK_ROWS", "8")
    settings = Settings.from_env()
    assert (settings.chunk_rows("cpu"), settings.chunk_rows("cuda")) == (8, None)


def test_the_body_limit_is_read_from_the_environment(monkeypatch):
    assert Settings.from_env().max_body_bytes == Settings().max_body_bytes == 16 * 1024 * 1024
    monkeypatch.setenv("ELBO_SERVE_MAX_BODY_BYTES", "1000")
    assert Settings.from_env().max_body_bytes == 1000
    monkeypatch.setenv("ELBO_SERVE_MAX_BODY_BYTES", "0")
    with pytest.raises(ValueError, match="ELBO_SERVE_MAX_BODY_BYTES"):
        Settings.from_env()


def test_the_default_body_limit_fits_the_largest_legitimate_request():
    """/decode of MAX_IMAGES DDPM latents of the longest float32 reprs, as /encode returns
    them, and MAX_IMAGES images as nested arrays of 255s, fit with room to spare."""
    import json

    import numpy as np

    from service.schemas import MAX_IMAGES

    longest = float(np.float32(-1.2345678e-05))  # repr: -1.2345678442216013e-05
    latent = [[[longest] * 28] * 28]  # (C, H, W) of the bundled DDPM
    decode = {"model": "ddpm", "latents": [latent] * MAX_IMAGES, "steps": 1000}
    likelihood = {"model": "vae", "images": [[[[255] * 28] * 28]] * MAX_IMAGES}
    largest = max(len(json.dumps(body)) for body in (decode, likelihood))
    assert largest * 3 < Settings().max_body_bytes


def test_cpu_speed_mode_is_measured_by_default_and_forced_from_the_environment(monkeypatch):
    from models.nn.acceleration import Acceleration, native_bf16_supported

    assert Settings.from_env().acceleration("cpu") is None  # auto: measured at start-up
    monkeypatch.setenv("ELBO_SERVE_CHANNELS_LAST", "true")
    assert Settings.from_env().acceleration("cpu") == Acceleration(channels_last=True)
    monkeypatch.setenv("ELBO_SERVE_CHANNELS_LAST", "false")
    assert Settings.from_env().acceleration("cpu") == Acceleration()
    for name in ("CHANNELS_LAST", "COMPILE", "BF16_AUTOCAST"):
        monkeypatch.setenv(f"ELBO_SERVE_{name}", "true")
    settings = Settings.from_env()
    assert settings.acceleration("cpu") == Acceleration(
        channels_last=True, compile=True, bf16_autocast=native_bf16_supported()
    )
    assert settings.acceleration("cuda") == Acceleration()
    monkeypatch.setenv("ELBO_SERVE_CHANNELS_LAST", "sometimes")
    with pytest.raises(ValueError, match="CHANNELS_LAST must be one of auto, true, false"):
        Settings.from_env()


def test_bounds_call_the_network_on_fewer_rows_on_a_cpu_than_on_a_gpu(monkeypatch):
    """Shorter calls on a CPU: a long bound hands its lane to cheaper work between calls."""
    settings = Settings()
    assert settings.rows_per_bound_call("cpu") < settings.rows_per_bound_call("cuda")
    monkeypatch.setenv("ELBO_SERVE_BOUND_CALL_ROWS", "8")
    assert Settings.from_env().rows_per_bound_call("cpu") == 8


# The model repository ----------------------------------------------------------------------

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


def test_the_default_repository_serves_the_bundled_models_by_their_names(monkeypatch):
    for variable in ("MODEL_DIR", "MODELS", "VAE_CHECKPOINT", "DDPM_CHECKPOINT"):
        monkeypatch.delenv(f"ELBO_SERVE_{variable}", raising=False)
    served = Settings.from_env().served_directories()
    assert served == {"ddpm": CHECKPOINTS / "ddpm", "vae": CHECKPOINTS / "vae"}


def test_a_model_directory_serves_every_servable_checkpoint_in_it(tmp_path, monkeypatch):
    (tmp_path / "march").symlink_to(CHECKPOINTS / "ddpm")
    (tmp_path / "april").symlink_to(CHECKPOINTS / "ddpm")
    (tmp_path / "features").symlink_to(CHECKPOINTS / "classifier")
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("ELBO_SERVE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("ELBO_SERVE_MODELS", f"extra={CHECKPOINTS / 'vae'}")
    monkeypatch.delenv("ELBO_SERVE_VAE_CHECKPOINT", raising=False)
    served = Settings.from_env().served_directories()
    assert served == {
        "april": tmp_path / "april",
        "march": tmp_path / "march",
        "extra": CHECKPOINTS / "vae",
    }


def test_the_older_checkpoint_variables_name_vae_and_ddpm(tmp_path, monkeypatch):
    monkeypatch.setenv("ELBO_SERVE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("ELBO_SERVE_VAE_CHECKPOINT", str(CHECKPOINTS / "vae"))
    monkeypatch.delenv("ELBO_SERVE_DDPM_CHECKPOINT", raising=False)
    monkeypatch.delenv("ELBO_SERVE_MODELS", raising=False)
    assert Settings.from_env().served_directories() == {"vae": CHECKPOINTS / "vae"}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ELBO_SERVE_MODELS", "just-a-path", "expected name=path entries, got 'just-a-path'"),
        ("ELBO_SERVE_MODELS", "bad name=/x", "model name 'bad name'"),
        ("ELBO_SERVE_MODEL_DIR", "/no/such/dir", "/no/such/dir: the model directory does not"),
    ],
)
def test_a_bad_repository_setting_says_what_is_wrong(monkeypatch, variable, value, message):
    monkeypatch.delenv("ELBO_SERVE_MODELS", raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env().served_directories()


def test_an_empty_repository_is_an_error_not_a_service_with_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ELBO_SERVE_MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("ELBO_SERVE_MODELS", raising=False)
    for variable in ("VAE_CHECKPOINT", "DDPM_CHECKPOINT"):
        monkeypatch.delenv(f"ELBO_SERVE_{variable}", raising=False)
    with pytest.raises(ValueError, match="no servable checkpoints in"):
        Settings.from_env().served_directories()
