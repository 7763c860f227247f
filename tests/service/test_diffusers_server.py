"""A real `bentoml serve` over a repository mixing a diffusers DDPM folder (written by
diffusers' save_pretrained, with a model card beside it), our own VAE, and a diffusers folder
with a refused setting: the refused one is left out and every endpoint serves the others."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
import torch.nn.functional as F
from service_testing import fixture_calibration, png_b64

from models.core.checkpoints import read_model_card, weights_sha256, write_model_card

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from diffusers_folders import tiny_folder  # noqa: E402

pytest.importorskip("diffusers")
SIZE = 16


@pytest.fixture(scope="module")
def repository(tmp_path_factory, served_checkpoints, test_images):
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(served_checkpoints["vae"], root / "vae")
    folder = tiny_folder(root / "digits-ddpm", 1, SIZE, 20, variance_type="fixed_large")
    images = F.interpolate(test_images.float(), size=SIZE, mode="area").round().to(torch.uint8)
    card = {
        "checkpoint": {
            "weights_sha256": weights_sha256(folder / "unet/diffusion_pytorch_model.safetensors")
        },
        "calibration": fixture_calibration(folder, images),
    }
    write_model_card(folder, card)
    refused = tiny_folder(root / "thresholded", 1, SIZE, 20, thresholding=True)
    assert read_model_card(refused) == {}
    return root, images


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    from load_tests.serving import running_server, server_environment

    root, images = repository
    overrides = {
        "ELBO_SERVE_MODEL_DIR": str(root),
        "ELBO_SERVE_MODELS": "",
        "ELBO_SERVE_TORCH_THREADS": "1",
    }
    env = server_environment(overrides, tmp_path_factory.mktemp("bentoml-home"))
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(env, log) as (url, _process):
        yield url, images, log


def _post(url: str, route: str, **body) -> dict:
    response = requests.post(f"{url}/{route}", json=body, timeout=300)
    assert response.status_code == 200, (route, response.text)
    return response.json()


def test_diffusers_folder_serves_every_endpoint_beside_our_vae(server):
    url, images, log = server
    listed = requests.get(f"{url}/models", timeout=30).json()["models"]
    assert set(listed) == {"vae", "digits-ddpm"}
    source = listed["digits-ddpm"]["source"]
    assert source["format"] == "diffusers" and source["scheduler"]["variance_type"] == "fixed_large"
    assert listed["vae"]["source"] == {"format": "elbo-serve"}
    assert "thresholding" in log.read_text()  # the refusal is logged with its key
    name = "digits-ddpm"
    pngs = [png_b64(image) for image in images[:2]]
    ddim = _post(url, "sample", model=name, n=2, seed=3, steps=5)
    assert len(ddim["images"]) == 2
    assert _post(url, "sample", model=name, n=2, seed=3, steps=5)["images"] == ddim["images"]
    _post(url, "sample", model=name, n=1, seed=3, sampler="ancestral")
    _post(url, "sample", model=name, n=1, seed=3, sampler="ancestral", steps=4)
    encoded = _post(url, "encode", model=name, images=pngs, steps=5)
    decoded = _post(url, "decode", model=name, latents=encoded["latents"], steps=5)
    assert len(decoded["images"]) == 2
    for method, k in (("vlb_exact", None), ("vlb_mc", 4)):
        bound = _post(
            url, "likelihood", model=name, images=pngs, method=method, **({"k": k} if k else {})
        )
        assert all(r["total_bits_per_dim"] > 0 for r in bound["results"])
    scored = _post(url, "score", model=name, images=pngs, fpr=0.25)
    assert all("is_anomaly" in r for r in scored["results"])
    assert _post(url, "sample", model="vae", n=1, seed=1)["images"]


def test_diffusers_sampling_task_completes(server):
    url, _images, _log = server
    body = {"model": "digits-ddpm", "n": 1, "seed": 2, "steps": 4}
    task_id = requests.post(f"{url}/sample_task/submit", json=body, timeout=30).json()["task_id"]
    deadline = time.monotonic() + 120
    status = "in_progress"
    while status == "in_progress" and time.monotonic() < deadline:
        status = requests.get(
            f"{url}/sample_task/status", params={"task_id": task_id}, timeout=30
        ).json()["status"]
        time.sleep(0.2)
    assert status == "completed"
    result = requests.get(f"{url}/sample_task/get", params={"task_id": task_id}, timeout=30)
    assert result.json()["images"] == _post(url, "sample", **body)["images"]
