"""Fault drills against a real `bentoml serve` under load; prints what every request got.

    python -m load_tests.faults                 # both drills, about a minute and a half
    python -m load_tests.faults --drills kill   # one of them

``kill``: SIGKILL the worker process while clients keep scoring single images; counts the
requests that failed and how, and the time until requests succeed again with no restart by
hand. ``term``: SIGTERM the server while DDIM samples are in flight; counts the requests in
flight that finished, those that failed, and what requests sent afterwards got.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from load_tests.payloads import image_pool
from load_tests.serving import running_server, server_environment


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    result: str  # the HTTP status, or the client-side exception's class name


class Load:
    """``concurrency`` closed-loop clients POSTing one body until stopped, in a thread."""

    def __init__(self, url: str, path: str, body: dict[str, Any], concurrency: int) -> None:
        self.url, self.path, self.body, self.concurrency = url, path, body, concurrency
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(self.url + self.path, json=self.body) as response:
                    await response.read()
                    result = str(response.status)
            except (TimeoutError, aiohttp.ClientError) as error:
                result = type(error).__name__
                await asyncio.sleep(0.05)  # a refused connection must not spin
            self.outcomes.append(Outcome(started, time.monotonic(), result))


def _worker_pids(server: psutil.Process) -> list[int]:
    return [
        child.pid
        for child in server.children(recursive=True)
        if "worker" in " ".join(child.cmdline()) and "bentoml" in " ".join(child.cmdline())
    ]


def _tally(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(collections.Counter(o.result for o in outcomes))


def kill_drill(env: dict[str, str], scratch: Path, seconds: float) -> dict[str, Any]:
    body = {"model": "vae", "images": image_pool(8).normal[:1]}
    with running_server(env, scratch / "kill.log") as (url, process):
        workers = _worker_pids(psutil.Process(process.pid))
        with Load(url, "/score", body, 8) as load:
            time.sleep(3)
            killed_at = time.monotonic()
            os.kill(workers[0], signal.SIGKILL)
            time.sleep(seconds)
        after = [o for o in load.outcomes if o.ended > killed_at]
        failed = [o for o in after if o.result != "200"]
        recovered = [o for o in after if o.result == "200" and o.started > killed_at]
        respawned = _worker_pids(psutil.Process(process.pid))
    return {
        "workers_before": workers,
        "workers_after": respawned,
        "requests_before_kill": _tally([o for o in load.outcomes if o.ended <= killed_at]),
        "requests_after_kill": _tally(after),
        "failed_after_kill": len(failed),
        "seconds_to_first_success_after_kill": (
            min(o.ended for o in recovered) - killed_at if recovered else None
        ),
    }


def term_drill(env: dict[str, str], scratch: Path) -> dict[str, Any]:
    body = {"model": "ddpm", "n": 1, "steps": 20, "seed": 0}
    with (
        running_server(env, scratch / "term.log") as (url, process),
        Load(url, "/sample", body, 4) as load,
    ):
        time.sleep(6)
        termed_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=120)
        exited_at = time.monotonic()
        time.sleep(2)
    in_flight = [o for o in load.outcomes if o.started < termed_at < o.ended]
    later = [o for o in load.outcomes if o.started >= termed_at]
    return {
        "completed_before_sigterm": _tally([o for o in load.outcomes if o.ended <= termed_at]),
        "in_flight_at_sigterm": _tally(in_flight),
        "sent_after_sigterm": _tally(later),
        "seconds_to_exit": exited_at - termed_at,
        "exit_code": exit_code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drills", default="kill,term", help="Comma-separated: kill, term.")
    parser.add_argument("--seconds", type=float, default=40.0, help="Load after the SIGKILL.")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="elbo-faults-") as scratch:
        env = server_environment({}, Path(scratch) / "bentoml-home")
        for drill in args.drills.split(","):
            if drill == "kill":
                report["kill"] = kill_drill(env, Path(scratch), args.seconds)
            elif drill == "term":
                report["term"] = term_drill(env, Path(scratch))
            else:
                parser.error(f"unknown drill {drill!r}")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
