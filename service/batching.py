"""Adaptive batching of heterogeneous requests: concurrent work items with the same key
share one model call.

A key names everything the call depends on besides its inputs (operation, model, sampler,
steps, method, k ...). The first item for a key waits ``wait_s`` for companions, unless
the batcher is idle (a lone request at low load runs at once); items that arrive while the
model is busy queue up and leave together when it frees, so batches grow
with load. At most ``lanes`` model calls run at once: one for a GPU, which runs one batch at
a time anyway; one per core on a CPU, each call on one torch thread, because a small network
cannot keep several threads busy inside one call (measured in load_tests/benchmark.py).
Nothing is ever dropped: there is no latency budget to predict against, so load is bounded
by the server's max_concurrency instead (BentoML answers 429 past it).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

BatchFunction = Callable[[Sequence[Any]], Sequence[Any]]
BatchObserver = Callable[[Hashable, int, float], None]


@dataclass
class _Pending(Generic[T]):
    item: T
    size: int
    run: BatchFunction
    future: asyncio.Future[Any]


@dataclass
class _Queue:
    items: list[_Pending[Any]] = field(default_factory=list)
    flush_scheduled: bool = False


class KeyedBatcher:
    """``await submit(key, run, item, size)`` -> ``run([... item ...])[its index]``.

    ``run`` takes a list of items and returns one result per item, in order; it runs in a
    worker thread. A result that is an exception is raised to that item's submitter alone
    (one request's rows came out wrong; its batch-mates get their results), while an
    exception raised by ``run`` fails every item of the call. Submitters of one key must pass
    equivalent ``run`` functions. ``size`` is the item's number of images, counted against
    ``max_batch_items`` (an item larger than that runs alone). ``on_batch(key, items,
    seconds)`` is told about every executed call.
    """

    def __init__(
        self,
        max_batch_items: int,
        wait_s: float = 0.01,
        on_batch: BatchObserver | None = None,
        lanes: int = 1,
    ) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.max_batch_items = max_batch_items
        self.wait_s = wait_s
        self.on_batch = on_batch
        self.lanes = lanes
        self._queues: dict[Hashable, _Queue] = {}
        self._free_lanes: asyncio.Semaphore | None = None
        self._busy_lanes = 0

    async def submit(self, key: Hashable, run: BatchFunction, item: Any, size: int = 1) -> Any:
        loop = asyncio.get_running_loop()
        if self._free_lanes is None:  # created in the loop that serves
            self._free_lanes = asyncio.Semaphore(self.lanes)
        queue = self._queues.setdefault(key, _Queue())
        future: asyncio.Future[Any] = loop.create_future()
        queue.items.append(_Pending(item, size, run, future))
        if not queue.flush_scheduled:
            queue.flush_scheduled = True
            loop.create_task(self._flush(key, 0.0 if self._idle() else self.wait_s))
        return await future

    def _idle(self) -> bool:
        """Nothing running and nothing queued but the item just submitted: a lone request
        at low load gains nothing by waiting for companions."""
        if self._busy_lanes or len(self._queues) != 1:
            return False
        (queue,) = self._queues.values()
        return len(queue.items) == 1

    async def _flush(self, key: Hashable, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        assert self._free_lanes is not None
        async with self._free_lanes:
            self._busy_lanes += 1
            try:
                await self._flush_in_lane(key)
            finally:
                self._busy_lanes -= 1

    async def _flush_in_lane(self, key: Hashable) -> None:
        queue = self._queues[key]
        batch = self._take(queue, self._share(queue))
        # Whatever is left (or arrives from now on) goes in a later call.
        queue.flush_scheduled = bool(queue.items)
        if queue.items:
            asyncio.get_running_loop().create_task(self._flush(key, self.wait_s))
        else:
            # Keys carry request options (a temperature...): do not keep empty queues.
            del self._queues[key]
        await self._execute(key, batch)

    def _share(self, queue: _Queue) -> int:
        """Items this call may take: with idle lanes, only its share of the queue, so that
        requests arriving together do not all wait for one lane while the others idle."""
        idle = self.lanes - self._busy_lanes
        pending = sum(p.size for p in queue.items)
        return min(self.max_batch_items, max(1, math.ceil(pending / (idle + 1))))

    def _take(self, queue: _Queue, budget: int) -> list[_Pending[Any]]:
        batch, total = [], 0
        while queue.items and (not batch or total + queue.items[0].size <= budget):
            pending = queue.items.pop(0)
            if pending.future.cancelled():  # the client went away before we started
                continue
            batch.append(pending)
            total += pending.size
        return batch

    async def _execute(self, key: Hashable, batch: list[_Pending[Any]]) -> None:
        if not batch:
            return
        # Equal keys promise equivalent functions: any item's will do.
        run = batch[0].run
        start = time.perf_counter()
        try:
            results = await asyncio.to_thread(run, [pending.item for pending in batch])
        except Exception as error:  # every waiting request learns what went wrong
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        if self.on_batch is not None:
            self.on_batch(key, sum(p.size for p in batch), time.perf_counter() - start)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
