"""Start ``bentoml serve`` on a loopback port, as users run it, and wait until it is ready.

Shared by the real-server tests, the Locust smoke test and the benchmark.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(overrides: Mapping[str, str], bentoml_home: Path) -> dict[str, str]:
    """This process's environment plus ``overrides``, private to one server."""
    env = {
        **os.environ,
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(bentoml_home),
        **overrides,
    }
    # `bentoml serve` sets its own multi-process metrics directory; an inherited one
    # (the in-process tests set it) would be shared with this process.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # The SQLite task store too, unless ``overrides`` name one: a server's tasks are its own.
    if "ELBO_SERVE_TASK_DIR" not in overrides:
        env["ELBO_SERVE_TASK_DIR"] = str(bentoml_home / "tasks")
    return env


@contextmanager
def running_server(
    env: Mapping[str, str],
    log_path: Path,
    ready_timeout_s: float = 180.0,
    port: int | None = None,
    cwd: Path = REPO_ROOT,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``bentoml serve`` from ``cwd`` (this repository's root; another checkout's to measure
    its code) on loopback ``port`` (default: a free one); yields its URL and process once
    /readyz answers 200, and stops it afterwards."""
    port = free_port() if port is None else port
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with running_process(command, port, env, log_path, ready_timeout_s, cwd) as served:
        yield served


@contextmanager
def running_process(
    command: list[str],
    port: int,
    env: Mapping[str, str],
    log_path: Path,
    ready_timeout_s: float = 180.0,
    cwd: Path = REPO_ROOT,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Any HTTP server ``command`` listening on loopback ``port`` with a /readyz route."""
    with open(log_path, "w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path, ready_timeout_s)
        yield url, process
    finally:
        _stop(process)


def _stop(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM, then, past ``grace_s``, SIGKILL to the server and its workers: BentoML's drain
    waits for running background tasks, which may have minutes of work left."""
    import psutil

    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()  # first, so that it restarts no worker
        process.wait()
        for worker in workers:
            with suppress(psutil.NoSuchProcess):
                worker.kill()


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or too busy warming up to answer: not ready
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not become ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
