"""How the settings share a machine's cores among model calls."""

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


def test_bounds_call_the_network_on_fewer_rows_on_a_cpu_than_on_a_gpu(monkeypatch):
    """Shorter calls on a CPU: a long bound hands its lane to cheaper work between calls."""
    settings = Settings()
    assert settings.rows_per_bound_call("cpu") < settings.rows_per_bound_call("cuda")
    monkeypatch.setenv("ELBO_SERVE_BOUND_CALL_ROWS", "8")
    assert Settings.from_env().rows_per_bound_call("cpu") == 8
