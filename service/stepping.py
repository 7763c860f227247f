"""Step-level continuous batching: one denoising loop per model lane, whose every network
call carries the rows of all running requests of that model, each at its own step.

Orca's iteration-level scheduling (OSDI'22), applied to iterative sampling. A request brings
``make()``, which builds its rows (:class:`models.core.stepwise.StepRows`: its own timestep,
sampler state and generator), and ``finish(result)``, which turns its loop's result into its
answer. A loop repeats: admit waiting requests at the step boundary, drop those whose
submitters went away, take a model lane, make one call for every running row
(:func:`models.core.stepwise.step_together`), and answer each request the moment its own last
step is done. So requests with different step counts, samplers or seeds share every call,
a request that arrives while others run joins them at the next step, and none waits for
another's remaining steps.

Admission keeps the batcher's manners (:mod:`service.batching`): a loop holds at most
``max_batch_items`` rows (a larger request runs alone); waiting requests go in cheapest
first (estimated cost, then arrival), except that one waiting ``age_s`` or longer goes before
every younger one, oldest first: under continuous cheap load long work still gets in. A call
carries at most ``call_rows`` rows: when the running rows are more, the cheapest to finish
go first, so a short request beside long ones runs at the speed of a small call, not of one
carrying all their rows; those not advanced for ``age_s`` take a step with them, in a budget
of their own. A model gets up to ``loops`` loops, as many as there are lanes, and the lanes
are the batcher's, shared with its other work: a loop holds one for one call at a time, with
the priority of its running requests' remaining cost, so cheaper waiting work gets it
between calls.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from models.core.stepwise import Network, StepRows, finished, step_together
from service.batching import BatchObserver, LaneHold, Lanes


@dataclass
class _Request:
    make: Callable[[], StepRows]
    finish: Callable[[Any], Any]  # the loop's result -> the answer (an exception: raised)
    size: int
    cost: float
    order: int
    arrived: float
    future: asyncio.Future[Any]
    progress: Callable[[int, int], None] | None = None
    rows: StepRows | None = None
    outcome: Any = None
    advanced: float = 0.0  # when it last took a step (or arrived)

    def remaining_cost(self) -> float:
        if self.rows is None or not self.rows.total:
            return self.cost
        return self.cost * (1 - self.rows.done / self.rows.total)


@dataclass
class _Model:
    network: Network
    waiting: list[_Request] = field(default_factory=list)
    loops: list[list[_Request]] = field(default_factory=list)  # each loop's running requests


class StepScheduler:
    """``await submit(model, network, make, finish, size, cost)`` -> ``finish(result)``.

    ``network`` is the model's network, shared by every request of ``model``;
    ``on_step(model, rows, seconds)`` hears of every call and ``on_stop(model, rows, seconds)``
    of every request dropped part-way because its submitter went away.
    """

    def __init__(
        self,
        lanes: Lanes,
        max_batch_items: int,
        age_s: float = 5.0,
        on_step: BatchObserver | None = None,
        on_stop: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        call_rows: int | None = None,
    ) -> None:
        self.lanes, self.max_batch_items, self.age_s = lanes, max_batch_items, age_s
        self.call_rows = max_batch_items if call_rows is None else call_rows
        self.on_step, self.on_stop, self.clock = on_step, on_stop, clock
        self._models: dict[Hashable, _Model] = {}
        self._arrivals = itertools.count()

    async def submit(
        self,
        model: Hashable,
        network: Network,
        make: Callable[[], StepRows],
        finish: Callable[[Any], Any],
        size: int = 1,
        cost: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        state = self._models.setdefault(model, _Model(network))
        future: asyncio.Future[Any] = loop.create_future()
        cost = float(size) if cost is None else cost
        now = self.clock()
        request = _Request(make, finish, size, cost, next(self._arrivals), now, future, progress)
        request.advanced = now
        state.waiting.append(request)
        if len(state.loops) < self.lanes.count:
            running: list[_Request] = []
            state.loops.append(running)
            loop.create_task(self._loop(model, state, running))
        return await future

    # Admission -------------------------------------------------------------------------------

    def _admission_order(self, waiting: list[_Request]) -> list[_Request]:
        """Those waiting ``age_s`` or longer first, oldest first; then cheapest first."""
        now = self.clock()
        aged = sorted((r for r in waiting if now - r.arrived >= self.age_s), key=_oldest)
        young = sorted((r for r in waiting if now - r.arrived < self.age_s), key=_cheapest)
        return aged + young

    def _admit(self, state: _Model, running: list[_Request]) -> None:
        """Move waiting requests into ``running`` up to this loop's share of the rows: the
        model's running and waiting rows spread evenly over its loops, at most the budget."""
        state.waiting = [r for r in state.waiting if not r.future.done()]
        rows = sum(r.size for loop in state.loops for r in loop)
        pending = sum(r.size for r in state.waiting)
        share = min(self.max_batch_items, math.ceil((rows + pending) / len(state.loops)))
        own = sum(r.size for r in running)
        for request in self._admission_order(state.waiting):
            if running and own + request.size > share:
                break  # in order: a request is never passed over by younger, cheaper ones
            running.append(request)
            state.waiting.remove(request)
            own += request.size

    def _drop_abandoned(self, model: Hashable, running: list[_Request]) -> None:
        for request in [r for r in running if r.future.done()]:
            running.remove(request)
            if self.on_stop is not None:
                self.on_stop(model, request.size, 0.0)

    def _call(self, running: list[_Request]) -> list[_Request]:
        """The running requests the next call advances: all of them when they fit in
        ``call_rows``; else those not advanced for ``age_s`` (oldest first) within the
        budget, and beside them the cheapest to finish within a budget of their own,
        skipping any that do not fit (one larger than the budget goes alone when nothing
        else does). So cheap work is not slowed by the rows of long work beside it, long
        work still takes a step at least every ``age_s``, and when it does the cheap work
        rides along instead of waiting a whole call for it."""
        if sum(r.size for r in running) <= self.call_rows:
            return list(running)
        now = self.clock()
        aged = sorted((r for r in running if now - r.advanced >= self.age_s), key=_oldest)
        young = [r for r in running if now - r.advanced < self.age_s]
        call = _within(aged, self.call_rows, alone=True)
        return call + _within(sorted(young, key=_remaining), self.call_rows, alone=not call)

    # The loop ------------------------------------------------------------------------------

    async def _loop(self, model: Hashable, state: _Model, running: list[_Request]) -> None:
        try:
            while True:
                self._admit(state, running)
                self._drop_abandoned(model, running)
                if not running:
                    return
                lane = LaneHold(self.lanes, _priority(running))
                await lane.take()
                call = self._call(running)
                try:
                    start = time.perf_counter()
                    error = await asyncio.to_thread(_step, state.network, call)
                    seconds = time.perf_counter() - start
                finally:
                    lane.release()
                if error is not None:  # the call failed: every request in it learns why
                    for request in call:
                        _answer(request, error)
                        running.remove(request)
                    continue
                if self.on_step is not None:
                    self.on_step(model, sum(r.size for r in call), seconds)
                now = self.clock()
                for request in call:
                    request.advanced = now
                    if request.rows is not None and finished(request.rows):
                        running.remove(request)
                        _answer(request, request.outcome)
        finally:
            state.loops.remove(running)
            if not state.loops and state.waiting:  # submitted as the last loop ended
                state.loops.append(again := [])
                asyncio.get_running_loop().create_task(self._loop(model, state, again))
            elif not state.loops:
                del self._models[model]


def _step(network: Network, running: list[_Request]) -> Exception | None:
    """In a worker thread: build newly admitted requests' rows, make one call for every row,
    report progress, and compute the answers of those now done; the call's exception, if any."""
    try:
        for request in running:
            if request.rows is None:
                request.rows = request.make()
        members = [r.rows for r in running if r.rows is not None]
        step_together(network, members)
        for request in running:
            assert request.rows is not None
            if request.progress is not None:
                request.progress(request.rows.done, request.rows.total)
            if finished(request.rows):
                try:
                    request.outcome = request.finish(request.rows.result())
                except Exception as error:  # this request's answer alone went wrong
                    request.outcome = error
    except Exception as error:
        return error
    return None


def _within(requests: list[_Request], budget: int, alone: bool) -> list[_Request]:
    """``requests`` in order, skipping any that would take the rows past ``budget``; with
    ``alone``, a first one larger than the budget goes by itself."""
    taken: list[_Request] = []
    rows = 0
    for request in requests:
        if rows + request.size <= budget or (alone and not taken):
            taken.append(request)
            rows += request.size
            if rows > budget:
                break
    return taken


def _answer(request: _Request, outcome: Any) -> None:
    if request.future.done():
        return
    if isinstance(outcome, Exception):
        request.future.set_exception(outcome)
    else:
        request.future.set_result(outcome)


def _cheapest(request: _Request) -> tuple[float, int]:
    return request.cost, request.order


def _remaining(request: _Request) -> tuple[float, int]:
    return request.remaining_cost(), request.order


def _oldest(request: _Request) -> int:
    return request.order


def _priority(running: list[_Request]) -> tuple[float, int]:
    """A loop's claim on a lane, as a batch's (service.batching): its requests' remaining
    cost, then the earliest arrival."""
    return sum(r.remaining_cost() for r in running), min(r.order for r in running)
