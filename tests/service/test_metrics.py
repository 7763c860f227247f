"""service/metrics.py on its own: what the CUDA gauges read (no GPU needed: torch.cuda's
memory counters are stood in for), and the calibration gauges."""

import pytest
import torch

from service import metrics


@pytest.fixture
def fake_cuda_memory(monkeypatch):
    """torch.cuda's counters as a tiny allocator: held bytes, and the peak since a reset."""
    state = {"held": 0, "peak": 0}

    def hold(nbytes):
        state["held"] = nbytes
        state["peak"] = max(state["peak"], nbytes)

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["held"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    monkeypatch.setattr(
        torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(peak=state["held"])
    )
    return hold


def _gauge(gauge, device):
    return gauge.labels(device)._value.get()


def test_peak_gauge_shows_each_calls_working_set_the_allocated_gauge_misses(fake_cuda_memory):
    fake_cuda_memory(100)  # the weights
    metrics.observe_cuda_memory("cuda:7")
    fake_cuda_memory(900)  # a batch's activations...
    fake_cuda_memory(100)  # ...freed before the call is observed
    metrics.observe_cuda_memory("cuda:7")
    assert _gauge(metrics.CUDA_MEMORY_BYTES, "cuda:7") == 100
    assert _gauge(metrics.CUDA_PEAK_MEMORY_BYTES, "cuda:7") == 900
    fake_cuda_memory(300)  # a smaller next call: the peak is that call's, not the all-time one
    fake_cuda_memory(100)
    metrics.observe_cuda_memory("cuda:7")
    assert _gauge(metrics.CUDA_PEAK_MEMORY_BYTES, "cuda:7") == 300


def test_no_cuda_gauge_is_set_on_cpu(fake_cuda_memory):
    fake_cuda_memory(500)
    metrics.observe_cuda_memory("cpu")
    labelled = {labels for labels in metrics.CUDA_PEAK_MEMORY_BYTES._metrics}
    assert ("cpu",) not in labelled


def test_calibration_gauges_hold_the_figures_set_for_each_model_and_method():
    metrics.set_calibration("a", "elbo", 3.25, 0.9, 2000)
    metrics.set_calibration("a", "iwae", 3.0, 0.8, 50)
    assert metrics.CALIBRATION_MEAN_BITS_PER_DIM.labels("a", "elbo")._value.get() == 3.25
    assert metrics.CALIBRATION_STD_BITS_PER_DIM.labels("a", "elbo")._value.get() == 0.9
    assert metrics.CALIBRATION_IMAGES.labels("a", "elbo")._value.get() == 2000
    assert metrics.CALIBRATION_MEAN_BITS_PER_DIM.labels("a", "iwae")._value.get() == 3.0
    assert metrics.CALIBRATION_IMAGES.labels("a", "iwae")._value.get() == 50
