"""The SLO gate: a Locust run fails (non-zero exit code) when its failure ratio or any
endpoint's p95 latency passes its limit.

Limits come from the command line or from any Locust config file (``--config``, or
``locust.conf`` beside the run), since Locust reads custom arguments from both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

SLO_EXIT_CODE = 3  # distinct from Locust's own 1 (errors) and 2 (crashed greenlets)


class Entry(Protocol):
    """What the gate reads of a ``locust.stats.StatsEntry``."""

    name: str
    method: str
    num_requests: int

    def get_response_time_percentile(self, percent: float) -> float: ...


@dataclass(frozen=True)
class SloLimits:
    max_fail_ratio: float = 0.0
    p95_ms: float | None = None  # for every request name without its own limit
    p95_ms_by_name: Mapping[str, float] = field(default_factory=dict)

    def p95_limit(self, name: str) -> float | None:
        return self.p95_ms_by_name.get(name, self.p95_ms)


def parse_limits_by_name(text: str) -> dict[str, float]:
    """``"/score vae 1=200;/sample ddpm=5000"`` -> {name: ms}. Semicolons separate, as
    request names hold spaces and commas are common in config files."""
    limits = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, _, value = item.rpartition("=")
        if not name:
            raise ValueError(f"--slo-p95-ms-by-name: expected NAME=MS, got {item!r}")
        limits[name.strip()] = float(value)
    return limits


def add_arguments(parser: Any) -> None:
    """Register the gate's options on Locust's (configargparse) parser."""
    group = parser.add_argument_group("SLO gate (exit code 3 when breached)")
    group.add_argument(
        "--slo-max-fail-ratio",
        type=float,
        default=0.0,
        help="Largest allowed share of failed requests, 0..1 (default 0: none may fail).",
    )
    group.add_argument(
        "--slo-p95-ms",
        type=float,
        default=None,
        help="Largest allowed p95 response time in ms of every request name (default: none).",
    )
    group.add_argument(
        "--slo-p95-ms-by-name",
        default="",
        help="Per request name p95 limits overriding --slo-p95-ms: 'NAME=MS;NAME=MS'.",
    )


def limits_from_options(options: Any) -> SloLimits:
    return SloLimits(
        max_fail_ratio=options.slo_max_fail_ratio,
        p95_ms=options.slo_p95_ms,
        p95_ms_by_name=parse_limits_by_name(options.slo_p95_ms_by_name),
    )


def breaches(limits: SloLimits, fail_ratio: float, entries: Iterable[Entry]) -> list[str]:
    """One line per limit passed; empty when the run met every limit."""
    found = []
    if fail_ratio > limits.max_fail_ratio:
        found.append(f"failure ratio {fail_ratio:.4f} > {limits.max_fail_ratio:.4f}")
    for entry in entries:
        limit = limits.p95_limit(entry.name)
        if limit is None or entry.num_requests == 0:
            continue
        p95 = entry.get_response_time_percentile(0.95)
        if p95 > limit:
            found.append(f"{entry.method} {entry.name}: p95 {p95:.0f} ms > {limit:g} ms")
    return found
