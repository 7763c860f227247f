"""The registry's option handling: defaults, refused options, and ranges set by the model."""

from __future__ import annotations

import pytest
import torch

from models.kinds import OptionError, kind_of


@pytest.fixture(scope="module")
def ddpm(tiny_ddpm_config):
    from models.diffusion.ddpm import DDPM

    return DDPM(tiny_ddpm_config(num_timesteps=20))


def test_a_default_past_the_models_range_is_brought_into_it(ddpm):
    """50 DDIM steps is the default; a model of T = 20 runs 20 when the request gives none."""
    kind = kind_of(ddpm)
    assert kind.sample_options_for(ddpm, None, {})["steps"] == 20
    assert kind.encode_options_for(ddpm, {})["steps"] == 20
    assert kind.decode_options_for(ddpm, {}) == {"steps": 20}


@pytest.mark.parametrize("operation", ["sample", "encode", "decode"])
def test_a_given_value_past_the_models_range_is_refused_naming_it(ddpm, operation):
    kind = kind_of(ddpm)
    check = {
        "sample": lambda given: kind.sample_options_for(ddpm, "ddim", given),
        "encode": lambda given: kind.encode_options_for(ddpm, given),
        "decode": lambda given: kind.decode_options_for(ddpm, given),
    }[operation]
    assert check({"steps": 20})["steps"] == 20
    with pytest.raises(OptionError) as raised:
        check({"steps": 21})
    assert str(raised.value) == "steps: this model takes 1..20 steps, got 21"


def test_ancestral_sampling_runs_all_steps_unless_asked_for_fewer(ddpm):
    kind = kind_of(ddpm)
    assert kind.sample_options_for(ddpm, "ancestral", {}) == {"sampler": "ancestral", "steps": 20}
    assert kind.sample_options_for(ddpm, "ancestral", {"steps": 5})["steps"] == 5
    with pytest.raises(OptionError, match="^steps: this model takes 1..20 steps, got 21"):
        kind.sample_options_for(ddpm, "ancestral", {"steps": 21})


@pytest.mark.parametrize(("given", "calls"), [({}, 20), ({"steps": 3}, 3)])
def test_ancestral_sampling_makes_one_network_call_per_step_it_was_given(ddpm, given, calls):
    kind = kind_of(ddpm)
    options = kind.sample_options_for(ddpm, "ancestral", given)
    generators = [torch.Generator().manual_seed(0)]
    progress = list(kind.sample(ddpm.eval(), generators, options, None))
    assert progress == [(done, calls) for done in range(1, calls + 1)]


def test_ancestral_sampling_refuses_an_eta(ddpm):
    """Its variances are the model's own (learned or fixed): an eta would change nothing."""
    with pytest.raises(OptionError, match="^eta: ancestral sampling draws with the model's own"):
        kind_of(ddpm).sample_options_for(ddpm, "ancestral", {"eta": 0.0})


def test_an_option_the_kind_does_not_take_is_refused(ddpm):
    with pytest.raises(OptionError, match="^temperature: sampling a ddpm takes steps, eta"):
        kind_of(ddpm).sample_options_for(ddpm, None, {"temperature": 0.5})
