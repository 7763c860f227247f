"""Request errors that name the offending field, and their JSON rendering.

BentoML renders its own exceptions as a list around the message; ours are answered as one flat
object, ``{"error": "<field>: <what was wrong and what is expected>", "field": "<field>"}``,
alongside BentoML's own 400s for schema violations (``{"error": ..., "detail": [...]}``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from starlette.responses import JSONResponse

P = ParamSpec("P")
R = TypeVar("R")


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


class BodyTooLargeError(RequestError):
    """The request body is over the server's limit (ELBO_SERVE_MAX_BODY_BYTES)."""

    status_code = 413


def answers_request_errors(
    endpoint: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R | JSONResponse]]:
    """Turn a RequestError raised by ``endpoint`` into its JSON 4xx response."""

    @functools.wraps(endpoint)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return await endpoint(*args, **kwargs)
        except RequestError as error:
            _set_context_status(kwargs.values(), error.status_code)
            return error_response(error)

    return wrapper


def _set_context_status(arguments: Iterable[Any], status_code: int) -> None:
    """BentoML (1.4.39) answers an endpoint that takes a ``bentoml.Context`` with the context's
    status code, whatever the response it returns: without this a task's 400 was a 200, and
    the task 'completed'."""
    from bentoml import Context

    for argument in arguments:
        if isinstance(argument, Context):
            argument.response.status_code = status_code


def error_response(error: RequestError) -> JSONResponse:
    """``{"error": "<field>: ...", "field": "<field>"}`` with the error's status code."""
    return JSONResponse({"error": str(error), "field": error.field}, status_code=error.status_code)
