"""Request cost estimates: network evaluations per kind, GFLOP counted on the networks, and the
synchronous ceiling's defaults against the requests people are told to send."""

from types import SimpleNamespace

import pytest

from models.kinds import Work, kind_of
from service.costs import Cost, ModelCosts, RequestTooCostlyError, refuse_past_ceiling
from service.settings import Ceiling, Settings


def _costs(kind_name: str, gflop: dict[str, float], num_timesteps: int = 0) -> ModelCosts:
    """A model's costs from its kind's evaluation counts, with made-up GFLOP per network (a
    stand-in model: the counts need only its T)."""
    kind = kind_of(kind_name)
    model = SimpleNamespace(diffusion=SimpleNamespace(num_timesteps=num_timesteps))
    return ModelCosts(gflop, lambda work: kind.evaluations(model, work))


VAE = _costs("vae", {"encoder": 0.5, "decoder": 2.0})
DDPM = _costs("ddpm", {"unet": 3.0}, num_timesteps=1000)
DDIM_50 = {"sampler": "ddim", "steps": 50, "eta": 1.0}


@pytest.mark.parametrize(
    ("costs", "work", "evaluations"),
    [
        (VAE, Work("likelihood", 8, "iwae", 5000), {"encoder": 8, "decoder": 40_000}),
        (VAE, Work("likelihood", 3, "elbo"), {"encoder": 3, "decoder": 3}),
        (VAE, Work("sample", 4, options={"sampler": "prior"}), {"decoder": 4}),
        (VAE, Work("encode", 2, options={"sample": False}), {"encoder": 2}),
        (VAE, Work("decode", 5, options={}), {"decoder": 5}),
        (DDPM, Work("likelihood", 2, "vlb_exact"), {"unet": 2000}),
        (DDPM, Work("likelihood", 2, "vlb_mc", 20), {"unet": 42}),  # L_0 and k timesteps
        (DDPM, Work("sample", 16, options=DDIM_50), {"unet": 800}),
        (DDPM, Work("sample", 4, options={"sampler": "ancestral", "steps": 1000}), {"unet": 4000}),
        (DDPM, Work("sample", 4, options={"sampler": "ancestral", "steps": 50}), {"unet": 200}),
        (DDPM, Work("encode", 3, options={"steps": 20}), {"unet": 120}),  # invert, decode back
        (DDPM, Work("decode", 3, options={"steps": 20}), {"unet": 60}),
    ],
)
def test_cost_is_network_evaluations_times_their_gflop(costs, work, evaluations):
    cost = costs.estimate(work)
    assert cost.evaluations == evaluations
    expected = sum(costs.gflop_per_evaluation[net] * n for net, n in evaluations.items())
    assert cost.gflop == pytest.approx(expected)


@pytest.fixture(scope="module")
def served_costs(served_checkpoints):
    from service.repository import load_repository

    repository = load_repository(served_checkpoints, "cpu")
    return {name: served.costs for name, served in repository.items()}


def test_gflop_per_evaluation_is_counted_on_the_served_networks(served_costs):
    vae, ddpm = served_costs["vae"], served_costs["ddpm"]
    assert set(vae.gflop_per_evaluation) == {"encoder", "decoder"}
    assert all(gflop > 0 for gflop in vae.gflop_per_evaluation.values())
    assert ddpm.estimate(Work("likelihood", 1, "vlb_exact")).evaluations == {"unet": 1000}
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


# The largest synchronous requests of the README's examples, the load tests and the suite.
ADMITTED = [
    ("ddpm", Work("sample", 4, options=DDIM_50)),  # README curl and Python: grid
    ("ddpm", Work("likelihood", 4, "vlb_mc", 20)),  # README Python
    ("ddpm", Work("encode", 1, options={"steps": 20})),  # README Python
    ("vae", Work("likelihood", 1, "iwae", 100)),  # README curl
    ("vae", Work("likelihood", 64, "elbo")),  # Locust and the benchmark: /score of 64 images
    ("ddpm", Work("likelihood", 1, "vlb_mc", 10)),  # Locust: DDPM /score at the card's k
    ("ddpm", Work("sample", 1, options=DDIM_50)),  # the benchmark's DDIM-50
    ("ddpm", Work("likelihood", 1, "vlb_exact")),  # http_api.md: a task only for many images
    ("ddpm", Work("sample", 64, options=DDIM_50)),  # the most /sample takes at 50
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
