"""Request errors that name the offending field, and their JSON rendering.

BentoML renders its own exceptions as a list around the message; ours are answered as one flat
object, ``{"error": "<field>: <what was wrong and what is expected>", "field": "<field>"}``,
alongside BentoML's own 400s for schema violations (``{"error": ..., "detail": [...]}``).

A model result holding NaN or infinity (:class:`models.core.pixels.NonFiniteError`) is never sent as
an image or a number: the endpoint that can blame the request's values answers 422 naming
them; anywhere else it is the server's fault, answered 500 with a message saying so.

The log: a client's mistake (any 4xx, ours or BentoML's) is one WARNING line with the
endpoint, status, message and the request's OpenTelemetry trace and span ids (the span id is
the ``X-BentoML-Request-ID`` response header); a traceback is logged for 5xx only.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("elbo_serve")
# Longest message logged for a client error: the message may quote what the client sent.
MAX_LOGGED_MESSAGE = 500


class RequestError(Exception):
    """The request is well-formed JSON but a field's value cannot be used."""

    status_code = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class MissingCalibrationError(RequestError):
    """The model card has nothing to calibrate this score with: a state of the server's
    checkpoint, not of the request, hence 409 Conflict."""

    status_code = 409


class UnauthorizedError(RequestError):
    """No valid API key (ELBO_SERVE_API_KEYS): 401, with a WWW-Authenticate header."""

    status_code = 401


class BodyTooLargeError(RequestError):
    """The request body is over the server's limit (ELBO_SERVE_MAX_BODY_BYTES)."""

    status_code = 413


class NonFiniteResultError(RequestError):
    """The field's values passed validation, but the model's result for them is NaN or
    infinite: 422 Unprocessable Content, as the same model gives finite results for others."""

    status_code = 422


def answers_request_errors(
    endpoint: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R | JSONResponse]]:
    """Turn a RequestError raised by ``endpoint`` into its JSON 4xx response, and a
    NonFiniteError into a 500 that says what happened (with the traceback in the log)."""

    @functools.wraps(endpoint)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return await endpoint(*args, **kwargs)
        except RequestError as error:
            _set_context_status(kwargs.values(), error.status_code)
            # The route of an API is its function's name (a task's: its submit/status/get).
            return error_response(error, f"/{endpoint.__name__}")
        except Exception as error:
            from models.core.pixels import NonFiniteError  # imports torch: not when this module is
            from models.kinds import OptionError

            if isinstance(error, OptionError):  # an option the served model cannot honour
                _set_context_status(kwargs.values(), 400)
                request_error = RequestError(error.field, error.message)
                return error_response(request_error, f"/{endpoint.__name__}")

            if not isinstance(error, NonFiniteError):
                raise
            # Validated inputs (8-bit images, seeds, bounded options) that give NaN are a
            # model or numerics defect, not something the client can fix: a 5xx.
            logger.error("/%s: non-finite model result", endpoint.__name__, exc_info=True)
            message = (
                f"the model's result holds NaN or infinite values ({error}); this is a server "
                "fault, not a problem with the request"
            )
            _set_context_status(kwargs.values(), 500)
            return JSONResponse({"error": f"model: {message}", "field": "model"}, status_code=500)

    return wrapper


def error_response(error: RequestError, endpoint: str) -> JSONResponse:
    """``{"error": "<field>: ...", "field": "<field>"}`` with the error's status code; the
    error is logged as one line."""
    log_client_error(endpoint, error.status_code, str(error))
    return JSONResponse({"error": str(error), "field": error.field}, status_code=error.status_code)


def log_client_error(endpoint: str, status: int, message: str) -> None:
    """One WARNING line, no traceback: the client's mistake is not the server's fault, but an
    operator wants to see clients that keep sending bad requests (Django logs 4xx the same)."""
    trace_id, span_id = _trace_ids()
    logger.warning(
        "%s answered %d: %s (trace=%s,span=%s)",
        endpoint,
        status,
        _one_line(message),
        trace_id,
        span_id,
    )


def _trace_ids() -> tuple[str, str]:
    """The current OpenTelemetry trace and span ids, formatted as BentoML logs them."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "-", "-"
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _one_line(message: str) -> str:
    """Control characters escaped (a client's text cannot forge log lines), length bounded."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    if len(text) > MAX_LOGGED_MESSAGE:
        text = text[:MAX_LOGGED_MESSAGE] + f"... ({len(text)} characters)"
    return text


def use_one_line_client_error_logs() -> None:
    """Make BentoML log a client's mistake as :func:`log_client_error` does.

    BentoML 1.4.39's ``api_endpoint_wrapper`` answers a pydantic ValidationError with its 400
    (and a 4xx BentoMLException, such as 415 for a pickle body, with its code) after calling
    ``log_exception(request)``, which logs at ERROR with the traceback: every schema violation
    wrote a full traceback. That function is a global of BentoML's app module, looked up at
    each call; this replaces it with one that keeps BentoML's ERROR and traceback for
    everything else (5xx).
    """
    from _bentoml_impl.server import app

    bentoml_log_exception = getattr(app, "_elbo_serve_bentoml_log_exception", app.log_exception)

    def log_exception(request: Request, exc_info: Any = True) -> None:
        error = sys.exc_info()[1]
        status = _client_error_status(error)
        if status is None:
            bentoml_log_exception(request, exc_info)
        else:
            log_client_error(request.url.path, status, _describe(error))

    app._elbo_serve_bentoml_log_exception = bentoml_log_exception  # type: ignore[attr-defined]
    app.log_exception = log_exception  # type: ignore[attr-defined]


def _client_error_status(error: BaseException | None) -> int | None:
    """The 4xx BentoML answers ``error`` with; None for anything it answers 5xx."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return 400
    if isinstance(error, BentoMLException) and int(error.error_code) < 500:
        return int(error.error_code)
    return None


def _describe(error: BaseException | None) -> str:
    """A schema violation as ``field: problem; ...`` (the first three), else the message."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    problems = [
        f"{_location(problem['loc'])}: {problem['msg']}" if problem["loc"] else problem["msg"]
        for problem in error.errors(include_url=False)
    ]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def _location(loc: tuple[int | str, ...]) -> str:
    """pydantic's ('images', 3) as ``images[3]``, the way our own errors name fields."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _set_context_status(arguments: Iterable[Any], status_code: int) -> None:
    """BentoML (1.4.39) answers an endpoint that takes a ``bentoml.Context`` with the context's
    status code, whatever the response it returns: without this a task's 400 was a 200, and
    the task 'completed'."""
    from bentoml import Context

    for argument in arguments:
        if isinstance(argument, Context):
            argument.response.status_code = status_code
