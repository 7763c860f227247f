"""A model repository served by name: the bundled VAE and DDPM under new names and a tiny
RGB 16x16 VAE built here, side by side in one service; every endpoint works for each, with
its own shapes, and answers 400 for another model's inputs or an unknown name."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from service_testing import fixture_calibration, metric_value, png_b64

from load_tests.serving import REPO_ROOT
from models.core.checkpoints import save_checkpoint
from models.core.config import VAEConfig
from models.vae.model import VAE

BUNDLED = REPO_ROOT / "checkpoints"
SHAPES = {"fashion-vae": (1, 28, 28), "fashion-ddpm.v2": (1, 28, 28), "tiny_rgb": (3, 16, 16)}
MODES = {1: "L", 3: "RGB"}


def _tiny_rgb_vae(directory, generator: torch.Generator) -> None:
    """A seeded, untrained RGB 16x16 VAE with a calibrated card (on random images)."""
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_channels=3, image_size=16, latent_dim=4, channels=(8, 16)))
    save_checkpoint(directory, vae)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=generator)
    from models.core.checkpoints import write_model_card

    write_model_card(directory, {"calibration": fixture_calibration(directory, images)})


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    (root / "fashion-vae").symlink_to(BUNDLED / "vae")
    (root / "fashion-ddpm.v2").symlink_to(BUNDLED / "ddpm")
    (root / "classifier").symlink_to(BUNDLED / "classifier")  # not a servable kind
    (root / "notes").mkdir()  # no config.json: not a model
    _tiny_rgb_vae(root / "tiny_rgb", torch.Generator().manual_seed(0))
    return root


class _Client:
    """requests against one server, in the TestClient's call shape."""

    def __init__(self, url: str) -> None:
        self.url, self.session = url, requests.Session()

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url + path, timeout=120)

    def post(self, path: str, json: dict) -> requests.Response:
        return self.session.post(self.url + path, json=json, timeout=120)


@pytest.fixture(scope="module")
def client(repository, tmp_path_factory):
    """`ELBO_SERVE_MODEL_DIR=repository bentoml serve`: a real server over the repository
    alone (the session's in-process service serves the bundled names)."""
    from load_tests.serving import running_server, server_environment

    overrides = {
        "ELBO_SERVE_MODEL_DIR": str(repository),
        "ELBO_SERVE_MODELS": "",
        "ELBO_SERVE_TORCH_THREADS": "1",
    }
    env = server_environment(overrides, tmp_path_factory.mktemp("bentoml-home"))
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(env, log) as (url, _process):
        yield _Client(url)


def _pixels(text: str) -> np.ndarray:
    """base64 PNG -> uint8 (C, H, W), checking its mode on the way."""
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    array = np.asarray(image)
    return array[None] if image.mode == "L" else array.transpose(2, 0, 1)


def _images(name: str, n: int, seed: int = 0) -> list:
    c, h, w = SHAPES[name]
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (c, h, w)).tolist() for _ in range(n)]


def test_every_servable_directory_is_listed_under_its_name(client):
    models = client.get("/models").json()["models"]
    assert sorted(models) == sorted(SHAPES)  # not the classifier, not the folder without config
    for name, (c, h, w) in SHAPES.items():
        image = models[name]["image"]
        assert (image["channels"], image["height"], image["width"]) == (c, h, w)
        assert image["mode"] == MODES[c]
    assert models["tiny_rgb"]["kind"] == "vae" and models["tiny_rgb"]["latent_shape"] == [4]
    ddpm = models["fashion-ddpm.v2"]
    assert list(ddpm["methods"]) == ["vlb_mc", "vlb_exact"]
    assert ddpm["methods"]["vlb_mc"]["k_range"] == [2, 1998]
    assert ddpm["options"]["sample"]["steps"]["range"] == [1, 1000]
    assert ddpm["samplers"] == ["ddim", "ancestral"]
    assert ddpm["sampler_defaults"] == {
        "ddim": {"sampler": "ddim", "steps": 50, "eta": 1.0},
        "ancestral": {"sampler": "ancestral", "steps": 1000},
    }
    assert models["tiny_rgb"]["sampler_defaults"]["prior"]["sampler"] == "prior"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_sample_draws_images_of_the_models_shape_and_mode(client, name):
    options = {"steps": 3} if name.startswith("fashion-ddpm") else {}
    response = client.post("/sample", json={"model": name, "n": 2, "seed": 1, **options})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == name and len(body["images"]) == 2
    assert all(_pixels(image).shape == SHAPES[name] for image in body["images"])
    grid = client.post("/sample", json={"model": name, "n": 2, "output": "grid", **options})
    assert (
        Image.open(io.BytesIO(base64.b64decode(grid.json()["grid"]))).mode == MODES[SHAPES[name][0]]
    )


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_likelihood_and_score_use_the_models_dimensions(client, name):
    images = _images(name, 2)
    response = client.post("/likelihood", json={"model": name, "images": images})
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        dims = int(np.prod(SHAPES[name]))
        # bits/dim is the bound in nats over D = C*H*W dimensions, in bits
        assert result["total_bits_per_dim"] == pytest.approx(
            result["total_nats"] / (dims * np.log(2)),
            rel=1e-6,  # float32 terms
        )
    # fpr 0.25: the tiny model is calibrated on 8 images
    scored = client.post("/score", json={"model": name, "images": images, "fpr": 0.25})
    assert scored.status_code == 200, scored.text
    assert scored.json()["model"] == name and len(scored.json()["results"]) == 2


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_encode_then_decode_round_trips_shapes(client, name):
    options = {"steps": 3} if name.startswith("fashion-ddpm") else {}
    encoded = client.post("/encode", json={"model": name, "images": _images(name, 2), **options})
    assert encoded.status_code == 200, encoded.text
    body = encoded.json()
    latents = body["latents"] or body["means"]
    latent_shape = client.get("/models").json()["models"][name]["latent_shape"]
    assert np.asarray(latents).shape == (2, *latent_shape)
    decoded = client.post("/decode", json={"model": name, "latents": latents, **options})
    assert decoded.status_code == 200, decoded.text
    assert all(_pixels(image).shape == SHAPES[name] for image in decoded.json()["images"])


def test_another_models_images_are_a_400_that_names_both_shapes(client):
    gray = png_b64(np.zeros((28, 28), dtype=np.uint8))
    response = client.post("/likelihood", json={"model": "tiny_rgb", "images": [gray]})
    assert response.status_code == 400
    assert response.json()["field"] == "images[0]"
    assert "16x16" in response.json()["error"] and "28x28" in response.json()["error"]
    rgb = _images("tiny_rgb", 1)
    response = client.post("/score", json={"model": "fashion-vae", "images": rgb})
    assert response.status_code == 400 and response.json()["field"] == "images[0]"


def test_an_unknown_name_is_a_400_that_lists_the_served_ones(client):
    response = client.post("/sample", json={"model": "vae", "n": 1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("model: no model is served as 'vae'")
    assert all(repr(name) in error for name in SHAPES)


def test_options_are_checked_against_the_model(client):
    too_many = client.post("/sample", json={"model": "fashion-ddpm.v2", "steps": 1001})
    assert too_many.status_code == 400
    assert too_many.json() == {
        "error": "steps: this model takes 1..1000 steps, got 1001",
        "field": "steps",
    }
    vae_steps = client.post("/sample", json={"model": "tiny_rgb", "steps": 5})
    assert vae_steps.status_code == 400 and vae_steps.json()["field"] == "steps"
    method = client.post(
        "/likelihood", json={"model": "tiny_rgb", "images": _images("tiny_rgb", 1), "method": "x"}
    )
    assert method.status_code == 400
    assert method.json()["error"] == "method: a vae model offers 'elbo' or 'iwae', got 'x'"
    k = client.post(
        "/likelihood",
        json={"model": "fashion-ddpm.v2", "images": _images("fashion-vae", 1), "k": 1999},
    )
    assert k.status_code == 400 and "2..1998" in k.json()["error"]


def test_metrics_carry_the_served_name(client):
    client.post("/sample", json={"model": "tiny_rgb", "n": 1})
    assert metric_value(client, "elbo_serve_images_generated_total", model="tiny_rgb") >= 1
    assert metric_value(client, "elbo_serve_batch_items_count", model="tiny_rgb") >= 1


def test_the_openapi_contract_lists_the_served_names(client):
    document = client.get("/docs.json").json()
    text = str(document)
    assert "tiny_rgb" in text and "16x16 RGB" in text


def test_a_malformed_calibration_stops_the_start_naming_the_card(tmp_path):
    """Found at load, not as a 500 on the first /score."""
    import json
    import shutil

    from models.core.checkpoints import CheckpointError
    from service.repository import load_repository

    broken = tmp_path / "vae"
    shutil.copytree(BUNDLED / "vae", broken)
    card_path = broken / "model_card.json"
    card = json.loads(card_path.read_text())
    del card["calibration"]["elbo"]["scores"]["bits_per_dim"]["normal_scores"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="model_card.json.*missing key 'normal_scores'"):
        load_repository({"vae": broken}, "cpu")
