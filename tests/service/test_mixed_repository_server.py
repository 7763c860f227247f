"""A real `bentoml serve` over a repository mixing a diffusers DDPM folder (written by
diffusers' save_pretrained, with a model card beside it), our own VAE, a model of a kind from
another package (examples/categorical_vae, installed into a directory on the server's
PYTHONPATH and trained with `python -m models.train`), a diffusers folder with a refused
setting, and checkpoints of two refused plug-in kinds (one fails to import, one declares an
unsupported interface version): the refused ones are left out, logged with their reasons, and
every endpoint serves the others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from kind_plugins import (
    EXAMPLE_KIND,
    ROOT,
    install_example,
    kinds_on_path,
    with_kind,
    write_refused_plugins,
)
from PIL import Image
from service_testing import fixture_calibration, fixture_pixel_calibration, png_b64, png_pixels

from models.core.checkpoints import read_model_card, weights_sha256, write_model_card
from models.data import load_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from diffusers_folders import tiny_folder  # noqa: E402

pytest.importorskip("diffusers")
SIZE = 16
PLUGIN = "clothes-categorical"  # the plug-in kind's model
# A few seconds of training on 300 Fashion-MNIST test images (not the 64 the cards measure).
PLUGIN_CONFIG = {
    "model": {"image_size": SIZE, "latent_dim": 4, "channels": [8, 16], "num_res_blocks": 1},
    "train": {"steps": 40, "batch_size": 32, "learning_rate": 0.01, "warmup_steps": 5}
    | {"checkpoint_every": 40, "log_every": 20},
}


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    """A directory holding the example plug-in (as pip installs it) and the refused ones."""
    return write_refused_plugins(install_example(tmp_path_factory.mktemp("plugins") / "site"))


def _plugin_environment(plugins: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _train_plugin_model(plugins: Path, run: Path) -> subprocess.Popen:
    """`python -m models.train categorical_vae` on a folder of PNGs, started (it exports to
    ``run/checkpoint``): it trains while the other models of the repository are prepared."""
    images, _ = load_fashion_mnist("test")
    small = F.interpolate(images[64:364].float(), size=SIZE, mode="area").round().to(torch.uint8)
    (run / "data").mkdir(parents=True)
    for i, image in enumerate(small):
        Image.fromarray(image[0].numpy(), mode="L").save(run / "data" / f"{i:03d}.png")
    (run / "config.json").write_text(json.dumps(PLUGIN_CONFIG))
    command = [sys.executable, "-m", "models.train", EXAMPLE_KIND, "--config", "config.json"]
    command += ["--data", "data", "--out", ".", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": f"{plugins}{os.pathsep}{ROOT}"}  # run from ``run``
    with open(run / "train.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT)


def _exported(training: subprocess.Popen, run: Path) -> Path:
    assert training.wait(timeout=600) == 0, (run / "train.log").read_text()[-4000:]
    return run / "checkpoint"


@pytest.fixture(scope="module")
def repository(tmp_path_factory, served_checkpoints, test_images, plugins):
    root = tmp_path_factory.mktemp("mixed")
    run = tmp_path_factory.mktemp("plugin-run")
    training = _train_plugin_model(plugins, run)
    shutil.copytree(served_checkpoints["vae"], root / "vae")
    for refused in ("broken", "future"):
        with_kind(served_checkpoints["vae"], root / f"of-{refused}", refused)
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
    shutil.copytree(_exported(training, run), root / PLUGIN)
    with kinds_on_path(plugins):
        card = {
            "checkpoint": {"weights_sha256": weights_sha256(root / PLUGIN / "model.safetensors")},
            "calibration": fixture_calibration(root / PLUGIN, images),
            "pixel_calibration": fixture_pixel_calibration(root / PLUGIN, images),
        }
    write_model_card(root / PLUGIN, card)
    return root, images


@pytest.fixture(scope="module")
def server(repository, plugins, tmp_path_factory):
    from load_tests.serving import running_server, server_environment

    root, images = repository
    overrides = {
        "ELBO_SERVE_MODEL_DIR": str(root),
        "ELBO_SERVE_MODELS": "",
        "ELBO_SERVE_TORCH_THREADS": "1",
        "PYTHONPATH": _plugin_environment(plugins)["PYTHONPATH"],
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
    assert set(listed) == {"vae", "digits-ddpm", PLUGIN}
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
        assert bound["method"] == method and len(bound["results"]) == 2
        assert all(r["total_bits_per_dim"] > 0 for r in bound["results"])
        # the exact sum over every timestep has no Monte Carlo error; the estimate has one
        assert all((r["stderr_nats"] is None) == (k is None) for r in bound["results"])
    scored = _post(url, "score", model=name, images=pngs, fpr=0.25)
    assert all("is_anomaly" in r for r in scored["results"])
    assert _post(url, "sample", model="vae", n=1, seed=1)["images"]


def _finished_status(url: str, route: str, task_id: str, seconds: float = 120) -> str:
    """The task's status once it is no longer in progress (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    status = "in_progress"
    while status == "in_progress" and time.monotonic() < deadline:
        answer = requests.get(f"{url}/{route}/status", params={"task_id": task_id}, timeout=30)
        status = answer.json()["status"]
        time.sleep(0.2)
    return status


def test_diffusers_sampling_task_completes(server):
    url, _images, _log = server
    body = {"model": "digits-ddpm", "n": 1, "seed": 2, "steps": 4}
    task_id = requests.post(f"{url}/sample_task/submit", json=body, timeout=30).json()["task_id"]
    assert _finished_status(url, "sample_task", task_id) == "completed"
    result = requests.get(f"{url}/sample_task/get", params={"task_id": task_id}, timeout=30)
    assert result.json()["images"] == _post(url, "sample", **body)["images"]


def test_likelihood_task_runs_the_exact_bound(server):
    """The exact bound (all 20 timesteps of the diffusers DDPM: the bound, the task worker and
    the progress are ours, whatever the loader) as a task: it completes, its progress reaches
    every row, and it answers what the synchronous endpoint answers for the same seed."""
    url, images, _log = server
    body = {"model": "digits-ddpm", "images": [png_b64(images[0])], "method": "vlb_exact"}
    body["seed"] = 4
    submitted = requests.post(f"{url}/likelihood_task/submit", json=body, timeout=30)
    task_id = submitted.json()["task_id"]
    assert _finished_status(url, "likelihood_task", task_id) == "completed"
    result = requests.get(f"{url}/likelihood_task/get", params={"task_id": task_id}, timeout=30)
    result = result.json()
    assert result["method"] == "vlb_exact" and len(result["results"]) == 1
    assert result["results"][0]["stderr_nats"] is None
    assert result == _post(url, "likelihood", **body)
    progress = requests.post(f"{url}/task_progress", json={"task_id": task_id}, timeout=30)
    assert progress.json()["fraction"] == 1.0


def test_a_kind_from_another_package_serves_every_endpoint_it_declares(server):
    """The plug-in's model answers every operation its kind declares, beside our VAE; the
    checkpoints of the refused kinds are left out and the log says why."""
    url, images, log = server
    listed = requests.get(f"{url}/models", timeout=30).json()["models"]
    described = listed[PLUGIN]
    assert described["kind"] == EXAMPLE_KIND and listed["vae"]["kind"] == "vae"
    assert set(described["methods"]) == {"elbo", "iwae"}
    logged = log.read_text()
    assert "not serving of-broken" in logged and "needs libfoo" in logged
    assert "not serving of-future" in logged and "interface version 99" in logged
    pngs = [png_b64(image) for image in images[:4]]
    sampled = _post(url, "sample", model=PLUGIN, n=2, seed=3)["images"]
    assert [png_pixels(image).shape for image in sampled] == [(SIZE, SIZE)] * 2
    assert _post(url, "sample", model=PLUGIN, n=2, seed=3)["images"] == sampled
    drawn = _post(url, "sample", model=PLUGIN, n=1, seed=3, sample_pixels=True)["images"]
    assert png_pixels(drawn[0]).shape == (SIZE, SIZE)
    encoded = _post(url, "encode", model=PLUGIN, images=pngs, sample=True)
    latent_dim = PLUGIN_CONFIG["model"]["latent_dim"]
    assert described["latent_shape"] == [latent_dim]
    for output in ("means", "logvars", "samples"):
        assert np.asarray(encoded[output]).shape == (4, latent_dim)
    decoded = _post(url, "decode", model=PLUGIN, latents=encoded["means"])["images"]
    assert [png_pixels(image).shape for image in decoded] == [(SIZE, SIZE)] * 4
    elbo = _post(url, "likelihood", model=PLUGIN, images=pngs, method="elbo")["results"]
    iwae = _post(url, "likelihood", model=PLUGIN, images=pngs, method="iwae", k=16)["results"]
    for bound in (elbo, iwae):  # a codelength on the 8-bit grid, shorter than uniform's 8
        assert all(0 < r["total_bits_per_dim"] < 8 for r in bound), bound
    scored = _post(url, "score", model=PLUGIN, images=pngs, fpr=0.25, maps=True)["results"]
    assert all("is_anomaly" in r for r in scored)
    assert all(np.isfinite(r["anomaly_map"]).all() for r in scored)
    assert np.asarray(scored[0]["anomaly_map"]).shape == (1, SIZE, SIZE)
    corrected = _post(url, "score", model=PLUGIN, images=pngs, fpr=0.25, correction="png")
    assert len(corrected["results"]) == 4
