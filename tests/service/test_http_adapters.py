"""Uploaded PNG files (multipart/form-data) and GET /models, through the ASGI app."""

import base64

import pytest
from service_testing import png_b64

FPR = 0.25


@pytest.fixture(scope="module")
def png_files(test_images):
    """Three test images as the PNG files a user would upload."""
    return [base64.b64decode(png_b64(image)) for image in test_images[:3]]


def _upload(png_files):
    return [("images", (f"image{i}.png", data, "image/png")) for i, data in enumerate(png_files)]


@pytest.mark.parametrize("endpoint", ["/score", "/likelihood"])
def test_uploaded_png_files_give_the_json_answer(client, png_files, endpoint):
    fields = {"model": "vae", "seed": "3"} | ({"fpr": str(FPR)} if endpoint == "/score" else {})
    uploaded = client.post(endpoint, data=fields, files=_upload(png_files))
    body = {**fields, "seed": 3} | ({"fpr": FPR} if endpoint == "/score" else {})
    as_json = client.post(
        endpoint, json={**body, "images": [base64.b64encode(d).decode() for d in png_files]}
    )
    assert uploaded.status_code == 200, uploaded.text
    assert as_json.status_code == 200, as_json.text
    assert len(uploaded.json()["results"]) == 3
    assert uploaded.json() == as_json.json()


def test_uploaded_file_that_is_not_a_png_is_a_400_naming_the_image(client, png_files):
    files = _upload(png_files[:1]) + [("images", ("notes.txt", b"hello", "text/plain"))]
    response = client.post("/score", data={"model": "vae", "fpr": str(FPR)}, files=files)
    assert response.status_code == 400, response.text
    assert "images[1]" in response.json()["error"]


def test_upload_with_a_bad_form_field_is_a_400_naming_it(client, png_files):
    response = client.post(
        "/score", data={"model": "vae", "fpr": "often"}, files=_upload(png_files[:1])
    )
    assert response.status_code == 400
    assert "fpr" in response.text


def test_a_file_in_a_field_other_than_images_is_a_400(client, png_files):
    files = _upload(png_files[:1]) + [("model", ("model.txt", b"vae", "text/plain"))]
    response = client.post("/score", data={"fpr": str(FPR)}, files=files)
    assert response.status_code == 400
    assert response.json()["field"] == "model"


def test_a_repeated_form_field_is_a_400(client, png_files):
    response = client.post(
        "/score",
        content=(
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nvae\r\n'
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nddpm\r\n--b--\r\n'
        ),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400
    assert response.json()["field"] == "model"


def test_a_malformed_multipart_body_is_a_400_and_the_server_still_serves(client, png_files):
    response = client.post(
        "/score",
        content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert 400 <= response.status_code < 500
    uploaded = client.post(
        "/score", data={"model": "vae", "fpr": str(FPR)}, files=_upload(png_files)
    )
    assert uploaded.status_code == 200


def test_models_answers_get_like_post(client):
    fetched = client.get("/models")
    assert fetched.status_code == 200
    assert fetched.json() == client.post("/models").json()


def _request_scope():
    return {"type": "http", "method": "POST", "path": "/score", "headers": []}


async def _call(middleware, scope):
    messages = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    await middleware(scope, receive, send)
    return messages


def _answer_after(delay_s):
    import asyncio

    async def app(scope, receive, send):
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_request_timeout_answers_504_naming_the_limit():
    import asyncio

    from service.http_adapters import RequestTimeout

    messages = asyncio.run(
        _call(RequestTimeout(_answer_after(5.0), timeout=0.05), _request_scope())
    )
    assert messages[0]["status"] == 504
    assert b"not answered within 0.05 s" in messages[1]["body"]


def test_request_timeout_releases_each_requests_context_once_answered():
    """BentoML's own timeout middleware keeps every request's context (tracing span...)
    alive for the whole timeout; ours must let it go."""
    import asyncio
    import contextvars
    import gc
    import weakref

    from service.http_adapters import RequestTimeout

    per_request = contextvars.ContextVar("per_request")
    middleware = RequestTimeout(_answer_after(0.0), timeout=900)

    class Payload:
        pass

    async def main():
        alive = []
        for _ in range(400):
            payload = Payload()
            alive.append(weakref.ref(payload))
            token = per_request.set(payload)  # as the tracing middleware outside does
            messages = await _call(middleware, _request_scope())
            per_request.reset(token)
            assert messages[0]["status"] == 200
            del payload
        gc.collect()
        return sum(ref() is not None for ref in alive)

    # asyncio drops cancelled timers lazily (once they are over half of 100+), so a few linger.
    assert asyncio.run(main()) < 200


def test_the_served_app_uses_the_leak_free_timeout(client):
    from bentoml._internal.server.http import traffic

    from service.http_adapters import RequestTimeout

    assert traffic.TimeoutMiddleware is RequestTimeout
    stack, app = [], client.app
    while app is not None and len(stack) < 50:
        stack.append(type(app).__name__)
        app = getattr(app, "app", None) or getattr(app, "middleware_stack", None)
    assert "RequestTimeout" in stack and "TimeoutMiddleware" not in stack, stack
