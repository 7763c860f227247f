"""Optional API keys: off by default; when set, every route but health and metrics needs
``Authorization: Bearer <key>``, and a missing or wrong key is a 401 that says what to send."""

from __future__ import annotations

import asyncio
import json

import pytest
from service_fixtures import API_KEYS

from service.auth import HEALTH_PATHS, ApiKeys
from service.settings import Settings, read_api_keys


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


def _call(middleware: ApiKeys, path: str, authorization: bytes | None = None):
    headers = [(b"authorization", authorization)] if authorization is not None else []
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def test_without_keys_every_request_is_served():
    assert _call(ApiKeys(_app, (), HEALTH_PATHS), "/score")[0] == 200


@pytest.mark.parametrize(
    "authorization", [None, b"Bearer wrong", b"Basic c2VjcmV0", b"Bearer", b"secret"]
)
def test_a_missing_or_wrong_key_is_a_401_that_says_what_to_send(authorization):
    status, headers, body = _call(ApiKeys(_app, ("secret",), HEALTH_PATHS), "/score", authorization)
    assert status == 401
    assert headers[b"www-authenticate"] == b"Bearer"
    payload = json.loads(body)
    assert payload["field"] == "authorization" and "Authorization: Bearer" in payload["error"]


def test_any_configured_key_is_accepted():
    middleware = ApiKeys(_app, ("first", "second"), HEALTH_PATHS)
    assert _call(middleware, "/score", b"Bearer second") == (200, {}, b"served")
    assert _call(middleware, "/score", b"bearer first")[0] == 200  # the scheme is any case


def test_health_and_metrics_are_open_unless_closed_by_setting():
    open_health = ApiKeys(_app, ("secret",), HEALTH_PATHS)
    closed = ApiKeys(_app, ("secret",), ())
    for path in ("/livez", "/readyz", "/metrics"):
        assert _call(open_health, path)[0] == 200
        assert _call(closed, path)[0] == 401
    assert _call(open_health, "/docs.json")[0] == 401


def test_keys_come_from_the_environment_and_a_file(tmp_path, monkeypatch):
    assert Settings.from_env().api_keys == ()
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nfrom-file\n\n  spaced  \n")
    monkeypatch.setenv("ELBO_SERVE_API_KEYS", "inline-1, inline-2,")
    monkeypatch.setenv("ELBO_SERVE_API_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("ELBO_SERVE_AUTH_HEALTH", "true")
    settings = Settings.from_env()
    assert settings.api_keys == ("inline-1", "inline-2", "from-file", "spaced")
    assert settings.auth_health
    assert read_api_keys("", "") == ()


@pytest.mark.slow
def test_a_real_server_with_keys_needs_one_and_keeps_health_open(keyed_server_url):
    import requests

    url = keyed_server_url
    body = {"model": "vae", "n": 1, "seed": 0}
    refused = requests.post(f"{url}/sample", json=body, timeout=60)
    assert refused.status_code == 401 and refused.json()["field"] == "authorization"
    headers = {"Authorization": f"Bearer {API_KEYS[-1]}"}  # any of the keys, not only the first
    served = requests.post(f"{url}/sample", json=body, headers=headers, timeout=60)
    assert served.status_code == 200 and len(served.json()["images"]) == 1
    assert requests.get(f"{url}/metrics", timeout=10).status_code == 200
