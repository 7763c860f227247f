"""Stop the work of a request whose client has gone away.

BentoML 1.4.39 and Starlette run an endpoint to its end even after its client has closed the
connection (a client-side timeout, a user's Ctrl-C): a ``/decode`` was seen running 560-900 s
for nobody, holding a model lane and holding up a graceful drain. The server does say so:
once the app has read the request body, ASGI's ``receive()`` answers
``{"type": "http.disconnect"}`` when the connection closes. :class:`CancelOnDisconnect`
listens for it and cancels the request's handling. The endpoint's awaited batcher future is
cancelled with it, so the batcher skips the job if it is still queued, and stops a
progressive batch whose requests have all gone at its next slice (service/batching.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("elbo_serve")
OTHER_ENDPOINT = "other"


def count_abandoned(endpoint: str) -> None:
    """``elbo_serve_requests_abandoned_total{endpoint}`` += 1 (imported here, in the worker:
    see service/metrics.py)."""
    from service import metrics

    metrics.REQUESTS_ABANDONED.labels(endpoint).inc()


def _completes_response(message: Message) -> bool:
    if message["type"] == "http.response.pathsend":
        return True
    return message["type"] == "http.response.body" and not message.get("more_body", False)


class _Connection:
    """The app's view of one request's ``receive`` and ``send``.

    The app's reads go through to the server until the body's last chunk; then one watcher
    task becomes the only reader of the server's ``receive()`` (the next message of an HTTP
    request can only be its disconnect), and any later read of the app's gets the watcher's
    message too: nothing is taken from the app, nothing read twice.
    """

    def __init__(self, receive: Receive, send: Send, on_disconnect: Callable[[], None]) -> None:
        self._receive, self._send = receive, send
        self._on_disconnect = on_disconnect
        self._watcher: asyncio.Future[Message] | None = None
        self.response_complete = False

    async def receive(self) -> Message:
        if self._watcher is not None:
            # Shielded: an app that stops waiting (Starlette's is_disconnected) must not
            # cancel the watcher.
            return await asyncio.shield(self._watcher)
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self._watcher = asyncio.ensure_future(self._receive())
            self._watcher.add_done_callback(self._heard)
        return message

    async def send(self, message: Message) -> None:
        if _completes_response(message):
            # Before the server hears of it: once the response is complete, uvicorn's
            # receive() answers http.disconnect at once, which is no client leaving.
            self.response_complete = True
        await self._send(message)

    def _heard(self, watcher: asyncio.Future[Message]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return  # the request ended first, or the server's receive failed (the app hears)
        if watcher.result()["type"] == "http.disconnect" and not self.response_complete:
            self._on_disconnect()

    def close(self) -> None:
        """Stop watching: the request is over (else the watcher would keep the server's
        request cycle alive)."""
        if self._watcher is not None and not self._watcher.done():
            self._watcher.remove_done_callback(self._heard)
            self._watcher.cancel()


class CancelOnDisconnect:
    """Cancel a request's handling when its client disconnects before the response is
    complete, and count it with ``on_abandoned(endpoint)``.

    The app runs as a task of its own (as in :class:`service.http_adapters.RequestTimeout`),
    reading and answering through a :class:`_Connection`. A disconnect heard after the body
    and before the response's last body message cancels that task, and the request ends
    without an answer (there is nobody to answer), logged as one WARNING line. Once the
    response is complete nothing is cancelled: background work that runs after it (BentoML's
    tasks) goes on. Requests whose app never reads the whole body (a 413, a GET answered
    unread) are not watched.

    ``endpoints``: the paths that label the counter as themselves; any other path is counted
    as ``"other"``, so that clients cannot make labels.
    """

    def __init__(
        self,
        app: ASGIApp,
        endpoints: Collection[str] = (),
        on_abandoned: Callable[[str], None] = count_abandoned,
    ) -> None:
        self.app = app
        self.endpoints = frozenset(endpoints)
        self.on_abandoned = on_abandoned

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        abandoned, start = False, time.monotonic()

        def cancel_handling() -> None:
            nonlocal abandoned
            if not handling.done():
                abandoned = True
                handling.cancel()
                path = scope["path"]
                endpoint = path if path in self.endpoints else OTHER_ENDPOINT
                logger.warning(
                    "%s: the client disconnected %.1f s in, before its answer; cancelled",
                    endpoint,
                    time.monotonic() - start,
                )
                self.on_abandoned(endpoint)

        connection = _Connection(receive, send, cancel_handling)
        handling = asyncio.ensure_future(self.app(scope, connection.receive, connection.send))
        try:
            await handling
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not abandoned or (current is not None and current.cancelling()):
                raise  # cancelled from outside (the request timeout, a shutdown)
        finally:
            connection.close()
            if not handling.done():
                handling.cancel()
