"""The task routes (service/tasks/routes.py) over HTTP: on their own in front of an app that
answers nothing else (no worker runs, so submitted tasks stay queued), and in the service."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from load_tests.serving import free_port
from service.schemas import LikelihoodRequest, SampleRequest
from service.tasks.routes import TaskRoutes
from service.tasks.store import StoreConfig

KINDS = {"sample_task": SampleRequest, "likelihood_task": LikelihoodRequest}
BODY = {"model": "vae", "n": 1, "seed": 0}


def _routes(tmp_path, url: str = "", keys_on: bool = False, **limits) -> TestClient:
    async def ready(request):
        return PlainTextResponse(".")

    app = Starlette(routes=[Route("/readyz", ready)])
    config = StoreConfig(url, str(tmp_path), **limits)
    return TestClient(TaskRoutes(app, kinds=KINDS, config=config, keys_on=keys_on))


def _key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_task_is_answered_only_at_its_own_kind_and_to_its_own_key(tmp_path):
    client = _routes(tmp_path, keys_on=True)
    task_id = client.post("/sample_task/submit", json=BODY, headers=_key("a")).json()["task_id"]
    own = client.get("/sample_task/status", params={"task_id": task_id}, headers=_key("a"))
    assert own.status_code == 200 and own.json()["status"] == "in_progress"
    for path, key in (("/likelihood_task/status", "a"), ("/sample_task/status", "b")):
        other = client.get(path, params={"task_id": task_id}, headers=_key(key))
        assert other.status_code == 404 and other.json()["error"] == "task_id not found"
    progress = client.post("/task_progress", json={"task_id": task_id}, headers=_key("b"))
    assert progress.status_code == 404


def test_a_submit_sent_again_with_its_key_is_the_same_task(tmp_path):
    client = _routes(tmp_path)
    headers = {"Idempotency-Key": "order-17"}
    first = client.post("/sample_task/submit", json=BODY, headers=headers).json()["task_id"]
    again = client.post("/sample_task/submit", json=BODY, headers=headers).json()["task_id"]
    assert again == first
    reused = client.post("/sample_task/submit", json={**BODY, "n": 2}, headers=headers)
    assert reused.status_code == 409 and reused.json()["field"] == "Idempotency-Key"


def test_a_body_the_schema_refuses_is_a_400_at_submit(tmp_path):
    response = _routes(tmp_path).post("/sample_task/submit", json={"model": "vae", "n": 0})
    assert response.status_code == 400 and response.json()["detail"][0]["loc"] == ["n"]


def test_a_canceled_task_says_so_and_has_no_answer(tmp_path):
    client = _routes(tmp_path)
    task_id = client.post("/sample_task/submit", json=BODY).json()["task_id"]
    canceled = client.put("/sample_task/cancel", params={"task_id": task_id})
    assert canceled.json()["status"] == "canceled"
    got = client.get("/sample_task/get", params={"task_id": task_id})
    assert got.status_code == 409


def test_a_full_queue_is_a_429_with_retry_after(tmp_path):
    client = _routes(tmp_path, max_queued=1)
    assert client.post("/sample_task/submit", json=BODY).status_code == 200
    full = client.post("/sample_task/submit", json=BODY)
    assert full.status_code == 429 and int(full.headers["Retry-After"]) > 0


def test_an_unreachable_store_is_a_503_and_readiness_names_it(tmp_path):
    client = _routes(tmp_path, url=f"redis://127.0.0.1:{free_port()}/0")
    refused = client.post("/sample_task/submit", json=BODY)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert refused.json()["field"] == "task_store"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and "unreachable" in ready.json()["degraded"]["task_store"]


@pytest.mark.parametrize("route", ["sample_task", "likelihood_task"])
def test_the_service_answers_a_missing_task_id_with_a_400(client, route):
    response = client.get(f"/{route}/status")
    assert response.status_code == 400 and response.json()["field"] == "task_id"
