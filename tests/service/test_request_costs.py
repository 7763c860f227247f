"""Long work does not hold up short work, and synchronous requests past the cost ceiling are
sent to the task endpoints (issue 10, finding 5)."""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from service_testing import png_b64

from service.settings import Settings

# Requests past the CPU's default ceiling on any checkpoint of the bundled sizes (tens to
# hundreds of thousands of GFLOP; conftest keeps that ceiling on CUDA too), so they never run
# for real here: a runner double stands in for the work wherever the request is (or, before
# the ceiling, was) run.
IWAE_5000 = {"model": "vae", "method": "iwae", "k": 5000, "seed": 1}  # x 64 images
ANCESTRAL_64 = {"model": "ddpm", "n": 64, "sampler": "ancestral", "seed": 0}


@pytest.fixture(scope="module")
def images(test_images):
    return [png_b64(image) for image in test_images[:64]]


def _submit(client, route, body):
    response = client.post(f"/{route}/submit", json=body)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def _result(client, route, task_id, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while (status := _status(client, route, task_id)) == "in_progress":
        assert time.monotonic() < deadline, f"{route} {task_id} still running"
        time.sleep(0.1)
    assert status == "completed", status
    return client.get(f"/{route}/get", params={"task_id": task_id}).json()


def _status(client, route, task_id):
    return client.get(f"/{route}/status", params={"task_id": task_id}).json()["status"]


def _assert_points_to_the_task(response, task):
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert re.search(r"cost about [\d,]+ GFLOP \(.*evaluations\)", error), error  # the cost
    assert re.search(r"more than the [\d,]+ GFLOP a synchronous request", error)  # ceiling
    assert "_MAX_REQUEST_GFLOP" in error  # the setting behind it
    assert f"POST /{task}/submit" in error  # where to send it


def test_a_bound_past_the_ceiling_is_413_and_the_same_request_runs_as_a_task(
    client, images, monkeypatch
):
    from service import runners

    real_bound = runners.bound

    def one_sample_iwae(method, model, jobs, k, **options):  # the work, with k = 1
        return real_bound(method, model, jobs, k=1, **options)

    monkeypatch.setattr(runners, "bound", one_sample_iwae)
    body = {**IWAE_5000, "images": images}
    _assert_points_to_the_task(client.post("/likelihood", json=body), "likelihood_task")
    result = _result(client, "likelihood_task", _submit(client, "likelihood_task", body))
    assert result["k"] == 5000 and len(result["results"]) == len(images)


def test_sampling_past_the_ceiling_is_413_and_the_same_request_runs_as_a_task(client, monkeypatch):
    import torch

    from service import runners

    def blank_images(kind, ddpm, jobs, **options):
        return [torch.zeros(job.n, *ddpm.image_shape, dtype=torch.uint8) for job in jobs]

    monkeypatch.setattr(runners, "sample", blank_images)
    _assert_points_to_the_task(client.post("/sample", json=ANCESTRAL_64), "sample_task")
    result = _result(client, "sample_task", _submit(client, "sample_task", ANCESTRAL_64))
    assert result["sampler"] == "ancestral" and len(result["images"]) == 64


def _never_run(*args, **kwargs):
    raise AssertionError("a request past the ceiling reached the model")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("encode", {"model": "ddpm", "steps": 1000}, "images"),
        ("decode", {"model": "ddpm", "steps": 1000}, "latents"),
        ("score", {"model": "ddpm", "method": "vlb_exact"}, "images"),
    ],
)
def test_past_the_ceiling_endpoints_say_how_to_split_the_work_or_where_to_send_it(
    client, images, monkeypatch, path, body, field
):
    from service import runners

    for name in ("encode", "decode", "bound"):
        monkeypatch.setattr(runners, name, _never_run)
    if path == "decode":
        body = {**body, "latents": [[[[0.0] * 28] * 28]] * len(images)}
    else:
        body = {**body, "images": images}
    response = client.post(f"/{path}", json=body)
    if response.status_code == 409:
        pytest.skip(f"the model card has no calibration for {body}")
    assert response.status_code == 413, response.text[:300]
    assert response.json()["field"] == field and "fewer images" in response.json()["error"]
    if path == "score":  # /score has a task form (/score_task); encode and decode none
        assert "POST /score_task/submit" in response.json()["error"]


def test_under_the_default_ceiling_the_same_kind_of_request_is_answered(client, images):
    body = {"model": "vae", "images": images[:1], "method": "iwae", "k": 50}
    assert client.post("/likelihood", json=body).status_code == 200


def test_a_single_image_score_answers_while_long_bounds_hold_every_model_lane(
    client, images, monkeypatch
):
    """IWAE requests that would run until told to stop occupy every lane (and one more waits);
    a one-image /score sent meanwhile is answered before any of them finishes. (Synchronous
    requests, not tasks: a replica runs only ELBO_SERVE_TASK_CONCURRENCY tasks at once, one by
    default, so tasks alone never hold every lane.)"""
    from service import runners

    real_bound = runners.bound
    started, finish, finished = threading.Semaphore(0), threading.Event(), []

    def endless_iwae(method, model, jobs, k, **options):
        if method.name != "iwae":
            return (yield from real_bound(method, model, jobs, k=k, **options))
        started.release()
        # One slice per 10 ms until told to finish (a deadline stops a batcher that cannot
        # pause it from hanging the suite: it then fails instead).
        deadline = time.monotonic() + 20
        while not finish.wait(0.01) and time.monotonic() < deadline:
            yield 0, 1
        finished.append(k)
        return (yield from real_bound(method, model, jobs, k=k, **options))

    monkeypatch.setattr(runners, "bound", endless_iwae)
    settings = Settings.from_env()
    lanes = settings.lanes(settings.resolve_device())
    # Distinct k: distinct batch keys, so each task is a call of its own.
    bodies = [
        {"model": "vae", "images": images[:8], "method": "iwae", "k": 2 + i}
        for i in range(lanes + 1)
    ]
    pool = ThreadPoolExecutor(len(bodies))
    answers = [pool.submit(client.post, "/likelihood", json=body) for body in bodies]
    try:
        for _ in range(lanes):  # every lane is inside a long bound now
            assert started.acquire(timeout=30), "the long bounds did not start"
        started_at = time.monotonic()
        scored = client.post("/score", json={"model": "vae", "images": images[:1], "fpr": 0.25})
        waited_s = time.monotonic() - started_at
        assert scored.status_code == 200, scored.text
        assert finished == [], f"/score waited {waited_s:.1f} s, until long work finished"
    finally:
        finish.set()
        pool.shutdown()
    for answer, body in zip(answers, bodies, strict=True):
        assert answer.result().status_code == 200, answer.result().text[:300]
        assert len(answer.result().json()["results"]) == len(body["images"])
    assert sorted(finished) == [body["k"] for body in bodies]
