"""No NaN or infinity becomes an image or a number: latents that would overflow are 400s
naming their position, and a non-finite model result is a clear 422 or 500, never a black
image or a NaN in the body (casting NaN to uint8 is undefined behaviour: 0 on AMD)."""

import dataclasses

import pytest
import torch
from service_testing import png_b64

from models.core.pixels import NonFiniteError
from models.vae.model import VAE
from service import runners
from service.schemas import MAX_LATENT_ABS

POISON = 7.0  # a latent whose first value is this decodes to NaN under `nan_decoder`


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        # Finite in float64 (so JSON and numpy accept it), infinite in float32.
        (
            {"model": "vae", "latents": [[0.0] * 3 + [1e308] + [0.0] * 28]},
            "latents[0][3]",
            "1e+308",
        ),
        (
            {"model": "ddpm", "latents": [[[[1e30] * 28] * 28]], "steps": 3},
            "latents[0][0][0][0]",
            "1e+30",
        ),
        (
            {"model": "vae", "latents": [[0.0] * 32, [0.0] * 5 + [-1001.0] + [0.0] * 26]},
            "latents[1][5]",
            "-1001",
        ),
    ],
)
def test_latents_beyond_the_bound_are_a_400_naming_the_value(client, body, field, value):
    response = client.post("/decode", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(f"{field}: {value} is outside -1000..1000")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_in_latents_are_a_400_naming_the_value(client, literal):
    body = '{"model": "vae", "latents": [[' + "0.0, " * 2 + literal + ", 0.0" * 29 + "]]}"
    response = client.post("/decode", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "latents[0][2]" in response.text and "non-finite" in response.text


def test_latents_at_the_bound_decode(client):
    for model, latent, options in (
        ("vae", [MAX_LATENT_ABS] * 16 + [-MAX_LATENT_ABS] * 16, {}),
        ("ddpm", [[[MAX_LATENT_ABS] * 28] * 28], {"steps": 3}),
    ):
        body = {"model": model, "latents": [latent], **options}
        response = client.post("/decode", json=body)
        assert response.status_code == 200, response.text


@pytest.fixture
def nan_decoder(monkeypatch):
    """The served VAE's decoder gives NaN for latents whose first value is POISON."""
    original = VAE._pixel_params

    def poisoned(self, z):
        params = original(self, z)
        rows = z[:, 0] == POISON
        return torch.where(rows[:, None, None, None], torch.nan, params)

    monkeypatch.setattr(VAE, "_pixel_params", poisoned)


@pytest.fixture
def nan_encoder(monkeypatch):
    """The served VAE's posterior mean is NaN for an all-white image."""
    original = VAE.encode

    def poisoned(self, x):
        posterior = original(self, x)
        white = (x == 1.0).flatten(1).all(dim=1)
        mean = torch.where(white[:, None], torch.nan, posterior.mean)
        return dataclasses.replace(posterior, mean=mean)

    monkeypatch.setattr(VAE, "encode", poisoned)


def test_a_latent_that_decodes_to_nan_is_a_422_naming_it(client, nan_decoder):
    latents = [[0.0] * 32, [POISON] + [0.0] * 31]
    response = client.post("/decode", json={"model": "vae", "latents": latents})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "latents[1]"
    assert "NaN or infinite pixel values" in response.json()["error"]


def test_a_nan_bound_is_a_500_that_says_so_never_a_nan_in_the_body(client, nan_encoder):
    white = png_b64(torch.full((1, 28, 28), 255, dtype=torch.uint8))
    black = png_b64(torch.zeros(1, 28, 28, dtype=torch.uint8))
    for endpoint in ("/likelihood", "/encode"):
        response = client.post(endpoint, json={"model": "vae", "images": [black, white]})
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert (
            error.startswith("model: ") and "NaN or infinite" in error and "server fault" in error
        )
        assert set(response.json()) == {"error", "field"}  # no results with NaN in them


def test_a_job_with_a_nan_result_fails_alone_in_its_batch(nan_decoder, served_checkpoints):
    from models.core.checkpoints import load_checkpoint
    from models.core.progressive import run_to_end
    from models.kinds import kind_of

    vae = load_checkpoint(served_checkpoints["vae"]).model
    fine = runners.ImagesJob(torch.zeros(2, 32))
    poisoned = runners.ImagesJob(torch.tensor([[0.0] * 32, [POISON] + [0.0] * 31]))
    images, error = run_to_end(runners.decode(kind_of(vae), vae, [fine, poisoned], {}))
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 28, 28)
    assert isinstance(error, NonFiniteError) and error.rows == (1,)  # counted within the job
