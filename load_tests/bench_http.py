"""HTTP parts of the benchmark: closed-loop load at fixed concurrency against a served
endpoint, with latency percentiles, and the server's resident memory (RSS).

The load generator is one asyncio loop in this process: each of ``concurrency`` clients
sends its next request as soon as the previous one is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import psutil


@dataclass(frozen=True)
class Request:
    path: str
    body: dict[str, Any]
    items: int  # images scored or drawn per request


async def _client(session, url: str, request: Request, stop_at: float, out: dict) -> None:
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        try:
            async with session.post(url + request.path, json=request.body) as response:
                await response.read()
                ok = response.status == 200
        except aiohttp.ClientError:
            ok = False
        out["latencies" if ok else "failures"].append(time.perf_counter() - start)


async def _closed_loop(url: str, request: Request, concurrency: int, seconds: float) -> dict:
    out: dict[str, list[float]] = {"latencies": [], "failures": []}
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter()
        stop_at = start + seconds
        clients = [_client(session, url, request, stop_at, out) for _ in range(concurrency)]
        await asyncio.gather(*clients)
        out["elapsed"] = time.perf_counter() - start  # includes the last requests' tails
    return out


def measure(url: str, request: Request, concurrency: int, seconds: float) -> dict[str, Any]:
    """Requests/s, items/s, failures and latency p50/p95/p99 (ms) of one closed-loop run."""
    asyncio.run(_closed_loop(url, request, concurrency, min(seconds, 2.0) / 4))  # warm-up
    out = asyncio.run(_closed_loop(url, request, concurrency, seconds))
    latencies = np.asarray(out["latencies"]) * 1000
    done = len(latencies)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if done else (np.nan,) * 3
    return {
        "concurrency": concurrency,
        "requests": done,
        "failures": len(out["failures"]),
        "requests_per_second": done / out["elapsed"],
        "items_per_second": done * request.items / out["elapsed"],
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
    }


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its children (BentoML's workers)."""
    process = psutil.Process(pid)
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total


class PeakRss:
    """Samples a process tree's RSS in a background thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, tree_rss_bytes(self.pid))
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval_s)
