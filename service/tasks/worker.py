"""The worker loop: each replica takes queued tasks while it has capacity and runs them.

A running task's lease is renewed (with its progress) every ``tick_s``; when a renewal says
the task is no longer ours (canceled from any replica, or taken over after our lease lapsed)
its work is cancelled. An answer is stored only by the worker that holds the lease, so a task
run twice (at-least-once) keeps one answer. A failed attempt (an exception, not a 4xx answer,
which is final) queues the task again until ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from service.tasks.store import Claim, Result, StoreUnavailableError, TaskStore

logger = logging.getLogger("elbo_serve")
Progress = Callable[[int, int], None]
# A task kind's work: (request body, progress callback) -> the answer.
Handler = Callable[[bytes, Progress], Awaitable[Result]]


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class TaskWorker:
    def __init__(
        self,
        store: TaskStore,
        handlers: Mapping[str, Handler],
        capacity: int,
        metrics,
        poll_s: float = 0.2,
    ) -> None:
        self.store, self.handlers, self.capacity = store, handlers, capacity
        self.metrics, self.poll_s = metrics, poll_s
        self.name = worker_name()
        self.tick_s = min(1.0, store.config.lease_s / 3)
        self.running: set[asyncio.Task] = set()
        for kind in handlers:  # every kind's series from the start, at 0 (rate() needs them)
            metrics.TASKS_RUNNING.labels(kind).set(0)
            metrics.TASK_ATTEMPTS.labels(kind)
            metrics.TASK_LEASE_EXPIRIES.labels(kind)

    async def run(self) -> None:
        """Claim and start tasks until cancelled; a store that is down is asked again."""
        down_since = None
        while True:
            try:
                if len(self.running) < self.capacity and (
                    claim := await self.store.claim(self.name)
                ):
                    self._start(claim)
                    continue
                await self._publish_counts()
                down_since = None
            except StoreUnavailableError as error:
                if down_since is None:
                    logger.warning("task store unavailable, retrying: %s", error)
                down_since = down_since or time.monotonic()
            await asyncio.sleep(self.poll_s if down_since is None else 1.0)

    async def _publish_counts(self) -> None:
        counts = await self.store.counts()
        self.metrics.TASKS_QUEUED.set(counts["queued"])

    def _start(self, claim: Claim) -> None:
        kind = claim.record.kind
        self.metrics.TASK_ATTEMPTS.labels(kind).inc()
        if claim.lease_expired:
            self.metrics.TASK_LEASE_EXPIRIES.labels(kind).inc()
            logger.info("task %s: taken over after a lapsed lease", claim.record.task_id)
        task = asyncio.get_running_loop().create_task(self._run_one(claim))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run_one(self, claim: Claim) -> None:
        task_id, kind = claim.record.task_id, claim.record.kind
        progress = [0, 0]

        def report(done: int, total: int) -> None:
            progress[:] = [done, total]

        self.metrics.TASKS_RUNNING.labels(kind).inc()
        start = time.perf_counter()
        work = asyncio.ensure_future(self.handlers[kind](claim.body, report))
        try:
            if not await self._hold_lease(task_id, work, progress):
                return
            try:
                result = work.result()
            except Exception as error:  # an attempt failed: queue it again (or fail it)
                logger.exception("task %s (%s): attempt failed", task_id, kind)
                await self._until_stored(self.store.give_up, task_id, self.name, repr(error))
                return
            # The last progress (a short task may finish before its first renewal), then the answer.
            await self._until_stored(self.store.renew, task_id, self.name, *progress)
            if await self._until_stored(self.store.complete, task_id, self.name, result):
                status = "completed" if result.status_code < 400 else "failed"
                self.metrics.TASK_SECONDS.labels(kind, status).observe(time.perf_counter() - start)
        finally:
            work.cancel()
            self.metrics.TASKS_RUNNING.labels(kind).dec()

    async def _hold_lease(self, task_id: str, work: asyncio.Future, progress: list[int]) -> bool:
        """Renew the lease until ``work`` is done; False when the task stopped being ours."""
        while not work.done():
            await asyncio.wait({work}, timeout=self.tick_s)
            if work.done():
                break
            try:
                if not await self.store.renew(task_id, self.name, *progress):
                    logger.info("task %s: canceled or taken over; stopping it here", task_id)
                    return False
            except StoreUnavailableError:
                pass  # keep working; the next tick renews, or the lease lapses
        return True

    async def _until_stored(self, write, *args, attempts: int = 300):
        """``write(*args)``, tried again each second while the store is unreachable."""
        for _ in range(attempts):
            try:
                return await write(*args)
            except StoreUnavailableError:
                await asyncio.sleep(1.0)
        logger.error("task %s: store unreachable for %d s; its answer is lost", args[0], attempts)
        return None
