"""The task store's interface: what the routes and the worker loop may ask of any store.

A task moves ``queued -> running -> completed | failed``, or to ``canceled`` from either of
the first two. A running task holds a lease that its worker renews; a lease not renewed
within ``lease_s`` lapses and the task is claimed again by whichever worker asks next
(at-least-once). Each claim is an attempt; past ``max_attempts`` the task is ``failed`` with
the reason. Finished tasks are kept ``retention_s`` seconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol

QUEUED, RUNNING, COMPLETED, FAILED, CANCELED = (
    "queued",
    "running",
    "completed",
    "failed",
    "canceled",
)
FINISHED = frozenset({COMPLETED, FAILED, CANCELED})


@dataclass(frozen=True)
class StoreConfig:
    url: str  # "" (SQLite in `directory`) or redis://HOST:PORT/DB
    directory: str
    lease_s: float = 30.0
    max_attempts: int = 3
    retention_s: float = 86_400.0
    max_queued: int = 1_000

    @property
    def description(self) -> str:
        return self.url or f"SQLite in {self.directory}"


class StoreUnavailableError(Exception):
    """The store cannot be reached (Redis down): the task routes answer 503."""


class QueueFullError(Exception):
    """``max_queued`` tasks are waiting: the submit is answered 429."""


class KeyReusedError(Exception):
    """An idempotency key sent again with a different body: 409."""


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    kind: str
    owner: str
    status: str
    attempts: int
    created_at: float
    executed_at: float | None = None
    completed_at: float | None = None
    error: str | None = None
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class Claim:
    """A task a worker now runs: its record, its request body, and whether it was taken over
    from a worker whose lease lapsed."""

    record: TaskRecord
    body: bytes
    lease_expired: bool = False


@dataclass(frozen=True)
class Result:
    status_code: int
    body: bytes


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def error_text(result: Result) -> str:
    """The message of a stored error answer (``{"error": ...}``), else its body."""
    try:
        return str(json.loads(result.body)["error"])
    except (ValueError, KeyError, TypeError):
        return result.body.decode(errors="replace")[:500]


def exhausted_reason(attempts: int, lease_s: float) -> str:
    return (
        f"gave up after {attempts} attempts: the replica running it stopped renewing its "
        f"{lease_s:g} s lease each time (it died or was stopped)"
    )


class TaskStore(Protocol):
    config: StoreConfig

    async def submit(self, kind: str, owner: str, body: bytes, key: str | None) -> TaskRecord:
        """A new queued task, or the one submitted before with the same ``key`` (same owner
        and kind); raises QueueFullError, KeyReusedError, StoreUnavailableError."""

    async def record(self, task_id: str) -> TaskRecord | None: ...

    async def result(self, task_id: str) -> Result | None:
        """A finished task's answer (its status code and JSON body); None before."""

    async def claim(self, worker: str) -> Claim | None:
        """The oldest queued task, or one whose lease lapsed, now leased to ``worker``."""

    async def renew(self, task_id: str, worker: str, done: int, total: int) -> bool:
        """Extend ``worker``'s lease and record progress; False when the task is no longer
        its to run (canceled, or its lease lapsed and another worker took it)."""

    async def complete(self, task_id: str, worker: str, result: Result) -> bool:
        """Store the answer (``completed`` under 400, else ``failed``), if still ``worker``'s."""

    async def give_up(self, task_id: str, worker: str, reason: str) -> None:
        """This attempt failed: queue the task again, or fail it past ``max_attempts``."""

    async def cancel(self, task_id: str) -> TaskRecord | None: ...

    async def counts(self) -> dict[str, int]:
        """Tasks ``queued`` and ``running``, over every replica."""

    async def ping(self) -> None:
        """Raise StoreUnavailableError when the store cannot be reached."""
