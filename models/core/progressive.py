"""Long loops as generators, after improved-diffusion's ``p_sample_loop_progressive``.

A progressive loop yields ``(done, total)`` after every network call and returns its result
(``result = yield from loop`` inside another loop). Its caller decides what happens between
calls: report progress, stop early (``close()``), or pause, which is how the service hands a
model lane to cheaper work in the middle of a long bound. The plain functions beside each
loop (``ddim_sample``, ``vlb_exact``, ``VAE.iwae_bound`` ...) run it to the end.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

T = TypeVar("T")

ProgressCallback = Callable[[int, int], None]
# Yields (done, total) network calls; returns the loop's result.
Progressive = Generator[tuple[int, int], None, T]


def reported(loop: Progressive[T], on_step: ProgressCallback | None) -> Progressive[T]:
    """``loop`` unchanged, also telling ``on_step(done, total)`` after every call."""
    if on_step is None:
        return (yield from loop)
    while True:
        try:
            done, total = next(loop)
        except StopIteration as end:
            return end.value
        on_step(done, total)
        yield done, total


def run_to_end(loop: Progressive[T], on_step: ProgressCallback | None = None) -> T:
    """The result of ``loop``, run without pausing; ``on_step`` as for :func:`reported`."""
    steps = reported(loop, on_step)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def single_step(compute: Callable[[], T]) -> Progressive[T]:
    """Work that is one network call as a progressive loop: ``compute()``, then (1, 1).

    Callers that pause or report between calls treat every operation alike this way."""
    result = compute()
    yield 1, 1
    return result
