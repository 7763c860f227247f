"""The task routes, answered from the task store by whichever replica receives them.

``POST /<kind>/submit`` (optional ``Idempotency-Key`` header), ``GET /<kind>/status``,
``GET /<kind>/get``, ``PUT|POST /<kind>/cancel`` (``?task_id=``) and ``POST /task_progress``
keep the shapes BentoML's task routes had. A task is answered only at its own kind's routes
and, with API keys on, only to the key that submitted it (else 404, as for an unknown id). An
unreachable store is a 503 and a full queue a 429, both with ``Retry-After``; every other
route keeps serving. ``GET /readyz`` keeps the service's answer and, when the store is down,
says so in its body (the replica still serves the synchronous routes, so it stays in the
balancer).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RequestError, _describe, error_response, log_client_error
from service.tasks import open_store
from service.tasks.store import (
    CANCELED,
    FAILED,
    FINISHED,
    KeyReusedError,
    QueueFullError,
    StoreConfig,
    StoreUnavailableError,
    TaskRecord,
)

PROGRESS_PATH = "/task_progress"
RETRY_AFTER_S = 5
MAX_KEY_LENGTH = 200
# BentoML's statuses: a queued task is 'in_progress' too, as clients poll until it is not.
PUBLIC_STATUS = {"queued": "in_progress", "running": "in_progress"}


class TaskError(Exception):
    def __init__(
        self, status: int, field: str, message: str, retry_after: bool = False, text: str = ""
    ):
        super().__init__(text or f"{field}: {message}")
        self.status, self.field, self.retry_after = status, field, retry_after


def owner_of(scope: Scope, keys_on: bool) -> str:
    """Who submitted: a digest of the bearer key when API keys are on (ApiKeys let only known
    keys through), else everyone is one owner."""
    if not keys_on:
        return ""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return hashlib.sha256(value.partition(b" ")[2].strip()).hexdigest()[:32]
    return ""


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def status_body(record: TaskRecord) -> dict[str, Any]:
    return {
        "task_id": record.task_id,
        "status": PUBLIC_STATUS.get(record.status, record.status),
        "created_at": _iso(record.created_at),
        "executed_at": _iso(record.executed_at),
        "completed_at": _iso(record.completed_at),
        "attempts": record.attempts,
        "error": record.error if record.status == FAILED else None,
    }


class TaskRoutes:
    def __init__(
        self,
        app: ASGIApp,
        kinds: Mapping[str, type[BaseModel]],
        config: StoreConfig,
        keys_on: bool,
        check: Callable[[BaseModel], None] | None = None,
    ) -> None:
        """``check(request)``: raises a RequestError (or a kind's OptionError) for a valid
        body the task would refuse when it runs (an option the model does not take, an
        unreadable image), so that the submission is refused at once instead."""
        self.app, self.kinds, self.config, self.keys_on = app, dict(kinds), config, keys_on
        self.check = check
        self.routes = {
            ("POST", "submit"): self._submit,
            ("GET", "status"): self._status,
            ("GET", "get"): self._get,
            ("PUT", "cancel"): self._cancel,
            ("POST", "cancel"): self._cancel,
        }

    @property
    def store(self):
        return open_store(self.config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == "/readyz" and method == "GET":
            await self._readiness(scope, receive, send)
            return
        kind, _, action = path.strip("/").partition("/")
        allowed = self._allowed(path, kind, action)
        if path == PROGRESS_PATH and method == "POST":
            handler, kind = self._progress, None
        elif kind in self.kinds and (method, action) in self.routes:
            handler = self.routes[(method, action)]
        elif allowed:  # a task route, another method: 405 naming the ones it takes
            error = TaskError(405, "method", f"{path} takes {' or '.join(allowed)}")
            response = self._error(error, path)
            response.headers["Allow"] = ", ".join(allowed)
            await response(scope, receive, send)
            return
        else:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request, kind, owner_of(scope, self.keys_on))
        except TaskError as error:
            response = self._error(error, path)
        except StoreUnavailableError as error:
            message = f"the task store is unavailable ({error}); synchronous routes still serve"
            response = self._error(TaskError(503, "task_store", message, True), path)
        await response(scope, receive, send)

    def _allowed(self, path: str, kind: str, action: str) -> list[str]:
        """The methods a task route takes (none: not a task route)."""
        if path == PROGRESS_PATH:
            return ["POST"]
        if kind not in self.kinds:
            return []
        return [method for method, name in self.routes if name == action]

    def _error(self, error: TaskError, path: str) -> Response:
        log_client_error(path, error.status, str(error))
        body = {"error": str(error), "field": error.field}
        headers = {"Retry-After": str(RETRY_AFTER_S)} if error.retry_after else None
        return JSONResponse(body, status_code=error.status, headers=headers)

    # Routes --------------------------------------------------------------------------------

    async def _submit(self, request: Request, kind: str, owner: str) -> Response:
        body = await request.body()
        try:
            parsed = self.kinds[kind].model_validate_json(body)
        except ValidationError as error:
            # Without the input: a body that is not UTF-8 cannot be written back as JSON.
            detail = json.loads(
                error.json(include_url=False, include_context=False, include_input=False)
            )
            return JSONResponse({"error": _describe(error), "detail": detail}, status_code=400)
        if self.check is not None:
            from models.kinds import OptionError

            try:
                self.check(parsed)
            except OptionError as error:
                return error_response(RequestError(error.field, error.message), request.url.path)
            except RequestError as error:
                return error_response(error, request.url.path)
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
            raise TaskError(400, "Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} characters")
        try:
            record = await self.store.submit(kind, owner, body, key)
        except QueueFullError as full:
            message = f"{full} tasks are waiting, the most the queue holds; submit again later"
            raise TaskError(429, "queue", message, retry_after=True) from full
        except KeyReusedError as reused:
            message = f"{reused} was sent before with a different body; use a new key"
            raise TaskError(409, "Idempotency-Key", message) from reused
        return JSONResponse({"task_id": record.task_id, "status": status_body(record)["status"]})

    async def _find(self, request: Request, kind: str | None, owner: str) -> TaskRecord:
        task_id = request.query_params.get("task_id")
        if kind is None:  # /task_progress: the id is in the JSON body
            try:
                task_id = json.loads(await request.body()).get("task_id")
            except (ValueError, AttributeError):
                raise TaskError(400, "body", "expected a JSON object with task_id") from None
        if not isinstance(task_id, str) or not task_id:
            raise TaskError(400, "task_id", "is required")
        record = await self.store.record(task_id)
        if record is None or record.owner != owner or kind not in (None, record.kind):
            # BentoML's words, which clients may match; also for another kind's or key's id.
            raise TaskError(404, "task_id", "not found", text="task_id not found")
        return record

    async def _status(self, request: Request, kind: str, owner: str) -> Response:
        return JSONResponse(status_body(await self._find(request, kind, owner)))

    async def _get(self, request: Request, kind: str, owner: str) -> Response:
        record = await self._find(request, kind, owner)
        # A task that has no answer to give (yet) is in a state that conflicts with the
        # request, not a bad request: 409, as the published contract says.
        if record.status not in FINISHED:
            raise TaskError(409, "task_id", f"task {record.task_id} is not completed yet")
        if record.status == CANCELED:
            raise TaskError(409, "task_id", f"task {record.task_id} was canceled")
        result = await self.store.result(record.task_id)
        if result is None:  # failed without an answer: its attempts ran out
            raise TaskError(500, "task_id", f"task {record.task_id} failed: {record.error}")
        status = result.status_code
        if 400 <= status < 500:  # the task's request was refused when it ran: its error, 409
            status = 409
        return Response(result.body, status, media_type="application/json")

    async def _cancel(self, request: Request, kind: str, owner: str) -> Response:
        record = await self._find(request, kind, owner)
        return JSONResponse(status_body(await self.store.cancel(record.task_id) or record))

    async def _progress(self, request: Request, kind: None, owner: str) -> Response:
        record = await self._find(request, None, owner)
        if record.total <= 0:
            raise TaskError(
                409, "task_id", f"no progress recorded for task {record.task_id!r} (yet)"
            )
        return JSONResponse(
            {
                "task_id": record.task_id,
                "done": record.done,
                "total": record.total,
                "fraction": record.done / record.total,
            }
        )

    # Readiness ------------------------------------------------------------------------------

    async def _readiness(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)
        status = messages[0].get("status") if messages else 500
        if status == 200:
            try:
                await self.store.ping()
            except StoreUnavailableError as error:
                body = {"ready": True, "degraded": {"task_store": str(error)}}
                await JSONResponse(body)(scope, receive, send)
                return
        for message in messages:
            await send(message)
