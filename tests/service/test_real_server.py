"""The service as users run it: `bentoml serve` from the repository root on a loopback port,
called with BentoML's own HTTP client."""

import time

import pytest
import requests
from service_testing import png_b64


@pytest.fixture(scope="module")
def bento_client(server_url):
    import bentoml

    # Sampling and exact bounds take minutes at worst on CPU: far past the 30 s default.
    with bentoml.SyncHTTPClient(server_url, timeout=600) as client:
        yield client


def test_every_endpoint_over_real_http(bento_client, server_url, test_images):
    images = [png_b64(image) for image in test_images[:2]]
    sampled = bento_client.sample(model="vae", n=2, seed=5)
    assert len(sampled["images"]) == 2
    assert bento_client.sample(model="vae", n=2, seed=5)["images"] == sampled["images"]
    ddim = bento_client.sample(model="ddpm", n=1, seed=5, steps=3, output="grid")
    assert ddim["grid"] and ddim["steps"] == 3
    bound = bento_client.likelihood(model="vae", images=images, method="iwae", k=16)
    assert len(bound["results"]) == 2
    scored = bento_client.score(model="vae", images=images, fpr=0.25, correction="png")
    assert all("is_anomaly" in result for result in scored["results"])
    encoded = bento_client.encode(model="vae", images=images)
    decoded = bento_client.decode(model="vae", latents=encoded["means"])
    assert len(decoded["images"]) == 2
    assert set(bento_client.models()["models"]) == {"vae", "ddpm"}
    assert requests.get(f"{server_url}/livez", timeout=5).status_code == 200
    metrics = requests.get(f"{server_url}/metrics", timeout=5).text
    assert 'elbo_serve_images_generated_total{model="vae",sampler="prior"}' in metrics


def test_task_submit_status_get(bento_client, server_url):
    # Over plain HTTP: SyncHTTPClient's task .submit() is broken in bentoml 1.4.39
    # (AttributeError: '_opened_files'); the routes themselves are what curl users call.
    body = {"model": "ddpm", "n": 1, "seed": 2, "steps": 4}
    task_id = requests.post(f"{server_url}/sample_task/submit", json=body, timeout=30).json()[
        "task_id"
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = requests.get(
            f"{server_url}/sample_task/status", params={"task_id": task_id}, timeout=30
        ).json()["status"]
        if status != "in_progress":
            break
        time.sleep(0.2)
    assert status == "completed"
    result = requests.get(f"{server_url}/sample_task/get", params={"task_id": task_id}, timeout=30)
    assert result.json()["images"] == bento_client.sample(**body)["images"]
    assert bento_client.task_progress(task_id=task_id)["fraction"] == 1.0


def test_bad_input_over_real_http_is_a_400_and_the_server_goes_on(server_url, bento_client):
    response = requests.post(f"{server_url}/sample", json={"model": "vae", "n": 0}, timeout=30)
    assert response.status_code == 400 and "n" in response.text
    response = requests.post(
        f"{server_url}/likelihood", json={"model": "vae", "images": ["xx"]}, timeout=30
    )
    assert response.status_code == 400 and response.json()["field"] == "images[0]"
    assert bento_client.sample(model="vae", n=1, seed=0)["n"] == 1
