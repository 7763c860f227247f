"""A request whose client disconnects stops its work: the middleware on fake ASGI messages,
then a real `bentoml serve` whose client closes the connection in the middle of a long
sample."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests
from service_testing import metric_value

from service.disconnects import CancelOnDisconnect

BODY = b'{"model": "ddpm"}'


def _scope(path: str = "/sample") -> dict:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


class _Client:
    """The server's side of one connection: the body, then a disconnect when ``leave()`` is
    called (or, like uvicorn, as soon as the response is complete, unless told not to), and
    what was sent."""

    def __init__(self, body_parts=(BODY,), disconnect_once_answered: bool = True) -> None:
        self.parts = list(body_parts)
        self.disconnect_once_answered = disconnect_once_answered
        self.gone = asyncio.Event()
        self.sent: list[dict] = []

    def leave(self) -> None:
        self.gone.set()

    async def receive(self) -> dict:
        if self.parts:
            body = self.parts.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(self.parts)}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        answered = message["type"] == "http.response.body" and not message.get("more_body")
        if answered and self.disconnect_once_answered:  # as uvicorn does
            self.gone.set()


def _endpoint(body_read: asyncio.Event, work: asyncio.Future, after_response=None):
    """An app that reads the whole body, awaits ``work`` (as an endpoint awaits its batcher
    future) and answers its result; then runs ``after_response`` (a background task)."""

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        body_read.set()
        result = await work
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body + result})
        if after_response is not None:
            await after_response()

    return app


def _other_tasks() -> set[asyncio.Task]:
    return asyncio.all_tasks() - {asyncio.current_task()}


def test_a_client_leaving_after_its_body_cancels_the_request_and_is_counted(caplog):
    abandoned = []

    async def main():
        client, body_read = _Client([b'{"model": ', b'"ddpm"}']), asyncio.Event()
        work = asyncio.get_running_loop().create_future()
        middleware = CancelOnDisconnect(
            _endpoint(body_read, work), endpoints=["/sample"], on_abandoned=abandoned.append
        )
        handling = asyncio.ensure_future(middleware(_scope(), client.receive, client.send))
        await asyncio.wait_for(body_read.wait(), 5)
        client.leave()
        await asyncio.wait_for(handling, 5)  # returns: nobody is left to answer
        assert work.cancelled()  # what the batcher sees: the request's future cancelled
        assert client.sent == []
        assert _other_tasks() == set()

    asyncio.run(main())
    assert abandoned == ["/sample"]
    assert "/sample: the client disconnected" in caplog.text


def test_an_answered_request_is_untouched_and_leaves_no_task_behind():
    abandoned = []

    async def main():
        client, body_read = _Client(), asyncio.Event()
        work = asyncio.get_running_loop().create_future()
        middleware = CancelOnDisconnect(
            _endpoint(body_read, work), endpoints=["/sample"], on_abandoned=abandoned.append
        )
        handling = asyncio.ensure_future(middleware(_scope(), client.receive, client.send))
        await asyncio.wait_for(body_read.wait(), 5)
        assert len(_other_tasks()) == 3  # the request, its app and the watcher
        work.set_result(b" done")
        await asyncio.wait_for(handling, 5)
        assert client.sent == [
            {"type": "http.response.start", "status": 200, "headers": []},
            {"type": "http.response.body", "body": BODY + b" done"},
        ]
        assert _other_tasks() == set()

    asyncio.run(main())
    assert abandoned == []


def test_the_watcher_ends_with_the_request_on_a_server_that_never_says_disconnect():
    async def main():
        client, body_read = _Client(disconnect_once_answered=False), asyncio.Event()
        work = asyncio.get_running_loop().create_future()
        work.set_result(b"")
        middleware = CancelOnDisconnect(_endpoint(body_read, work), on_abandoned=pytest.fail)
        await asyncio.wait_for(middleware(_scope(), client.receive, client.send), 5)
        assert len(client.sent) == 2
        assert _other_tasks() == set()

    asyncio.run(main())


def test_answered_requests_release_their_context():
    """Nothing of an answered request outlives it (a timeout middleware once kept each
    request's context for the whole timeout: RequestTimeout's docstring)."""
    import contextvars
    import gc
    import weakref

    per_request = contextvars.ContextVar("per_request")

    class Payload:
        pass

    async def main():
        alive, connections = [], []
        for _ in range(200):
            payload = Payload()
            alive.append(weakref.ref(payload))
            token = per_request.set(payload)  # as the tracing middleware outside does
            # Open keep-alive connections of a server that never says disconnect: a watcher
            # left waiting on one would hold its request's context.
            client = _Client(disconnect_once_answered=False)
            connections.append(client)
            work = asyncio.get_running_loop().create_future()
            work.set_result(b"")
            middleware = CancelOnDisconnect(_endpoint(asyncio.Event(), work), on_abandoned=print)
            await middleware(_scope(), client.receive, client.send)
            per_request.reset(token)
            del payload, middleware
        await asyncio.sleep(0)  # the last watcher, cancelled, ends at the loop's next turn
        gc.collect()
        return sum(ref() is not None for ref in alive)

    assert asyncio.run(main()) == 0


def test_work_after_the_response_goes_on_when_the_connection_closes():
    """BentoML runs a submitted task in the background of its /submit answer."""
    finished = []

    async def main():
        client, body_read = _Client(), asyncio.Event()
        work = asyncio.get_running_loop().create_future()
        work.set_result(b"")

        async def background():
            await asyncio.sleep(0.05)  # the connection is closed by now
            finished.append(True)

        app = _endpoint(body_read, work, after_response=background)
        middleware = CancelOnDisconnect(app, on_abandoned=pytest.fail)
        await asyncio.wait_for(middleware(_scope(), client.receive, client.send), 5)

    asyncio.run(main())
    assert finished == [True]


def test_a_stream_whose_client_leaves_is_cancelled_and_the_disconnect_is_read_once():
    """Starlette's streaming response listens for the disconnect itself: it must get the
    message the watcher read, not wait on a second read of the server's receive. A path
    that is no endpoint is counted as "other"."""
    from starlette.responses import StreamingResponse

    abandoned, reads = [], []

    async def endless():
        while True:
            await asyncio.sleep(0.01)
            yield "part;"

    async def main():
        client = _Client()

        async def receive():
            reads.append(True)
            return await client.receive()

        middleware = CancelOnDisconnect(
            StreamingResponse(endless()), endpoints=["/sample"], on_abandoned=abandoned.append
        )
        handling = asyncio.ensure_future(middleware(_scope("/x"), receive, client.send))
        await asyncio.sleep(0.05)
        client.leave()
        await asyncio.wait_for(handling, 5)
        assert _other_tasks() == set()

    asyncio.run(main())
    assert abandoned == ["other"]
    assert len(reads) == 2  # the body, then the disconnect, each read once


def test_a_streamed_response_passes_through_whole():
    from starlette.responses import StreamingResponse

    async def chunks():
        for i in range(3):
            await asyncio.sleep(0.01)
            yield f"part {i};"

    async def main():
        client = _Client()
        middleware = CancelOnDisconnect(StreamingResponse(chunks()), on_abandoned=pytest.fail)
        await asyncio.wait_for(middleware(_scope(), client.receive, client.send), 5)
        assert _other_tasks() == set()
        return client.sent

    sent = asyncio.run(main())
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"part 0;part 1;part 2;"
    assert sent[-1]["type"] == "http.response.body" and not sent[-1].get("more_body")


def test_a_cancellation_from_outside_still_propagates():
    """The request timeout (outside) cancels the request: that is no client leaving."""

    async def main():
        client, body_read = _Client(), asyncio.Event()
        work = asyncio.get_running_loop().create_future()
        middleware = CancelOnDisconnect(_endpoint(body_read, work), on_abandoned=pytest.fail)
        handling = asyncio.ensure_future(middleware(_scope(), client.receive, client.send))
        await asyncio.wait_for(body_read.wait(), 5)
        handling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handling
        assert work.cancelled()
        assert _other_tasks() == set()

    asyncio.run(main())


def test_abandoned_requests_are_counted_by_endpoint():
    from service import metrics
    from service.disconnects import count_abandoned

    counter = metrics.REQUESTS_ABANDONED.labels("/decode")
    before = counter._value.get()
    count_abandoned("/decode")
    assert counter._value.get() == before + 1


# A real `bentoml serve` ------------------------------------------------------------------

# DDPM ancestral sampling runs all T = 1000 network calls of the bundled checkpoint: one image
# took 157 s to answer on this project's (shared) 2-core CPU, one torch thread; its client
# leaves after a second.
LONG_SAMPLE = {"model": "ddpm", "n": 1, "seed": 11, "sampler": "ancestral"}
QUICK_SAMPLE = {"model": "ddpm", "n": 1, "seed": 7, "steps": 3}
SAMPLE_CALLS = {"model": "ddpm", "operation": "sample"}


class _Over:
    """What :func:`metric_value` reads /metrics with, over real HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)


def _post_and_leave(server_url: str, path: str, body: dict, after_s: float) -> None:
    """POST ``body``, then close the connection ``after_s`` later, unanswered."""
    address = urlsplit(server_url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head + payload)
        time.sleep(after_s)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # no answer yet: the work is still running
            sock.recv(1)


def test_real_server_stops_a_sample_whose_client_left_and_serves_on(server_url):
    server = _Over(server_url)
    reference = requests.post(f"{server_url}/sample", json=QUICK_SAMPLE, timeout=60)
    assert reference.status_code == 200, reference.text
    abandoned = metric_value(server, "elbo_serve_requests_abandoned_total", endpoint="/sample")
    stopped = metric_value(server, "elbo_serve_batches_stopped_total", **SAMPLE_CALLS)
    calls = metric_value(server, "elbo_serve_batch_items_count", **SAMPLE_CALLS)

    _post_and_leave(server_url, "/sample", LONG_SAMPLE, after_s=1.0)
    left = time.monotonic()
    while (
        metric_value(server, "elbo_serve_batches_stopped_total", **SAMPLE_CALLS) == stopped
        and time.monotonic() - left < 10
    ):
        time.sleep(0.1)
    seconds_to_stop = time.monotonic() - left

    # The batcher stopped the call part-way, seconds after the client left...
    assert metric_value(server, "elbo_serve_batches_stopped_total", **SAMPLE_CALLS) == (
        stopped + 1
    ), "the sample ran on after its client left"
    assert seconds_to_stop < 5
    endpoint = "/sample"
    assert metric_value(server, "elbo_serve_requests_abandoned_total", endpoint=endpoint) == (
        abandoned + 1
    )
    # ...and the server goes on: the same quick request gets the same images.
    again = requests.post(f"{server_url}/sample", json=QUICK_SAMPLE, timeout=60)
    assert again.status_code == 200, again.text
    assert again.json()["images"] == reference.json()["images"]
    # The only sampling call completed since is the quick one: the long one never finished.
    assert metric_value(server, "elbo_serve_batch_items_count", **SAMPLE_CALLS) == calls + 1
