"""Every endpoint through the in-process ASGI app (TestClient), on the served checkpoints."""

import time

import numpy as np
import pytest
import torch
from service_testing import concurrently, metric_value, png_b64, png_pixels

# The fixture calibrations hold few images; 0.25 is a rate any calibration can resolve.
FPR = 0.25


@pytest.fixture(scope="module")
def images(test_images):
    return [png_b64(image) for image in test_images[:3]]


def test_health_endpoints(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    spec = client.get("/docs.json").json()
    assert "/sample" in spec["paths"] and "/score" in spec["paths"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "vae", "n": 3, "seed": 7},
        {"model": "vae", "n": 3, "seed": 7, "temperature": 0.5, "sample_pixels": True},
        {"model": "ddpm", "n": 2, "seed": 7, "steps": 3},
        {"model": "ddpm", "n": 2, "seed": 7, "steps": 3, "eta": 1.0},
        {"model": "ddpm", "n": 2, "seed": 7, "sampler": "ancestral", "steps": 3},
    ],
)
def test_sample_is_reproducible_by_seed(client, body):
    first = client.post("/sample", json=body).json()
    again = client.post("/sample", json=body).json()
    other = client.post("/sample", json={**body, "seed": 8}).json()
    assert len(first["images"]) == body["n"] and first["seed"] == 7
    assert first["images"] == again["images"]
    assert first["images"] != other["images"]
    assert png_pixels(first["images"][0]).shape == (28, 28)


def test_respaced_ancestral_sampling_is_not_ddim_under_another_name(client):
    """Both run 4 network calls from the same x_T, but ancestral steps draw with the
    model's learned variances where DDIM at eta = 1 uses the posterior's."""
    body = {"model": "ddpm", "n": 1, "seed": 7, "steps": 4}
    ancestral = client.post("/sample", json={**body, "sampler": "ancestral"}).json()
    ddim = client.post("/sample", json={**body, "sampler": "ddim", "eta": 1.0}).json()
    assert (ancestral["sampler"], ancestral["steps"]) == ("ancestral", 4)
    assert ancestral["images"] != ddim["images"]


def test_sample_without_seed_returns_the_seed_that_redraws_it(client):
    drawn = client.post("/sample", json={"model": "vae", "n": 2}).json()
    again = client.post("/sample", json={"model": "vae", "n": 2, "seed": drawn["seed"]}).json()
    assert drawn["images"] == again["images"]


def test_sample_output_formats_hold_the_same_pixels(client):
    body = {"model": "vae", "n": 4, "seed": 3}
    pngs = client.post("/sample", json={**body, "output": "png"}).json()
    arrays = client.post("/sample", json={**body, "output": "array"}).json()
    tiled = client.post("/sample", json={**body, "output": "grid"}).json()
    assert pngs["arrays"] == [] and arrays["images"] == []
    for text, array in zip(pngs["images"], arrays["arrays"], strict=True):
        assert np.array_equal(png_pixels(text), np.array(array[0]))
    grid = png_pixels(tiled["grid"])
    assert grid.shape == (62, 62)
    assert np.array_equal(grid[2:30, 32:60], np.array(arrays["arrays"][1][0]))


def test_same_seed_gives_byte_identical_images_alone_or_batched(client):
    """A request batched with others (one shared denoising loop) draws exactly what it draws
    alone; the batch-call counter proves the requests really shared calls."""
    mine = {"model": "ddpm", "n": 2, "seed": 11, "steps": 4}
    alone = client.post("/sample", json=mine).json()["images"]
    others = [{**mine, "seed": seed, "n": 1 + seed % 3} for seed in range(20, 26)]
    calls_before = metric_value(client, "elbo_serve_batch_items_count", operation="sample")
    responses = concurrently(
        [lambda body=body: client.post("/sample", json=body) for body in [*others, mine]]
    )
    calls = metric_value(client, "elbo_serve_batch_items_count", operation="sample") - calls_before
    assert all(r.status_code == 200 for r in responses)
    assert calls < len(responses)
    assert responses[-1].json()["images"] == alone


def test_likelihood_terms_add_up(client, images):
    vae = client.post("/likelihood", json={"model": "vae", "images": images}).json()
    assert vae["method"] == "elbo" and len(vae["results"]) == 3
    for bound in vae["results"]:
        assert bound["total_nats"] == pytest.approx(bound["reconstruction_nats"] + bound["kl_nats"])
        assert bound["total_bits_per_dim"] == pytest.approx(bound["total_nats"] / (784 * np.log(2)))
    ddpm = client.post(
        "/likelihood", json={"model": "ddpm", "images": images[:2], "method": "vlb_mc", "k": 4}
    ).json()
    for bound in ddpm["results"]:
        parts = bound["prior_nats"] + bound["denoising_nats"] + bound["reconstruction_nats"]
        assert bound["total_nats"] == pytest.approx(parts)
        assert bound["stderr_nats"] > 0


def test_iwae_is_tighter_than_the_elbo_on_average(client, images):
    body = {"model": "vae", "images": images}
    elbo = client.post("/likelihood", json={**body, "method": "elbo"}).json()["results"]
    iwae = client.post("/likelihood", json={**body, "method": "iwae", "k": 64}).json()["results"]
    assert np.mean([b["total_nats"] for b in iwae]) < np.mean([b["total_nats"] for b in elbo])


def test_likelihood_of_an_image_does_not_depend_on_its_companions(client, images):
    alone = client.post("/likelihood", json={"model": "vae", "images": images[:1]}).json()
    mixed = concurrently(
        [
            lambda: client.post("/likelihood", json={"model": "vae", "images": images[:1]}),
            lambda: client.post("/likelihood", json={"model": "vae", "images": images, "seed": 5}),
        ]
    )
    # The same noise, so the same bound up to float32 rounding in a larger batch.
    for got, expected in zip(mixed[0].json()["results"], alone["results"], strict=True):
        assert got["total_nats"] == pytest.approx(expected["total_nats"], rel=1e-6)
        assert got["kl_nats"] == pytest.approx(expected["kl_nats"], rel=1e-6)


@pytest.mark.parametrize("correction", ["none", "png"])
def test_score_flags_against_the_calibrated_threshold(client, images, correction):
    response = client.post(
        "/score",
        json={"model": "vae", "images": images, "fpr": FPR, "correction": correction},
    ).json()
    assert response["correction"] == correction and response["calibration_images"] > 0
    blank = client.post(
        "/score",
        json={"model": "vae", "images": [[[0] * 28] * 28], "fpr": FPR, "correction": correction},
    ).json()
    for result in response["results"] + blank["results"]:
        assert result["is_anomaly"] == (result["score"] > response["threshold"])
        assert 0 <= result["percentile"] <= 100
        expected = result["bits_per_dim"] - (
            result["png_bits_per_dim"] if correction == "png" else 0
        )
        assert result["score"] == pytest.approx(expected)


def test_score_uses_the_calibrations_k_and_refuses_another(client, images, served_checkpoints):
    body = {"model": "ddpm", "images": images[:1], "method": "vlb_mc", "fpr": FPR}
    scored = client.post("/score", json=body)
    assert scored.status_code == 200
    k = scored.json()["k"]
    refused = client.post("/score", json={**body, "k": k + 2})
    assert refused.status_code == 400 and refused.json()["field"] == "k"


def test_score_rejects_an_fpr_the_calibration_cannot_resolve(client, images):
    response = client.post("/score", json={"model": "vae", "images": images, "fpr": 1e-6})
    assert response.status_code == 400
    assert response.json()["field"] == "fpr" and "smallest rate" in response.json()["error"]


def test_vae_encode_then_decode_reconstructs(client, images):
    encoded = client.post(
        "/encode", json={"model": "vae", "images": images, "sample": True, "seed": 1}
    ).json()
    assert np.array(encoded["means"]).shape == (3, 32) == np.array(encoded["samples"]).shape
    decoded = client.post(
        "/decode", json={"model": "vae", "latents": encoded["means"], "output": "array"}
    ).json()
    originals = np.stack([png_pixels(text) for text in images]).astype(float)
    reconstructions = np.array(decoded["arrays"])[:, 0].astype(float)
    # Far closer than to another image's pixels: the latents carry the image.
    own = np.abs(reconstructions - originals).mean()
    shuffled = np.abs(reconstructions - originals[[1, 2, 0]]).mean()
    assert own < shuffled


def test_ddpm_encode_inverts_and_decode_retraces(client, images):
    encoded = client.post("/encode", json={"model": "ddpm", "images": images[:1], "steps": 10})
    body = encoded.json()
    assert np.array(body["latents"]).shape == (1, 1, 28, 28)
    assert body["steps"] == 10 and body["reconstruction_rmse"][0] >= 0
    decoded = client.post(
        "/decode",
        json={"model": "ddpm", "latents": body["latents"], "steps": 10, "output": "array"},
    ).json()
    error = np.abs(np.array(decoded["arrays"][0][0]) - png_pixels(images[0]).astype(int)).max()
    assert error == body["reconstruction_max_pixel_error"][0]


def test_models_returns_configs_and_cards(client, served_checkpoints):
    models = client.post("/models").json()["models"]
    assert set(models) == {"vae", "ddpm"}
    assert models["vae"]["config"]["latent_dim"] == 32
    assert models["ddpm"]["config"]["diffusion"]["num_timesteps"] == 1000
    assert "calibration" in models["vae"]["card"]
    assert models["vae"]["checkpoint"] == str(served_checkpoints["vae"])


def _run_task(client, route, body, timeout_s=120):
    submitted = client.post(f"/{route}/submit", json=body).json()
    task_id = submitted["task_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get(f"/{route}/status", params={"task_id": task_id}).json()["status"]
        if status != "in_progress" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == "completed", status
    return task_id, client.get(f"/{route}/get", params={"task_id": task_id}).json()


def test_sample_task_matches_the_synchronous_endpoint_and_reports_progress(client):
    body = {"model": "ddpm", "n": 1, "seed": 3, "steps": 5}
    task_id, result = _run_task(client, "sample_task", body)
    assert result["images"] == client.post("/sample", json=body).json()["images"]
    progress = client.post("/task_progress", json={"task_id": task_id}).json()
    assert progress == {"task_id": task_id, "done": 5, "total": 5, "fraction": 1.0}


def test_unknown_task_progress_is_a_404(client):
    response = client.post("/task_progress", json={"task_id": "nope"})
    assert response.status_code == 404 and response.json()["field"] == "task_id"


def test_models_and_metrics_show_each_models_cpu_mode_as_chosen_at_start(client):
    """The service measured the candidates at start (ELBO_SERVE_CHANNELS_LAST defaults to
    auto) and serves the admissible one the timings favour; the metric says the same."""
    from models.nn.mode_choice import fastest_admissible

    models = client.post("/models").json()["models"]
    for name, info in models.items():
        mode = info["cpu_mode"]
        assert mode["source"] in ("measured", "cached")
        assert set(mode["seconds"]) >= {"fp32_eager", "channels_last"}
        assert mode["mode"] == fastest_admissible(
            mode["seconds"], mode["bound_diff_bits_per_dim"], mode["tolerance_bits_per_dim"]
        )
        assert mode["bound_diff_bits_per_dim"]["fp32_eager"] == 0.0
        assert mode["machine"]["torch"] == torch.__version__
        labels = {"model": name, "mode": mode["mode"], "source": mode["source"]}
        assert metric_value(client, "elbo_serve_cpu_mode_info", **labels) == 1
        for candidate, calls in mode["seconds"].items():
            for call, seconds in calls.items():
                labels = {"model": name, "mode": candidate, "call": call}
                assert metric_value(client, "elbo_serve_cpu_mode_probe_seconds", **labels) == (
                    pytest.approx(seconds)
                )
