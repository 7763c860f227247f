"""Optional API keys: ``Authorization: Bearer <key>`` on every route but the open ones.

Off unless keys are configured (``ELBO_SERVE_API_KEYS`` and/or ``ELBO_SERVE_API_KEYS_FILE``),
so a fresh clone serves as before. Keys are compared in constant time, every key every time,
so the answer's timing says nothing about how much of a guess was right or which key it was.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import UnauthorizedError, error_response

# Health and metrics stay open by default: orchestrators and Prometheus probe them.
HEALTH_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class ApiKeys:
    """Answer 401 to a request without a valid bearer key, unless its path is open."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], open_paths: Iterable[str]) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in keys)
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        if token is not None and self._known(token):
            await self.app(scope, receive, send)
            return
        error = UnauthorizedError(
            "authorization",
            "missing or unknown API key; send the header 'Authorization: Bearer <key>'",
        )
        response = error_response(error, scope["path"])
        response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _known(self, token: bytes) -> bool:
        matched = False
        for key in self.keys:  # no early exit: the same work whichever key matches
            matched |= hmac.compare_digest(token, key)
        return matched
