"""Request errors that name the offending field, and their JSON rendering.

BentoML renders its own exceptions as a list around the message; ours are answered as one flat
object, ``{"error": "<field>: <what was wrong and what is expected>", "field": "<field>"}``,
alongside BentoML's own 400s for schema violations (``{"error": ..., "detail": [...]}``).

A model result holding NaN or infinity (:class:`models.data.NonFiniteError`) is never sent as
an image or a number: the endpoint that can blame the request's values answers 422 naming
them; anywhere else it is the server's fault, answered 500 with a message saying so.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from starlette.responses import JSONResponse

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("elbo_serve")


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
            return error_response(error)
        except Exception as error:
            from models.data import NonFiniteError  # imports torch: not when this module is

            if not isinstance(error, NonFiniteError):
                raise
            # Validated inputs (8-bit images, seeds, bounded options) that give NaN are a
            # model or numerics defect, not something the client can fix: a 5xx.
            logger.error("/%s: non-finite model result", endpoint.__name__, exc_info=True)
            message = (
                f"the model's result holds NaN or infinite values ({error}); this is a server "
                "fault, not a problem with the request"
            )
            return JSONResponse({"error": f"model: {message}", "field": "model"}, status_code=500)

    return wrapper


def error_response(error: RequestError) -> JSONResponse:
    """``{"error": "<field>: ...", "field": "<field>"}`` with the error's status code."""
    return JSONResponse({"error": str(error), "field": error.field}, status_code=error.status_code)
