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

Long work must not starve short work. Every item carries an estimated ``cost``; a lane that
frees goes to the cheapest waiting batch (then the earliest), not to whichever asked first.
A batch whose ``run`` returns a generator (a progressive loop, :mod:`models.core.progressive`)
runs one slice per ``next()``, one network call, and between slices hands its lane to any
cheaper batch waiting for one, taking it back once that is done. So a cheap request waits at
most for the network calls in progress, however long the work holding the lanes, and the
long work keeps every lane when nothing cheaper waits. A sliced batch whose requests all went
away (their futures were cancelled) stops at the next slice, and ``on_stop`` hears of it.

The lanes (``lane_pool``) are shared with the step scheduler (:mod:`service.stepping`), which,
when step batching is on, runs sampling, encoding and decoding one network call at a time
instead of as keyed batches.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import math
import time
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Results, one per item; or a generator that returns them, run a slice per next().
BatchFunction = Callable[[Sequence[Any]], Sequence[Any] | Generator[Any, None, Sequence[Any]]]
BatchObserver = Callable[[Hashable, int, float], None]
# Lanes go to the lowest (estimated cost, arrival order) first.
Priority = tuple[float, int]


@dataclass
class _Pending(Generic[T]):
    item: T
    size: int
    cost: float
    order: int
    run: BatchFunction
    future: asyncio.Future[Any]


@dataclass
class _Queue:
    items: list[_Pending[Any]] = field(default_factory=list)
    flush_scheduled: bool = False


class Lanes:
    """``count`` lanes; one that frees is handed to the waiter with the lowest priority."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.busy = 0
        self._waiting: list[tuple[Priority, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()  # ties in priority: first come, first served

    async def acquire(self, priority: Priority) -> None:
        """Hold a lane; raises (CancelledError) holding none."""
        if self.busy < self.count:  # nobody waits while a lane is free
            self.busy += 1
            return
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # handed over as we were cancelled
                self.release()
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():  # skip waiters that were cancelled
                granted.set_result(None)  # the lane passes on; busy stays
                return
        self.busy -= 1

    def cheaper_waiting(self, priority: Priority) -> bool:
        while self._waiting and self._waiting[0][2].done():
            heapq.heappop(self._waiting)
        return bool(self._waiting) and self._waiting[0][0] < priority


class LaneHold:
    """A batch's claim on one lane, which it may give up and take back between slices."""

    def __init__(self, lanes: Lanes, priority: Priority) -> None:
        self.lanes, self.priority, self.held = lanes, priority, False

    async def take(self) -> None:
        await self.lanes.acquire(self.priority)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lanes.release()

    async def pass_to_cheaper(self) -> None:
        """Let any cheaper waiter have the lane first, then hold it again."""
        if self.lanes.cheaper_waiting(self.priority):
            self.release()
            await self.take()


def _advance(steps: Generator[Any, None, Any]) -> tuple[bool, Any]:
    """One slice of a progressive batch: (False, what it yielded) or (True, its results).
    (StopIteration cannot cross into an asyncio future, so it is caught here.)"""
    try:
        return False, next(steps)
    except StopIteration as end:
        return True, end.value


class KeyedBatcher:
    """``await submit(key, run, item, size, cost)`` -> ``run([... item ...])[its index]``.

    ``run`` takes a list of items and returns one result per item, in order, or a generator
    that returns them (run one slice per ``next()``); it runs in a worker thread. A result that
    is an exception is raised to that item's submitter alone (one request's rows came out
    wrong; its batch-mates get their results), while an exception raised by ``run`` fails
    every item of the call. Submitters of one key must pass equivalent ``run`` functions.
    ``size`` is the item's number of images, counted against ``max_batch_items`` (an item
    larger than that runs alone).
    ``cost`` is its estimated work in any unit common to all items (default: its size); a
    batch's priority is its items' total. ``on_batch(key, items, seconds)`` is told about
    every executed call, with the seconds it spent in a lane; ``on_stop(key, items, seconds)``
    of every sliced call stopped part-way because all its submitters went away.
    """

    def __init__(
        self,
        max_batch_items: int,
        wait_s: float = 0.01,
        on_batch: BatchObserver | None = None,
        lanes: int = 1,
        on_stop: BatchObserver | None = None,
    ) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.max_batch_items = max_batch_items
        self.wait_s = wait_s
        self.on_batch = on_batch
        self.on_stop = on_stop
        self.lanes = lanes
        self._queues: dict[Hashable, _Queue] = {}
        self.lane_pool = Lanes(lanes)
        self._arrivals = itertools.count()

    async def submit(
        self,
        key: Hashable,
        run: BatchFunction,
        item: Any,
        size: int = 1,
        cost: float | None = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(key, _Queue())
        future: asyncio.Future[Any] = loop.create_future()
        cost = float(size) if cost is None else cost
        queue.items.append(_Pending(item, size, cost, next(self._arrivals), run, future))
        if not queue.flush_scheduled:
            queue.flush_scheduled = True
            loop.create_task(self._flush(key, 0.0 if self._idle() else self.wait_s))
        return await future

    def _idle(self) -> bool:
        """Nothing running and nothing queued but the item just submitted: a lone request
        at low load gains nothing by waiting for companions."""
        if self.lane_pool.busy or len(self._queues) != 1:
            return False
        (queue,) = self._queues.values()
        return len(queue.items) == 1

    async def _flush(self, key: Hashable, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        lane = LaneHold(self.lane_pool, _priority(self._queues[key].items))
        await lane.take()
        try:
            await self._flush_in_lane(key, lane)
        finally:
            lane.release()

    async def _flush_in_lane(self, key: Hashable, lane: LaneHold) -> None:
        queue = self._queues[key]
        batch = self._take(queue, self._share(queue))
        # Whatever is left (or arrives from now on) goes in a later call.
        queue.flush_scheduled = bool(queue.items)
        if queue.items:
            asyncio.get_running_loop().create_task(self._flush(key, self.wait_s))
        else:
            # Keys carry request options (a temperature...): do not keep empty queues.
            del self._queues[key]
        await self._execute(key, batch, lane)

    def _share(self, queue: _Queue) -> int:
        """Items this call may take: with idle lanes, only its share of the queue, so that
        requests arriving together do not all wait for one lane while the others idle."""
        idle = self.lanes - self.lane_pool.busy
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

    async def _execute(self, key: Hashable, batch: list[_Pending[Any]], lane: LaneHold) -> None:
        if not batch:
            return
        # Equal keys promise equivalent functions: any item's will do.
        run = batch[0].run
        try:
            results, seconds = await self._run(run, batch, lane)
        except Exception as error:  # every waiting request learns what went wrong
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        if results is None:  # nobody waits for them any more
            if self.on_stop is not None:
                self.on_stop(key, sum(p.size for p in batch), seconds)
            return
        if self.on_batch is not None:
            self.on_batch(key, sum(p.size for p in batch), seconds)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    async def _run(
        self, run: BatchFunction, batch: list[_Pending[Any]], lane: LaneHold
    ) -> tuple[Sequence[Any] | None, float]:
        """``run``'s results (None if every request went away first) and the seconds spent
        in a lane; a progressive run gives its lane to cheaper batches between slices."""
        start = time.perf_counter()
        outcome = await asyncio.to_thread(run, [pending.item for pending in batch])
        seconds = time.perf_counter() - start
        if not inspect.isgenerator(outcome):
            return outcome, seconds
        lane.priority = _priority(batch)  # of what it runs, no longer of the queue it came from
        while True:
            start = time.perf_counter()
            finished, value = await asyncio.to_thread(_advance, outcome)
            seconds += time.perf_counter() - start
            if finished:
                return value, seconds
            if all(pending.future.done() for pending in batch):
                outcome.close()
                return None, seconds
            await lane.pass_to_cheaper()


def _priority(items: Sequence[_Pending[Any]]) -> Priority:
    """Cheaper first, then earlier: the items' total cost and the first one's arrival."""
    return sum(p.cost for p in items), min(p.order for p in items)
