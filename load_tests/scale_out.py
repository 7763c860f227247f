"""Scale-out on one machine: N replicas of the image behind HAProxy, scraped by Prometheus.

    python -m load_tests.scale_out --replicas 1 2 --seconds 60 --out runs/scale_out.json
    python -m load_tests.scale_out --replicas 2 --kill-after 20 --seconds 60

For each N it starts deploy/compose/docker-compose.yml with N replicas (the machine's cores
shared out: ``--cpus`` cores each over N replicas, one lane per core), waits until HAProxy has
every replica up and Prometheus scrapes every one, runs the Locust traffic of
load_tests/locustfile.py through the balancer, and reports Locust's throughput, p50/p99 and
failures with the requests each replica served, read from Prometheus. With ``--kill-after S``
one replica is killed (SIGKILL) S seconds into the run: the report counts the failed requests
and what each replica served before and after the kill. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "deploy/compose/docker-compose.yml"
PROJECT = "elbo-scale"
LB_URL = "http://127.0.0.1:8080"
PROMETHEUS_URL = "http://127.0.0.1:9090"
HAPROXY_CSV_URL = "http://127.0.0.1:8404/stats;csv"
REQUESTS_METRIC = "bentoml_service_request_total"
READY_TIMEOUT_S = 300


@dataclass
class RunResult:
    replicas: int
    cpus_per_replica: float
    users: int
    seconds: float
    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    failures_by_error: dict[str, int] = field(default_factory=dict)
    served_by_replica: dict[str, float] = field(default_factory=dict)
    killed: str | None = None
    served_after_kill: dict[str, float] = field(default_factory=dict)


def compose(*args: str, env: dict[str, str] | None = None) -> str:
    command = ["docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def prometheus(query: str, at: float | None = None) -> list[dict]:
    params = {"query": query} | ({"time": f"{at:.3f}"} if at else {})
    reply = json.loads(get(f"{PROMETHEUS_URL}/api/v1/query?{urllib.parse.urlencode(params)}"))
    if reply["status"] != "success":
        raise RuntimeError(f"Prometheus {query!r}: {reply}")
    return reply["data"]["result"]


def replicas_up_in_haproxy() -> int:
    rows = csv.DictReader(get(HAPROXY_CSV_URL).decode().lstrip("# ").splitlines())
    return sum(
        row["pxname"] == "replicas" and row["svname"] != "BACKEND" and row["status"] == "UP"
        for row in rows
    )


def wait_until_serving(replicas: int) -> float:
    """Seconds until HAProxy has every replica up and Prometheus has scraped every one."""
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        try:
            balanced = replicas_up_in_haproxy()
            scraped = len(prometheus('up{job="elbo-serve"} == 1'))
        except OSError:
            balanced = scraped = 0
        if balanced == replicas and scraped == replicas:
            return time.monotonic() - start
        time.sleep(2)
    raise RuntimeError(f"not {replicas} replicas up after {READY_TIMEOUT_S} s")


def served(at: float) -> dict[str, float]:
    """Requests each replica had answered by ``at``, health checks and scrapes left out.

    The counters start at zero with each replica and only this run's traffic reaches the
    other endpoints, so their values are exact counts (``increase()`` would extrapolate).
    """
    query = (
        f'sum by (instance) ({REQUESTS_METRIC}{{job="elbo-serve",'
        f'endpoint!~"/metrics|/readyz|/livez"}})'
    )
    return {row["metric"]["instance"]: float(row["value"][1]) for row in prometheus(query, at)}


def locust(users: int, seconds: float, csv_prefix: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests/locustfile.py"),
        "--headless", "-u", str(users), "-r", str(users), "-t", f"{int(seconds)}s",
        "--host", LB_URL, "--csv", str(csv_prefix), "--only-summary",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def locust_totals(csv_prefix: Path) -> dict[str, float]:
    with open(f"{csv_prefix}_stats.csv") as stats:
        total = next(row for row in csv.DictReader(stats) if row["Name"] == "Aggregated")
    return {
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "requests_per_s": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
    }


def locust_failures(csv_prefix: Path) -> dict[str, int]:
    with open(f"{csv_prefix}_failures.csv") as failures:
        return {
            f"{row['Method']} {row['Name']}: {row['Error']}": int(row["Occurrences"])
            for row in csv.DictReader(failures)
        }


def replica_containers() -> list[str]:
    return compose("ps", "-q", "replica").split()


def run_once(args: argparse.Namespace, replicas: int) -> RunResult:
    cpus = args.cpus / replicas
    env = {"REPLICA_CPUS": f"{cpus:g}", "REPLICA_LANES": str(max(1, round(cpus)))}
    compose("up", "-d", "--build", "--scale", f"replica={replicas}", env=env)
    try:
        print(f"N={replicas}: serving after {wait_until_serving(replicas):.0f} s", flush=True)
        prefix = args.out.parent / f"scale_out_{replicas}{'_kill' if args.kill_after else ''}"
        start = time.time()
        process = locust(args.users, args.seconds, prefix)
        killed, kill_time = None, None
        if args.kill_after:
            time.sleep(args.kill_after)
            killed = replica_containers()[0]
            subprocess.run(["docker", "kill", killed], check=True, capture_output=True)
            kill_time = time.time()
            print(f"killed replica {killed[:12]} at {kill_time - start:.1f} s", flush=True)
        _, stderr = process.communicate(timeout=args.seconds + 120)
        end = time.time()
        time.sleep(5)  # two scrapes past the end, so the counters include the last requests
        result = RunResult(
            replicas=replicas,
            cpus_per_replica=cpus,
            users=args.users,
            seconds=args.seconds,
            **locust_totals(prefix),
            failures_by_error=locust_failures(prefix),
            served_by_replica=served(end + 4),
            killed=killed[:12] if killed else None,
        )
        if kill_time:
            # The last scrape before the kill: what each replica served before it. The killed
            # replica's series ends there, so its total is that value.
            before = served(kill_time)
            result.served_by_replica = before | result.served_by_replica
            result.served_after_kill = {
                instance: count - before.get(instance, 0.0)
                for instance, count in result.served_by_replica.items()
            }
        # Locust exits 1 when a request failed, and the locustfile's SLO gate 3 when the
        # failure ratio (default 0) or a p95 passed its limit: both are results to report.
        if process.returncode not in (0, 1, 3):
            raise RuntimeError(f"locust exited {process.returncode}: {stderr.decode()[-2000:]}")
        return result
    finally:
        compose("down", "--timeout", "30")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1),
                        help="cores shared out over the replicas")  # fmt: skip
    parser.add_argument("--kill-after", type=float, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/scale_out.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = [run_once(args, replicas) for replicas in args.replicas]
    for result in results:
        print(json.dumps(asdict(result), indent=2))
    args.out.write_text(json.dumps([asdict(result) for result in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
