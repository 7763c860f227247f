"""Step-level batching against whole-request batching (issue 22's cells), one run, one table.

    python -m load_tests.bench_step_batching                      # ~5 minutes
    python -m load_tests.bench_step_batching --seconds 60 --baseline-repo /work/main

For each variant, starts ``bentoml serve`` on loopback (default settings but for the variant's)
and measures, with one-image ``/sample`` requests of the bundled DDPM over HTTP:
- short behind long: a DDIM-``--short-steps`` request's median latency alone, and while two
  DDIM-``--long-steps`` x ``--long-n`` requests run;
- uniform: ``--concurrency`` asyncio httpx clients sending DDIM-50 for ``--seconds``;
- mixed: the same with steps drawn from {10, 25, 50, 100} (seeded, the same draws for both).
Clients send for ``--seconds``, then wait for their answers for at most ``--seconds`` more
(the cut). Network rows/s is the server's own count (``elbo_serve_denoising_rows_total``)
over the steady part of the sending window (from a sixth of ``--seconds`` in to its end), so
neither the start, when every client sends at once, nor the drain after it, when fewer
requests share each call, counts; the rows of the requests answered by the cut, over the
time to the cut, are printed beside it ("answered rows/s"). p50 / p99 are of every
request sent; one still unanswered at the cut counts as its age then, so a starved request
shows as a tail and never drops out.

The variants: ``main`` (step batching off: whole requests batched by key, as on main; from
``--baseline-repo`` if given) and ``steps`` (ELBO_SERVE_STEP_BATCHING=true). They run one
after the other, so both see the same machine. Not a test: the figures depend on the machine
and its load, which is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from load_tests.serving import REPO_ROOT, running_server, server_environment

MIXED_STEPS = (10, 25, 50, 100)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--seconds", type=float, default=25.0, help="Length of each load cell (the issue: 60).")
    add("--concurrency", type=int, default=16, help="Concurrent clients of the load cells.")
    add("--short-steps", type=int, default=10)
    add("--long-steps", type=int, default=250, help="The issue: 250.")
    add("--long-n", type=int, default=16, help="Images per long request (the issue: 16).")
    add("--probes", type=int, default=5, help="Short requests measured alone.")
    add("--baseline-repo", type=Path, default=None, help="Checkout to serve 'main' from.")
    add("--port", type=int, default=None, help="Loopback port (default: a free one).")
    add("--variants", nargs="+", default=["main", "steps"], choices=["main", "steps"])
    add("--out", type=Path, default=None, help="Also write the figures here as JSON.")
    return parser.parse_args(argv)


async def _sample(client: httpx.AsyncClient, url: str, steps: int, n: int = 1) -> float:
    body = {"model": "ddpm", "n": n, "steps": steps, "sampler": "ddim"}
    start = time.perf_counter()
    response = await client.post(f"{url}/sample", json=body)
    response.raise_for_status()
    return time.perf_counter() - start


async def short_behind_long(url: str, args: argparse.Namespace) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=3600) as client:
        alone = [await _sample(client, url, args.short_steps) for _ in range(args.probes)]
        longs = [
            asyncio.ensure_future(_sample(client, url, args.long_steps, args.long_n))
            for _ in range(2)
        ]
        await asyncio.sleep(1.0)  # both running
        behind, deadline = [], time.monotonic() + args.seconds
        while not all(task.done() for task in longs) and time.monotonic() < deadline:
            behind.append(await _sample(client, url, args.short_steps))
        for task in longs:
            task.cancel()  # the server stops them (disconnect cancellation)
    return {
        "alone_s": statistics.median(alone),
        "behind_s": statistics.median(behind) if behind else float("nan"),
        "probes_behind": len(behind),
    }


@dataclass
class _Sent:
    steps: int
    start: float
    end: float | None = None


async def _denoising_rows(client: httpx.AsyncClient, url: str) -> float:
    """The server's ``elbo_serve_denoising_rows_total`` for the bundled DDPM, summed over
    operations (whole-request batches and step calls alike)."""
    text = (await client.get(f"{url}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "elbo_serve_denoising_rows"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("model") == "ddpm"
    )


async def _steady_rows_per_s(url: str, start: float, window_end: float, warm_up: float) -> float:
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.sleep(start + warm_up - time.perf_counter())
        rows, began = await _denoising_rows(client, url), time.perf_counter()
        await asyncio.sleep(window_end - time.perf_counter())
        return (await _denoising_rows(client, url) - rows) / (time.perf_counter() - began)


async def load_cell(url: str, args: argparse.Namespace, draw_steps) -> dict[str, Any]:
    """``--concurrency`` clients in a closed loop for ``--seconds``."""
    sent: list[_Sent] = []
    start = time.perf_counter()
    window_end = start + args.seconds
    steady = asyncio.ensure_future(_steady_rows_per_s(url, start, window_end, args.seconds / 6))

    async def client_loop(client: httpx.AsyncClient, rng: random.Random) -> None:
        while time.perf_counter() < window_end:
            request = _Sent(draw_steps(rng), time.perf_counter())
            sent.append(request)
            await _sample(client, url, request.steps)
            request.end = time.perf_counter()

    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        loops = [
            asyncio.ensure_future(client_loop(client, random.Random(i)))
            for i in range(args.concurrency)
        ]
        await asyncio.wait(loops, timeout=2 * args.seconds)
        cut = time.perf_counter()
        for task in loops:
            task.cancel()
    answered = [r for r in sent if r.end is not None]
    latencies = sorted((r.end if r.end is not None else cut) - r.start for r in sent)
    rows = sum(r.steps for r in answered)
    return {
        "images_per_s": len(answered) / (cut - start),
        "rows_per_s": await steady,
        "answered_rows_per_s": rows / (cut - start),
        "p50_s": _quantile(latencies, 0.5),
        "p99_s": _quantile(latencies, 0.99),
        "requests": len(sent),
        "unanswered_at_cut": sum(r.end is None for r in sent),
    }


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    # Short behind long last: its long requests are cancelled, not waited for.
    uniform = await load_cell(url, args, lambda rng: 50)
    mixed = await load_cell(url, args, lambda rng: rng.choice(MIXED_STEPS))
    return {
        "uniform_ddim50": uniform,
        "mixed_steps": mixed,
        "short_behind_long": await short_behind_long(url, args),
    }


def run_variant(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    overrides = {"ELBO_SERVE_STEP_BATCHING": "true" if name == "steps" else "false"}
    env = server_environment(overrides, scratch / f"bentoml-{name}")
    cwd = args.baseline_repo if name == "main" and args.baseline_repo else REPO_ROOT
    log = scratch / f"server-{name}.log"
    with running_server(env, log, port=args.port, cwd=cwd) as (url, _process):
        return asyncio.run(measure(url, args))


def _ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}x" if old else "n/a"


def report(figures: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, cells in figures.items():
        sbl = cells["short_behind_long"]
        lines.append(
            f"{name:6s} short alone / behind long: {sbl['alone_s']:.2f} s / {sbl['behind_s']:.2f} s"
            f" ({_ratio(sbl['behind_s'], sbl['alone_s'])}, {sbl['probes_behind']} probes)"
        )
        for cell in ("uniform_ddim50", "mixed_steps"):
            c = cells[cell]
            lines.append(
                f"{name:6s} {cell:15s} {c['images_per_s']:.2f} images/s, "
                f"{c['rows_per_s']:.1f} rows/s ({c['answered_rows_per_s']:.1f} answered), "
                f"p50 {c['p50_s']:.1f} s, p99 {c['p99_s']:.1f} s "
                f"(p99/p50 {c['p99_s'] / c['p50_s']:.1f}; {c['requests']} sent, "
                f"{c['unanswered_at_cut']} unanswered at the cut)"
            )
        mixed, uniform = cells["mixed_steps"], cells["uniform_ddim50"]
        lines.append(
            f"{name:6s} mixed rows/s vs uniform: "
            f"{_ratio(mixed['rows_per_s'], uniform['rows_per_s'])}"
        )
    if {"main", "steps"} <= figures.keys():
        new, old = figures["steps"], figures["main"]
        for cell in ("uniform_ddim50", "mixed_steps"):
            rows = _ratio(new[cell]["rows_per_s"], old[cell]["rows_per_s"])
            p99 = _ratio(new[cell]["p99_s"], old[cell]["p99_s"])
            lines.append(f"steps vs main, {cell}: rows/s {rows}, p99 {p99}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="elbo-step-batching-") as scratch:
        for name in args.variants:
            figures[name] = run_variant(name, args, Path(scratch))
    machine = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    for line in report(figures):
        print(line)
    print(json.dumps(machine))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"figures": figures, "machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
