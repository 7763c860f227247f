"""Request cost estimates: network evaluations per kind, GFLOP counted on the networks, and the
synchronous ceiling's defaults against the requests people are told to send."""

import pytest

from service.costs import (
    Cost,
    ModelCosts,
    RequestTooCostlyError,
    Work,
    refuse_past_ceiling,
)
from service.settings import Ceiling, Settings

VAE = ModelCosts("vae", {"encoder": 0.5, "decoder": 2.0})
DDPM = ModelCosts("ddpm", {"unet": 3.0}, num_timesteps=1000)


@pytest.mark.parametrize(
    ("costs", "work", "evaluations"),
    [
        (VAE, Work("likelihood", 8, "iwae", 5000), {"encoder": 8, "decoder": 40_000}),
        (VAE, Work("likelihood", 3, "elbo"), {"encoder": 3, "decoder": 3}),
        (VAE, Work("sample", 4, steps=50, sampler="ddim"), {"decoder": 4}),
        (VAE, Work("encode", 2), {"encoder": 2}),
        (VAE, Work("decode", 5), {"decoder": 5}),
        (DDPM, Work("likelihood", 2, "vlb_exact"), {"unet": 2000}),
        (DDPM, Work("likelihood", 2, "vlb_mc", 20), {"unet": 42}),  # L_0 and k timesteps
        (DDPM, Work("sample", 16, steps=50, sampler="ddim"), {"unet": 800}),
        (DDPM, Work("sample", 4, steps=50, sampler="ancestral"), {"unet": 4000}),
        (DDPM, Work("encode", 3, steps=20), {"unet": 120}),  # invert, then decode back
        (DDPM, Work("decode", 3, steps=20), {"unet": 60}),
    ],
)
def test_cost_is_network_evaluations_times_their_gflop(costs, work, evaluations):
    cost = costs.estimate(work)
    assert cost.evaluations == evaluations
    expected = sum(costs.gflop_per_evaluation[net] * n for net, n in evaluations.items())
    assert cost.gflop == pytest.approx(expected)


def test_gflop_per_evaluation_is_counted_on_the_served_networks(served_checkpoints):
    from models.core.checkpoints import load_checkpoint

    vae = ModelCosts.of("vae", load_checkpoint(served_checkpoints["vae"]).model)
    ddpm = ModelCosts.of("ddpm", load_checkpoint(served_checkpoints["ddpm"]).model)
    assert set(vae.gflop_per_evaluation) == {"encoder", "decoder"}
    assert all(gflop > 0 for gflop in vae.gflop_per_evaluation.values())
    assert ddpm.num_timesteps == 1000
    # The UNet is the dearer network (it keeps full resolution and has attention).
    assert ddpm.gflop_per_evaluation["unet"] > vae.gflop_per_evaluation["decoder"]


def test_past_the_ceiling_the_error_names_the_cost_the_ceiling_and_the_way_out():
    cost = Cost(26_043.2, {"encoder": 8, "decoder": 40_000})
    ceiling = Ceiling(10_000.0, "ELBO_SERVE_CPU_MAX_REQUEST_GFLOP")
    with pytest.raises(RequestTooCostlyError) as raised:
        refuse_past_ceiling(cost, ceiling, "images", "use POST /likelihood_task/submit")
    error = raised.value
    assert error.status_code == 413 and error.field == "images"
    message = str(error)
    assert "26,043 GFLOP (8 encoder and 40,000 decoder evaluations)" in message
    assert "10,000 GFLOP" in message and "ELBO_SERVE_CPU_MAX_REQUEST_GFLOP" in message
    assert message.endswith("use POST /likelihood_task/submit")
    refuse_past_ceiling(Cost(9_999.0, {}), ceiling, "images", "")  # under it: nothing
    refuse_past_ceiling(cost, Ceiling(0.0, "X"), "images", "")  # 0: no ceiling


@pytest.fixture(scope="module")
def served_costs(served_checkpoints):
    from models.core.checkpoints import load_checkpoint

    return {
        name: ModelCosts.of(name, load_checkpoint(directory).model)
        for name, directory in served_checkpoints.items()
    }


# The largest synchronous requests of the README's examples, the load tests and the suite.
ADMITTED = [
    ("ddpm", Work("sample", 16, steps=50, sampler="ddim")),  # README curl and Python: grid
    ("ddpm", Work("likelihood", 4, "vlb_mc", 20)),  # README Python
    ("ddpm", Work("encode", 1, steps=20)),  # README Python
    ("vae", Work("likelihood", 1, "iwae", 100)),  # README curl
    ("vae", Work("likelihood", 64, "elbo")),  # Locust and the benchmark: /score of 64 images
    ("ddpm", Work("likelihood", 1, "vlb_mc", 10)),  # Locust: DDPM /score at the card's k
    ("ddpm", Work("sample", 1, steps=50, sampler="ddim")),  # the benchmark's DDIM-50
    ("ddpm", Work("likelihood", 1, "vlb_exact")),  # tests: the exact bound of one image
    ("ddpm", Work("sample", 64, steps=50, sampler="ddim")),  # the most /sample takes at 50
]


@pytest.mark.parametrize(("model", "work"), ADMITTED)
def test_the_default_cpu_ceiling_admits_what_users_are_shown(served_costs, model, work):
    ceiling = Settings().request_ceiling("cpu")
    refuse_past_ceiling(served_costs[model].estimate(work), ceiling, "images", "")


def test_the_default_cpu_ceiling_refuses_the_minutes_long_iwae_of_issue_10(served_costs):
    """Two of these held both lanes for 193 s: they belong in /likelihood_task."""
    cost = served_costs["vae"].estimate(Work("likelihood", 8, "iwae", 5000))
    with pytest.raises(RequestTooCostlyError):
        refuse_past_ceiling(cost, Settings().request_ceiling("cpu"), "images", "")


def test_ceilings_are_per_device_and_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("ELBO_SERVE_CPU_MAX_REQUEST_GFLOP", "123.5")
    monkeypatch.setenv("ELBO_SERVE_CUDA_MAX_REQUEST_GFLOP", "0")
    settings = Settings.from_env()
    assert settings.request_ceiling("cpu") == (123.5, "ELBO_SERVE_CPU_MAX_REQUEST_GFLOP")
    assert settings.request_ceiling("cuda:0") == (0.0, "ELBO_SERVE_CUDA_MAX_REQUEST_GFLOP")
