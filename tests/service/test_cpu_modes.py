"""The service applies each model's CPU mode at load: the measured choice by default, the
setting's mode when one is forced, and reports it to the metrics."""

import copy
from types import SimpleNamespace

import torch

from models.core.config import VAEConfig
from models.vae.model import VAE
from service.cpu_modes import cpu_mode_info, serve_in_chosen_modes
from service.settings import Settings


class _Recorded:
    def __init__(self):
        self.modes = {}

    def set_cpu_mode(self, model, choice):
        self.modes[model] = choice


def _repository():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_size=8, latent_dim=4, channels=(8, 16), num_mixtures=2)).eval()
    return {"tiny": SimpleNamespace(model=vae)}


def _channels_last(model) -> bool:
    convolutions = [p for p in model.parameters() if p.ndim == 4]
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)


def test_a_forced_mode_is_served_unmeasured(tmp_path):
    repository, metrics = _repository(), _Recorded()
    settings = Settings(channels_last="true", cpu_mode_cache_dir=tmp_path)
    choices = serve_in_chosen_modes(repository, settings, "cpu", metrics)
    assert (choices["tiny"].mode, choices["tiny"].source) == ("channels_last", "forced")
    assert choices["tiny"].seconds == {} and not list(tmp_path.iterdir())
    assert _channels_last(repository["tiny"].model)
    assert metrics.modes == choices
    assert cpu_mode_info(choices["tiny"]).mode == "channels_last"


def test_auto_serves_the_measured_choice_and_a_restart_reads_it_back(tmp_path):
    repository, metrics = _repository(), _Recorded()
    pristine = copy.deepcopy(repository["tiny"].model)
    settings = Settings(cpu_mode_cache_dir=tmp_path)  # channels_last "auto"
    choice = serve_in_chosen_modes(repository, settings, "cpu", metrics)["tiny"]
    assert choice.source == "measured" and set(choice.seconds) == {"fp32_eager", "channels_last"}
    assert _channels_last(repository["tiny"].model) == (choice.mode == "channels_last")
    restarted = {"tiny": SimpleNamespace(model=pristine)}
    again = serve_in_chosen_modes(restarted, settings, "cpu", metrics)["tiny"]
    assert (again.source, again.mode) == ("cached", choice.mode)
    info = cpu_mode_info(again)
    assert info.machine.torch == torch.__version__ and info.speedup_over_fp32_eager


def test_a_gpu_has_no_cpu_mode(tmp_path):
    metrics = _Recorded()
    settings = Settings(cpu_mode_cache_dir=tmp_path)
    assert serve_in_chosen_modes(_repository(), settings, "cuda", metrics) == {}
    assert cpu_mode_info(None) is None and metrics.modes == {}
