"""Step-level loops: requests whose rows advance one network call at a time, together.

A :class:`StepRows` is one request's rows on its way through an iterative loop (a sampler,
DDIM inversion): it carries its own timestep, state and generator, says what it wants the
network to see next, and applies its own update to the network's answer. Any number of them,
each at its own step of its own loop, can share one network call (:func:`step_together`), as
Orca's iteration-level scheduling does for language models; joining or leaving between calls
changes nothing in any of them, because each row's update reads only its own slice of the
output and draws noise only from its own generator (:mod:`models.core.noise`).

The whole-batch loops are the same objects run alone (:func:`run_rows`), so there is one
implementation of every update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from models.core.progressive import Progressive

Network = Callable[..., torch.Tensor]


class StepRows(Protocol):
    """One request's rows in a step-level loop.

    ``rows`` is its number of rows (B); ``done`` and ``total`` count its network calls.
    """

    rows: int
    done: int
    total: int

    def network_input(self) -> tuple[torch.Tensor, ...]:
        """What the network sees for these rows at the next call: tensors (B, ...)."""
        ...

    def advance(self, output: torch.Tensor) -> None:
        """Apply this loop's update to the network's output (B, ...) for these rows."""
        ...

    def result(self) -> Any:
        """The loop's result, once ``done == total``."""
        ...


def finished(rows: StepRows) -> bool:
    return rows.done >= rows.total


@torch.no_grad()
def step_together(network: Network, members: Sequence[StepRows]) -> None:
    """One network call on every member's next input, concatenated along dim 0; each member
    advances on its own slice of the output."""
    inputs = [member.network_input() for member in members]
    columns = [torch.cat(parts) for parts in zip(*inputs, strict=True)]
    output = network(*columns)
    for member, part in zip(members, torch.split(output, [m.rows for m in members]), strict=True):
        member.advance(part)


def run_rows(network: Network, rows: StepRows) -> Progressive[Any]:
    """``rows`` run alone to the end, yielding (done, total) after every network call."""
    while not finished(rows):
        step_together(network, [rows])
        yield rows.done, rows.total
    return rows.result()


class Then:
    """Two loops one after the other on the same rows: ``first``, then ``second(its result)``
    (``second_total`` network calls), whose result ``combine(first's, second's)`` gives."""

    def __init__(
        self,
        first: StepRows,
        second: Callable[[Any], StepRows],
        second_total: int,
        combine: Callable[[Any, Any], Any],
    ) -> None:
        self.first, self._second, self.combine = first, second, combine
        self.rows, self.total = first.rows, first.total + second_total
        self.second: StepRows | None = None
        self._first_result: Any = None

    @property
    def done(self) -> int:
        return self.first.done + (0 if self.second is None else self.second.done)

    def _current(self) -> StepRows:
        if self.second is None and finished(self.first):
            self._first_result = self.first.result()
            self.second = self._second(self._first_result)
        return self.first if self.second is None else self.second

    def network_input(self) -> tuple[torch.Tensor, ...]:
        return self._current().network_input()

    def advance(self, output: torch.Tensor) -> None:
        self._current().advance(output)
        if finished(self.first):
            self._current()  # start the second loop at once, so its total counts from now

    def result(self) -> Any:
        assert self.second is not None and finished(self.second), "not finished yet"
        return self.combine(self._first_result, self.second.result())
