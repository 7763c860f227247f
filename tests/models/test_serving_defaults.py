"""A checkpoint's serving defaults: what /sample draws when a request names no sampler,
checked when the checkpoint loads, applied only to their own sampler."""

import json

import pytest

from models.core.serving_defaults import (
    SERVING_DEFAULTS_FILE,
    ServingDefaults,
    ServingDefaultsError,
    read_serving_defaults,
    sample_options,
    write_serving_defaults,
)
from models.eval.fd_resumable import Plan, best_sampler
from models.kinds import kind_of

DDIM_ETA0 = {"sampler": "ddim", "steps": 7, "eta": 0.0}
CARD = {"checkpoint": {"weights_sha256": "ab" * 32}}


def _defaults(sample=DDIM_ETA0, weights="ab" * 32) -> ServingDefaults:
    return ServingDefaults(sample=sample, measured="a test's figures", weights_sha256=weights)


def test_a_request_naming_no_sampler_gets_the_measured_sampler_and_options(tiny_ddpm):
    kind = kind_of(tiny_ddpm)
    assert kind.sample_options_for(tiny_ddpm, None, {})["eta"] == 1.0  # the kind's default
    options = sample_options(kind, tiny_ddpm, _defaults(), None, {})
    assert options == {"sampler": "ddim", "steps": 7, "eta": 0.0}


def test_options_a_request_sets_win_over_the_measured_ones(tiny_ddpm):
    options = sample_options(kind_of(tiny_ddpm), tiny_ddpm, _defaults(), "ddim", {"steps": 3})
    assert options == {"sampler": "ddim", "steps": 3, "eta": 0.0}


def test_another_sampler_keeps_its_kind_defaults(tiny_ddpm):
    """The measured options belong to the measured sampler: ancestral sampling takes no eta."""
    kind = kind_of(tiny_ddpm)
    options = sample_options(kind, tiny_ddpm, _defaults(), "ancestral", {})
    assert options == kind.sample_options_for(tiny_ddpm, "ancestral", {})


def test_without_a_file_the_kind_defaults_stand(tiny_ddpm, tmp_path):
    assert read_serving_defaults(tmp_path, kind_of(tiny_ddpm), tiny_ddpm, CARD) is None


def test_a_written_file_reads_back(tiny_ddpm, tmp_path):
    write_serving_defaults(tmp_path, _defaults())
    read = read_serving_defaults(tmp_path, kind_of(tiny_ddpm), tiny_ddpm, CARD)
    assert read == _defaults()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"sample": {"sampler": "euler"}, "measured": "x"}, "sample.sampler: .*'ddim'.*euler"),
        ({"sample": {"sampler": "ddim", "steps": 51}, "measured": "x"}, "sample.steps: .*1..50"),
        ({"sample": {"sampler": "ancestral", "eta": 0.0}, "measured": "x"}, "sample.eta"),
        ({"sample": {"steps": 5}, "measured": "x"}, "'sampler'"),
        ({"sample": {"sampler": "ddim"}}, "'measured'"),
        ({"sample": DDIM_ETA0, "measured": "x", "weights_sha256": "cd" * 32}, "other|measured on"),
    ],
)
def test_a_file_that_cannot_be_served_stops_the_load_naming_it(
    tiny_ddpm, tmp_path, payload, message
):
    (tmp_path / SERVING_DEFAULTS_FILE).write_text(json.dumps(payload))
    with pytest.raises(ServingDefaultsError, match=message) as raised:
        read_serving_defaults(tmp_path, kind_of(tiny_ddpm), tiny_ddpm, CARD)
    assert SERVING_DEFAULTS_FILE in str(raised.value)


def _figures(complete: bool, distances: dict[str, float]) -> dict:
    return {
        "updated": "2026-12-07T00:00:00Z",
        "samplers": {
            name: {"complete": complete, "frechet_distance": d, "real_data_floor": 1.0}
            for name, d in distances.items()
        },
    }


def test_the_measurement_chooses_the_lowest_distance_once_every_sampler_is_complete():
    samplers = {"ddim_eta0": DDIM_ETA0, "ancestral": {"sampler": "ancestral", "steps": 7}}
    plan = Plan("ab" * 32, "classifier", 100, 10, "test images", samplers)
    distances = {"ddim_eta0": 9.0, "ancestral": 8.5}
    assert best_sampler(plan, _figures(False, distances)) is None
    chosen = best_sampler(plan, _figures(True, distances))
    assert chosen.sample == samplers["ancestral"]
    assert chosen.weights_sha256 == "ab" * 32
    assert "ddim_eta0 9.00" in chosen.measured and "ancestral 8.50" in chosen.measured
