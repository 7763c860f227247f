"""Head-of-line measurement (issue 10, finding 5): a single-image /score's latency while heavy
likelihood bounds keep the model lanes busy.

    python -m load_tests.head_of_line                        # the issue's case, ~1 minute
    python -m load_tests.head_of_line --heavy 2 --images 8 --k 5000 --seconds 20

Starts ``bentoml serve`` on loopback (one torch thread per lane, as the benchmark), measures a
one-image VAE ``/score`` on the idle server, sends the heavy IWAE requests to ``/likelihood``
(where the request-cost ceiling refuses them: printed) and then as ``/likelihood_task``
submissions, waits until each reports progress, and sends a one-image ``/score`` every
``--interval`` seconds for ``--seconds``. Prints latency p50 / max, idle and under load, and
how far the heavy tasks got. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from load_tests.serving import running_server, server_environment
from models.data import load_fashion_mnist
from service.imaging import to_base64_png


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--heavy", type=int, default=2, help="Heavy requests (the issue: 2, one per lane).")
    add("--images", type=int, default=8, help="Images per heavy request.")
    add("--k", type=int, default=5000, help="IWAE samples of the heavy requests.")
    add("--seconds", type=float, default=20.0, help="How long to probe under load.")
    add("--interval", type=float, default=1.0, help="Seconds between probe starts.")
    add("--idle-probes", type=int, default=5, help="Probes on the idle server first.")
    add("--torch-threads", type=int, default=1, help="ELBO_SERVE_TORCH_THREADS of the server.")
    add("--probe-timeout", type=float, default=60.0, help="Seconds a probe may wait.")
    add("--start-wait", type=float, default=120.0, help="Most seconds to wait for progress.")
    add(
        "--skip-synchronous",
        action="store_true",
        help="Do not try the heavy request on /likelihood first (a server without the cost "
        "ceiling would run it there for minutes).",
    )
    add("--out", type=Path, default=None, help="Also write the figures as JSON here.")
    return parser.parse_args(argv)


def _latency_s(url: str, body: dict[str, Any], timeout_s: float) -> float | None:
    """Seconds one /score took; None past ``timeout_s``."""
    start = time.perf_counter()
    try:
        response = requests.post(f"{url}/score", json=body, timeout=timeout_s)
    except requests.Timeout:
        return None
    response.raise_for_status()
    return time.perf_counter() - start


def _summary(latencies: list[float | None]) -> dict[str, Any]:
    answered = [latency for latency in latencies if latency is not None]
    return {
        "count": len(latencies),
        "timed_out": len(latencies) - len(answered),
        "p50_ms": 1000 * statistics.median(answered) if answered else None,
        "max_ms": 1000 * max(answered) if answered else None,
    }


def _progress(url: str, task_id: str) -> float | None:
    response = requests.post(f"{url}/task_progress", json={"task_id": task_id}, timeout=30)
    return response.json()["fraction"] if response.status_code == 200 else None


def _wait_running(url: str, tasks: list[str], wait_s: float) -> None:
    """Until every task has reported progress, or ``wait_s`` (a server that reports no
    progress for IWAE, as before these changes)."""
    deadline = time.monotonic() + wait_s
    while any(_progress(url, task) is None for task in tasks) and time.monotonic() < deadline:
        time.sleep(0.2)


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    pngs = [to_base64_png(image) for image in load_fashion_mnist("test")[0][: args.images]]
    probe = {"model": "vae", "images": pngs[:1]}
    idle = [_latency_s(url, probe, args.probe_timeout) for _ in range(args.idle_probes)]

    heavy = {"model": "vae", "method": "iwae", "k": args.k, "images": pngs}
    synchronous = None
    if not args.skip_synchronous:
        answer = requests.post(f"{url}/likelihood", json=heavy, timeout=600)
        synchronous = answer.status_code
        print(f"synchronous /likelihood of the heavy request: {answer.status_code}")
        if answer.status_code != 200:
            print(f"  {answer.json().get('error')}")
    tasks = [
        requests.post(f"{url}/likelihood_task/submit", json=heavy, timeout=60).json()["task_id"]
        for _ in range(args.heavy)
    ]
    _wait_running(url, tasks, args.start_wait)
    started = [_progress(url, task) or 0.0 for task in tasks]

    loaded: list[float | None] = []
    probing_since = time.monotonic()
    while time.monotonic() - probing_since < args.seconds:
        next_at = time.monotonic() + args.interval
        loaded.append(_latency_s(url, probe, args.probe_timeout))
        if loaded[-1] is None:  # stuck behind the heavy work: no point in more
            break
        time.sleep(max(0.0, next_at - time.monotonic()))
    window_s = time.monotonic() - probing_since
    ended = [_progress(url, task) or 0.0 for task in tasks]
    statuses = [
        requests.get(f"{url}/likelihood_task/status", params={"task_id": t}, timeout=30).json()
        for t in tasks
    ]
    return {
        "heavy": {"requests": args.heavy, "images": args.images, "k": args.k},
        "synchronous_status": synchronous,
        "idle": _summary(idle),
        "under_load": _summary(loaded),
        "window_seconds": window_s,
        "heavy_progress_start": started,
        "heavy_progress_end": ended,
        "heavy_status_end": [status["status"] for status in statuses],
    }


def _describe(summary: dict[str, Any], timeout_s: float) -> str:
    text = f"{summary['count']} requests"
    if summary["p50_ms"] is not None:
        text = f"p50 {summary['p50_ms']:.0f} ms, max {summary['max_ms']:.0f} ms ({text})"
    if summary["timed_out"]:
        text += f", {summary['timed_out']} with no answer within {timeout_s:.0f} s"
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="elbo-head-of-line-") as scratch:
        env = server_environment(
            {"ELBO_SERVE_TORCH_THREADS": str(args.torch_threads)}, Path(scratch) / "bentoml"
        )
        with running_server(env, Path(scratch) / "server.log") as (url, _process):
            figures = measure(url, args)
    figures["command"] = "python -m load_tests.head_of_line " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    figures["load_average_at_end"] = os.getloadavg()
    idle, loaded = figures["idle"], figures["under_load"]
    print(f"one-image /score, idle:       {_describe(idle, args.probe_timeout)}")
    print(
        f"one-image /score, under load: {_describe(loaded, args.probe_timeout)}, "
        f"over {figures['window_seconds']:.0f} s"
    )
    progress = zip(figures["heavy_progress_start"], figures["heavy_progress_end"], strict=True)
    done = [end - start for start, end in progress]
    print(
        f"heavy tasks ({figures['heavy_status_end']}) advanced "
        + ", ".join(f"{100 * d:.1f}%" for d in done)
        + " of their work meanwhile"
    )
    one, five, fifteen = figures["load_average_at_end"]
    print(f"load average at the end: {one:.1f} {five:.1f} {fifteen:.1f} (1, 5, 15 min)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
