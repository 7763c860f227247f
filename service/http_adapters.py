"""ASGI middlewares that let plain HTTP clients reach the JSON endpoints, within limits.

- :class:`BodySizeLimit`: a request body over ``ELBO_SERVE_MAX_BODY_BYTES`` is answered 413
  before the rest of it is read (BentoML and uvicorn have no limit of their own).
- :class:`MultipartImages`: a ``multipart/form-data`` POST (``curl -F images=@shirt.png
  -F model=vae``) becomes the equivalent JSON body, each uploaded ``images`` part one base64 PNG,
  so uploads meet exactly the validation and 400s of JSON requests. We convert here instead of
  declaring a file-typed field because BentoML fills file fields from URLs (it fetches them)
  and from server-side paths given in JSON; an image service must do neither.
- :class:`GetModels`: ``GET /models`` answers like ``POST /models`` (BentoML routes every API
  as POST; a read-only listing is a GET to most clients).
- :class:`PublishedContract`: ``GET /docs.json`` answers BentoML's OpenAPI document corrected
  to what the service answers (service/openapi.py).
- :class:`RequestTimeout`: BentoML's request timeout without its per-request timer leak;
  :func:`use_leak_free_timeout` puts it where BentoML builds its own.

:func:`install_http_adapters` also puts :class:`service.disconnects.CancelOnDisconnect` in
front of them: a request whose client disconnects stops its work.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTooLargeError, RequestError, error_response
from service.schemas import MAX_IMAGES
from service.settings import Settings

IMAGES_FIELD = "images"
# Fashion-MNIST PNGs are under 1 kB; 1 MiB per part leaves room for any 8-bit 28x28 PNG.
MAX_PART_BYTES = 1 << 20
MAX_FIELDS = 64


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class BodySizeLimit:
    """Answer 413 to a request body over ``max_bytes`` without reading the rest of it.

    A declared ``Content-Length`` over the limit is refused before any of the body is read
    (the server frames a body by its declared length, so one within the limit passes through
    untouched). A chunked body, whose length nobody declares, is read here and counted as it
    arrives: refused as soon as it passes the limit, else handed on whole. Without a limit, a
    200 MB JSON body was read and parsed (400 after 2.4 s) and the worker kept 824 MB of RSS
    (issue 10).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                unreadable = RequestError("body", f"Content-Length {declared!r} is not a size")
                await error_response(unreadable, scope["path"])(scope, receive, send)
            elif int(declared) > self.max_bytes:
                await self._refuse(f"{int(declared)} bytes", scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if _header(scope, b"transfer-encoding") is None:  # no body
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(f"at least {size} bytes", scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay_body(b"".join(chunks), receive), send)

    async def _refuse(self, size: str, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLargeError(
            "body",
            f"{size} is over the limit of {self.max_bytes} bytes (ELBO_SERVE_MAX_BODY_BYTES); "
            "send fewer images per request",
        )
        response = error_response(error, scope["path"])
        # The rest of the body is never read: the connection cannot carry another request.
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def _replay_body(body: bytes, receive: Receive) -> Receive:
    """The whole body as one message, then the connection's own messages (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _is_multipart_post(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    content_type = _header(scope, b"content-type") or b""
    return content_type.split(b";")[0].strip().lower() == b"multipart/form-data"


def _form_value(text: str, is_text: bool = False) -> Any:
    """Form fields are text: numbers, booleans and arrays arrive as JSON, the rest as strings
    (the convention of BentoML's own multipart parser). A field the request schema declares
    a string (``is_text``) stays the text sent, so a method named ``0`` is the string '0';
    ``null`` is a null there too (how a form sends an unset optional field)."""
    if is_text:
        return None if text == "null" else text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


async def _image_part(value: str | UploadFile) -> Any:
    if isinstance(value, UploadFile):
        return base64.b64encode(await value.read()).decode("ascii")
    return _form_value(value)  # a base64 PNG or a JSON nested array, as in JSON bodies


async def form_to_json(form: Any, text_fields: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The JSON body a multipart form stands for: repeated ``images`` parts make the list;
    ``text_fields``: the fields the request schema declares strings."""
    body: dict[str, Any] = {}
    images: list[Any] = []
    for key, value in form.multi_items():
        if key == IMAGES_FIELD:
            images.append(await _image_part(value))
        elif isinstance(value, UploadFile):
            raise RequestError(key, f"only '{IMAGES_FIELD}' parts may be files")
        elif key in body:
            raise RequestError(key, "given more than once")
        else:
            body[key] = _form_value(value, key in text_fields)
    if images:
        body[IMAGES_FIELD] = images
    return body


def text_fields(schema: type[Any]) -> frozenset[str]:
    """The fields of a pydantic request model whose values are strings (plain, enums of
    strings, nullable or not): a form sends them as they are, not as JSON."""
    properties = schema.model_json_schema()["properties"]
    return frozenset(
        name
        for name, field in properties.items()
        if field.get("type") == "string"
        or (field.get("enum") and all(isinstance(v, str | None) for v in field["enum"]))
    )


class MultipartImages:
    """``text_fields``: route -> the fields its request schema declares strings."""

    def __init__(
        self, app: ASGIApp, text_fields: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        self.app = app
        self.text_fields = dict(text_fields or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_multipart_post(scope):
            await self.app(scope, receive, send)
            return
        try:
            async with Request(scope, receive).form(
                max_files=MAX_IMAGES, max_fields=MAX_FIELDS, max_part_size=MAX_PART_BYTES
            ) as form:
                fields = self.text_fields.get(scope["path"], frozenset())
                body = json.dumps(await form_to_json(form, fields)).encode()
        except RequestError as error:
            await error_response(error, scope["path"])(scope, receive, send)
            return
        except Exception as error:  # starlette's parser: malformed body, too many parts
            unreadable = RequestError("body", f"not a readable multipart/form-data body ({error})")
            await error_response(unreadable, scope["path"])(scope, receive, send)
            return
        await self.app(_as_json_scope(scope, len(body)), _receive_once(body), send)


def _as_json_scope(scope: Scope, length: int) -> Scope:
    headers = [
        (name, value)
        for name, value in scope["headers"]
        if name not in (b"content-type", b"content-length")
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % length)]
    return {**scope, "headers": headers}


def _receive_once(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class GetModels:
    """``GET /models`` as ``POST /models`` with no body (a GET carries none: a stray
    ``Content-Type`` such as ``multipart/form-data`` without a boundary made BentoML's parser
    answer 500), and 405 with ``Allow: GET, POST`` for any other method, as documented."""

    ALLOWED = ("GET", "POST")

    def __init__(self, app: ASGIApp, path: str = "/models") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if scope["method"] not in self.ALLOWED:
            allow = {"Allow": ", ".join(self.ALLOWED)}
            message = f"method: {scope['method']} {self.path} is not served; use GET or POST"
            body = {"error": message, "field": "method"}
            await JSONResponse(body, status_code=405, headers=allow)(scope, receive, send)
            return
        if scope["method"] == "GET":
            headers = [
                (name, value)
                for name, value in scope["headers"]
                if name not in (b"content-type", b"content-length", b"transfer-encoding")
            ]
            scope = {**scope, "method": "POST", "headers": headers}
            receive = _receive_once(b"")
        await self.app(scope, receive, send)


class PublishedContract:
    """Answer ``GET /docs.json`` (the OpenAPI document, also behind the Swagger UI at ``/``)
    with ``document()``, built on the first request."""

    def __init__(
        self, app: ASGIApp, document: Callable[[], dict[str, Any]], path: str = "/docs.json"
    ) -> None:
        self.app = app
        self.document = document
        self.path = path
        self._built: dict[str, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == self.path:
            if self._built is None:
                self._built = self.document()
            await JSONResponse(self._built)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestTimeout:
    """Answer 504 when a request's response has not started within ``timeout_s``.

    Replaces BentoML's TimeoutMiddleware (1.4.39), which leaves each request's timer
    scheduled for the whole timeout after the request is answered, holding that request's
    context (its tracing span and scope): with our 900 s timeout a 10-minute soak at 175
    requests/s grew the server's RSS from 478 to 970 MiB. ``asyncio.wait`` cancels its timer.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout_s = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        async def send_and_mark(message: Message) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        handling = asyncio.ensure_future(self.app(scope, receive, send_and_mark))
        done, _ = await asyncio.wait(
            {started, handling}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            handling.cancel()
            message = f"request: not answered within {self.timeout_s:g} s"
            await JSONResponse({"error": message, "field": "request"}, status_code=504)(
                scope, receive, send
            )
            return
        await handling


def use_leak_free_timeout() -> None:
    """Make BentoML build :class:`RequestTimeout` where it builds its TimeoutMiddleware.

    The service's traffic ``timeout`` must be a positive number, so BentoML always adds its
    middleware; its app factory imports the class from this module attribute when it builds
    the app, after the service module (which calls this) is imported.
    """
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = RequestTimeout  # type: ignore[misc]


def install_http_adapters(
    service: Any, settings: Settings, task_requests: dict[str, Any] | None = None
) -> None:
    """Everything between HTTP and the endpoints of ``service`` (the BentoML class)."""
    from service.auth import HEALTH_PATHS, ApiKeys
    from service.disconnects import CancelOnDisconnect
    from service.errors import use_one_line_client_error_logs
    from service.openapi import published_document
    from service.repository import summaries
    from service.ui import OPEN_PATHS as UI_PATHS

    # Added first, so it runs first: without a valid key (when keys are set) nothing else runs.
    # The web page's files stay open: the page is what asks for a key.
    open_paths = UI_PATHS | (frozenset() if settings.auth_health else HEALTH_PATHS)
    service.add_asgi_middleware(ApiKeys, keys=settings.api_keys, open_paths=open_paths)
    # Before anything reads the body, so that every read goes through it: once the body is
    # read, a client that disconnects cancels its request and the batcher drops its work.
    endpoints = [api.route for api in service.apis.values()]
    service.add_asgi_middleware(CancelOnDisconnect, endpoints=endpoints)
    # A body over the limit is refused before anything reads it.
    service.add_asgi_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Uploaded PNG files and GET /models, translated before BentoML parses the request.
    routes = {api.route: api.input_spec for api in service.apis.values()}
    routes |= {f"/{kind}/submit": schema for kind, schema in (task_requests or {}).items()}
    service.add_asgi_middleware(
        MultipartImages,
        text_fields={route: text_fields(schema) for route, schema in routes.items() if schema},
    )
    service.add_asgi_middleware(GetModels)
    # The task routes, from the task store shared by every replica (service/tasks/routes.py).
    from service.tasks.routes import TaskRoutes

    def check_task(request: Any) -> None:
        """What the running service would refuse of the task's request (ModelCalls.check)."""
        import bentoml

        instance = bentoml.get_current_service()
        if instance is not None and hasattr(instance, "calls"):
            instance.calls.check(request)

    service.add_asgi_middleware(
        TaskRoutes,
        kinds=task_requests or {},
        config=settings.task_store_config(),
        keys_on=bool(settings.api_keys),
        check=check_task,
    )

    operations = {
        route: schema.operation for route, schema in routes.items() if hasattr(schema, "operation")
    }

    def document() -> dict[str, Any]:
        """BentoML's OpenAPI document, corrected to what the service answers, with each
        served model's rules (from the running instance's GET /models description)."""
        import bentoml

        served = summaries(Settings.from_env().served_directories())
        instance = bentoml.get_current_service()
        models = None
        if instance is not None and hasattr(instance, "describe_models"):
            models = instance.describe_models()
        return published_document(service.openapi_spec.asdict(), served, models, operations)

    service.add_asgi_middleware(PublishedContract, document=document)
    # BentoML 1.4.39's timeout middleware keeps every answered request's context for the
    # whole timeout (RSS 478 -> 970 MiB in a 10-minute soak); ours releases it.
    use_leak_free_timeout()
    # BentoML logs its own 400s (schema violations) at ERROR with a traceback; ours are one line.
    use_one_line_client_error_logs()
