"""A request body over ELBO_SERVE_MAX_BODY_BYTES is a 413 answered before the rest of the
body is read: by its declared Content-Length, or counted as a chunked body arrives."""

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

VAE_LATENT = [0.0] * 32


def _json_padded_to(size: int) -> bytes:
    """A valid /decode body of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    body = json.dumps({"model": "vae", "latents": [VAE_LATENT]}).encode()
    return body + b" " * (size - len(body))


@pytest.fixture(scope="module")
def limit(client):
    from service.service import SETTINGS

    return SETTINGS.max_body_bytes


# The middleware alone, on ASGI messages -------------------------------------------------


class RecordingApp:
    def __init__(self):
        self.called = False
        self.body = b""

    async def __call__(self, scope, receive, send):
        self.called = True
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.after_body = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _serve(max_bytes, headers, chunks):
    """Run BodySizeLimit over RecordingApp; the client sends ``chunks`` (bytes each) on
    demand. Returns (app, messages sent back, how many chunks the middleware asked for)."""
    from service.http_adapters import BodySizeLimit

    app = RecordingApp()
    scope = {"type": "http", "method": "POST", "path": "/score", "headers": headers}
    asked = 0
    messages = []

    async def receive():
        nonlocal asked
        if asked == len(chunks):
            return {"type": "http.disconnect"}
        asked += 1
        return {"type": "http.request", "body": chunks[asked - 1], "more_body": asked < len(chunks)}

    async def send(message):
        messages.append(message)

    asyncio.run(BodySizeLimit(app, max_bytes=max_bytes)(scope, receive, send))
    return app, messages, asked


def _status_and_json(messages):
    return messages[0]["status"], json.loads(messages[1]["body"])


def test_a_declared_length_over_the_limit_is_refused_before_any_of_the_body_is_read():
    headers = [(b"content-length", b"101")]
    app, messages, asked = _serve(100, headers, [b"x" * 101])
    status, payload = _status_and_json(messages)
    assert (status, payload["field"], asked, app.called) == (413, "body", 0, False)
    assert "101 bytes is over the limit of 100 bytes" in payload["error"]
    assert (b"connection", b"close") in messages[0]["headers"]


def test_a_declared_length_at_the_limit_passes_through_untouched():
    app, messages, _ = _serve(100, [(b"content-length", b"100")], [b"x" * 100])
    assert messages[0]["status"] == 200 and app.body == b"x" * 100


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit():
    chunks = [b"x" * 30] * 10  # 300 bytes, in chunks of 30
    app, messages, asked = _serve(100, [(b"transfer-encoding", b"chunked")], chunks)
    status, payload = _status_and_json(messages)
    assert (status, payload["field"]) == (413, "body")
    assert asked == 4, "read past the chunk that crossed the limit (120 > 100 bytes)"
    assert not app.called


def test_a_chunked_body_within_the_limit_reaches_the_app_whole():
    chunks = [b"x" * 30, b"y" * 30, b"z" * 40]  # exactly 100 bytes
    app, messages, asked = _serve(100, [(b"transfer-encoding", b"chunked")], chunks)
    assert messages[0]["status"] == 200
    assert app.body == b"".join(chunks)
    # Once the body is replayed, the app hears the connection itself (here: a disconnect).
    assert app.after_body == {"type": "http.disconnect"}


def test_a_request_without_a_body_passes_through():
    app, messages, _ = _serve(100, [], [b""])
    assert messages[0]["status"] == 200 and app.called


def test_an_unreadable_content_length_is_a_400():
    app, messages, _ = _serve(100, [(b"content-length", b"lots")], [b""])
    assert messages[0]["status"] == 400 and not app.called


# The served app, in-process -------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_a_413_and_no_byte_of_it_is_read(client, limit):
    started = []

    def body():
        started.append(True)
        yield b"{}"

    response = client.post(
        "/decode",
        content=body(),
        headers={"Content-Type": "application/json", "Content-Length": str(limit + 1)},
    )
    assert response.status_code == 413, response.text
    assert response.json()["field"] == "body"
    assert f"over the limit of {limit} bytes" in response.json()["error"]
    assert not started


def test_a_chunked_body_over_the_limit_is_a_413(client, limit):
    def body():
        yield from [b" " * (1 << 20)] * (limit // (1 << 20) + 1)

    response = client.post("/decode", content=body(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["field"] == "body"


def test_a_multipart_upload_over_the_limit_is_a_413_before_it_is_parsed(client, limit):
    files = [("images", ("big.png", b"\0" * (limit + 1), "image/png"))]
    response = client.post("/score", data={"model": "vae"}, files=files)
    assert response.status_code == 413, response.text


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_at_the_limit_is_served(client, limit, framing):
    body = _json_padded_to(limit)
    halves = iter([body[: limit // 2], body[limit // 2 :]])  # httpx sends an iterator chunked
    content = body if framing == "content-length" else halves
    response = client.post("/decode", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


def test_the_server_serves_after_refusing_bodies(client, limit):
    refused = client.post("/sample", content=b"{}", headers={"Content-Length": str(10 * limit)})
    assert refused.status_code == 413
    assert client.post("/sample", json={"model": "vae", "n": 1, "seed": 0}).status_code == 200
    assert client.get("/readyz").status_code == 200


# A real `bentoml serve`, over a socket ---------------------------------------------------


def _post_raw(server_url, head: bytes, body_parts, timeout_s=10.0):
    """Send a POST's head and then ``body_parts`` (stopping early if the server answers or
    closes); return the response's status line and body, and how many parts were sent."""
    address = urlsplit(server_url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout_s) as sock:
        sock.sendall(head)
        sent = 0
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        reply = b""
        while b"\r\n\r\n" not in reply or not _complete(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    head_text, _, body = reply.partition(b"\r\n\r\n")
    return head_text.split(b"\r\n")[0].decode(), body, sent


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_real_server_refuses_a_declared_body_over_the_limit_without_reading_it(server_url, limit):
    head = (
        b"POST /likelihood HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (64 * limit)
    )
    start = time.monotonic()
    status, body, _ = _post_raw(server_url, head, [b"{"])  # 1 byte sent of 1 GiB declared
    assert " 413 " in status, (status, body)
    assert json.loads(body)["field"] == "body"
    assert time.monotonic() - start < 10


def test_real_server_stops_reading_a_chunked_body_at_the_limit(server_url, limit):
    head = (
        b"POST /likelihood HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * (1 << 16)
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    parts = limit // len(chunk) + 1  # one chunk past the limit; the last chunk is never sent
    # An answer at all means the server did not wait for the end of the body (which a whole
    # body needs: the terminating zero-length chunk, never sent here).
    status, body, _ = _post_raw(server_url, head, [frame] * parts)
    assert " 413 " in status, (status, body)
    assert json.loads(body)["field"] == "body"
    served = requests.post(f"{server_url}/sample", json={"model": "vae", "seed": 1}, timeout=60)
    assert served.status_code == 200
