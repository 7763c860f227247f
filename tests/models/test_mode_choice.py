"""The CPU mode chooser: the fastest admissible mode from measured timings, the bound check
that refuses a mode which moves the bound, and the cache that a restart reuses."""

import copy

import pytest
import torch

from models.core.config import VAEConfig
from models.nn.acceleration import Acceleration, bf16_autocast_usable
from models.nn.mode_choice import (
    FP32_CANDIDATES,
    REFERENCE,
    ModeChoice,
    acceleration_named,
    choose_mode,
    fastest_admissible,
    hot_calls,
    measure,
)
from models.vae.model import VAE

WITH_BF16 = FP32_CANDIDATES | {"bf16": Acceleration(bf16_autocast=True)}


def _tiny_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(image_size=8, latent_dim=4, channels=(8, 16), num_mixtures=2)).eval()


def _timings(seconds: dict, diffs: dict):
    """A ``timings`` function that reports the given figures and counts its calls."""

    def timings(model, calls, modes, repeats, budget_s):
        timings.calls += 1
        return {m: seconds[m] for m in modes}, {m: diffs[m] for m in modes}

    timings.calls = 0
    return timings


def test_the_fastest_mode_whose_bound_stays_within_the_tolerance_is_chosen():
    seconds = {
        "fp32_eager": {"sample": 1.0, "bound": 2.0},
        "channels_last": {"sample": 0.8, "bound": 1.6},  # 1.25x
        "bf16": {"sample": 0.5, "bound": 1.0},  # 2x, but it moves the bound
    }
    diffs = {"fp32_eager": 0.0, "channels_last": 3e-6, "bf16": 0.03}
    assert fastest_admissible(seconds, diffs, 1e-4) == "channels_last"
    assert fastest_admissible(seconds, diffs, 0.1) == "bf16"
    slower = seconds | {"channels_last": {"sample": 1.1, "bound": 2.1}}
    assert fastest_admissible(slower, diffs, 1e-4) == REFERENCE
    # within the noise margin float32 eager stays: 1% faster is not a reason to switch
    marginal = seconds | {"channels_last": {"sample": 0.99, "bound": 1.98}}
    assert fastest_admissible(marginal, diffs, 1e-4, min_speedup=1.03) == REFERENCE
    assert fastest_admissible(marginal, diffs, 1e-4, min_speedup=1.0) == "channels_last"


def test_the_speed_up_is_the_geometric_mean_over_the_hot_calls():
    choice = ModeChoice(
        "channels_last",
        "measured",
        {"fp32_eager": {"a": 1.0, "b": 1.0}, "channels_last": {"a": 0.5, "b": 2.0}},
        {},
        1e-4,
        None,
        0.0,
    )
    assert choice.speedups()["channels_last"] == pytest.approx(1.0)


@pytest.mark.skipif(not bf16_autocast_usable(), reason="torch has no CPU bf16 here")
def test_bf16_autocast_moves_a_real_bound_past_the_tolerance_and_is_refused_however_fast():
    vae = _tiny_vae()
    measured_seconds, diffs = measure(vae, hot_calls(vae, 4), WITH_BF16, repeats=1)
    assert diffs["fp32_eager"] == 0.0
    assert diffs["channels_last"] < 1e-4
    assert diffs["bf16"] > 1e-4  # bf16 rounds the networks' activations to 8 mantissa bits
    assert set(measured_seconds["bf16"]) == {"sample_b4", "elbo_b4"}
    favoured = {m: {"c": 1.0} for m in WITH_BF16} | {"bf16": {"c": 0.1}}
    choice = choose_mode(vae, lambda: None, WITH_BF16, None, "", timings=_timings(favoured, diffs))
    assert choice.mode != "bf16"


def test_the_probe_bound_is_the_same_on_every_call_for_each_kind(tiny_ddpm):
    for model in (_tiny_vae(), tiny_ddpm):
        calls = hot_calls(model, 2)
        first, again = calls.calls[calls.bound](model), calls.calls[calls.bound](model)
        assert first.shape == (2,) and torch.isfinite(first).all()
        assert torch.equal(first, again)  # fixed probe batch and fixed draws


def test_a_choice_is_cached_and_reused_for_the_same_machine_weights_and_candidates(tmp_path):
    vae = _tiny_vae()
    seconds = {m: {"c": 1.0} for m in WITH_BF16} | {"channels_last": {"c": 0.5}}
    diffs = {m: 0.0 for m in WITH_BF16}
    timings = _timings(seconds, diffs)

    def choose(model, modes=FP32_CANDIDATES, probe="rows=4"):
        return choose_mode(model, lambda: None, modes, tmp_path, probe, timings=timings)

    first = choose(vae)
    assert (first.mode, first.source, timings.calls) == ("channels_last", "measured", 1)
    again = choose(copy.deepcopy(vae))  # a restart: the same weights loaded again
    assert (again.mode, again.source, timings.calls) == ("channels_last", "cached", 1)
    assert again.seconds == first.seconds
    assert choose(vae, probe="rows=8").source == "measured"  # other hot calls
    assert choose(vae, modes=WITH_BF16).source == "measured"  # other candidates
    other = _tiny_vae()
    with torch.no_grad():
        next(other.parameters())[0].add_(1e-3)
    assert choose(other).source == "measured"  # other weights
    assert timings.calls == 4
    assert choose(other).source == "cached"
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # the machine as timed: its thread count
    try:
        assert choose(other).source == "measured"
    finally:
        torch.set_num_threads(threads)


def test_a_damaged_cache_file_is_measured_again(tmp_path):
    vae = _tiny_vae()
    timings = _timings({m: {"c": 1.0} for m in FP32_CANDIDATES}, dict.fromkeys(FP32_CANDIDATES, 0))
    choose_mode(vae, lambda: None, FP32_CANDIDATES, tmp_path, "", timings=timings)
    for path in tmp_path.glob("cpu_mode_*.json"):
        path.write_text("{not json")
    again = choose_mode(vae, lambda: None, FP32_CANDIDATES, tmp_path, "", timings=timings)
    assert (again.source, timings.calls) == ("measured", 2)


def test_mode_names_round_trip_to_their_options():
    for options in (Acceleration(), Acceleration(True, True), Acceleration(True, False, True)):
        assert acceleration_named(options.name) == options
    with pytest.raises(ValueError, match="unknown CPU mode"):
        acceleration_named("channels_first")
