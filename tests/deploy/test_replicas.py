"""Two real `bentoml serve` replicas behind Debian's HAProxy (round-robin), sharing tasks
through a real redis-server (docs/tasks.md): every poll through the balancer is answered,
a replica killed mid-task loses it to the other, results outlive a restart of every replica,
and a Redis outage costs the task routes only. The replicas serve the VAE alone (a model
repository of one) with a 2 s lease, so the whole module runs in a few minutes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest
import requests

from load_tests.redis_server import RedisServer
from load_tests.serving import REPO_ROOT, free_port, running_server, server_environment

LEASE_S = 2.0
HAPROXY_CONFIG = """
global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response
frontend elbo_serve
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 500ms fall 2 rise 1 check
{servers}
"""


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {timeout_s} s")


def vae_only(tmp: Path) -> Path:
    """A model repository of the bundled VAE alone: quick to load and warm."""
    repository = tmp / "models"
    repository.mkdir()
    (repository / "vae").symlink_to(REPO_ROOT / "checkpoints" / "vae")
    return repository


def replica_environment(overrides: dict[str, str], home: Path) -> dict[str, str]:
    env = server_environment(overrides, home)
    for name in ("ELBO_SERVE_MODELS", "ELBO_SERVE_API_KEYS"):  # set by in-process tests
        if name not in overrides:
            env.pop(name, None)
    return env


class Cluster:
    """The replicas (restartable, killable), the balancer and Redis."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.stack = tmp, ExitStack()
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is not installed: `make test` installs it")
        (tmp / "redis").mkdir()
        self.redis = RedisServer(tmp / "redis")
        self.redis.start()
        self.env = {
            "ELBO_SERVE_MODEL_DIR": str(vae_only(tmp)),
            "ELBO_SERVE_TASK_STORE": self.redis.url,
            "ELBO_SERVE_TASK_LEASE_S": str(LEASE_S),
            "ELBO_SERVE_TORCH_THREADS": "1",
            "ELBO_SERVE_MODEL_LANES": "1",
        }
        self.ports = [free_port(), free_port()]
        self.replicas: list[tuple[ExitStack, subprocess.Popen] | None] = [None, None]
        self.lb_url = self._balancer()

    def _balancer(self) -> str:
        port = free_port()
        servers = "\n".join(f"    server r{i} 127.0.0.1:{p}" for i, p in enumerate(self.ports))
        config = self.tmp / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
        log = open(self.tmp / "haproxy.log", "w")  # noqa: SIM115 (closed with the stack)
        self.stack.callback(log.close)
        process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=log)
        self.stack.callback(lambda: (process.terminate(), process.wait(10)))
        return f"http://127.0.0.1:{port}"

    def start(self, *indices: int) -> None:
        """Start the replicas ``indices`` side by side, and return when each is ready."""
        with ThreadPoolExecutor(len(indices)) as pool:
            list(pool.map(self._start, indices))

    def _start(self, i: int) -> None:
        stack = ExitStack()
        env = replica_environment(self.env, self.tmp / f"bentoml-{i}")
        log = self.tmp / f"replica-{i}.log"
        _, process = stack.enter_context(running_server(env, log, port=self.ports[i]))
        self.replicas[i] = (stack, process)

    def stop(self, *indices: int) -> None:
        """Stop the replicas ``indices`` side by side (each drains, as SIGTERM asks)."""
        with ThreadPoolExecutor(len(indices)) as pool:
            list(pool.map(self._stop, indices))

    def _stop(self, i: int) -> None:
        if self.replicas[i] is not None:
            self.replicas[i][0].close()
            self.replicas[i] = None

    def kill(self, i: int) -> None:
        """SIGKILL the replica's server and its workers: no drain, no goodbye."""
        stack, process = self.replicas[i]
        for child in psutil.Process(process.pid).children(recursive=True):
            child.send_signal(signal.SIGKILL)
        process.kill()
        process.wait()
        stack.close()
        self.replicas[i] = None

    def running_on(self, kind: str) -> int | None:
        """The replica whose metrics say it runs a task of ``kind``."""
        for i, port in enumerate(self.ports):
            if self.replicas[i] is None:
                continue
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            line = f'elbo_serve_tasks_running{{kind="{kind}"}} 1.0'
            if line in text:
                return i
        return None

    def both_in_balancer(self) -> None:
        # two answers in a row from /readyz through the balancer: both replicas are back
        _wait(lambda: all(self.get("/readyz").status_code == 200 for _ in range(4)), 30, "up")

    def get(self, path: str, **params):
        return requests.get(self.lb_url + path, params=params, timeout=60)

    def post(self, path: str, body: dict, **kwargs):
        return requests.post(self.lb_url + path, json=body, timeout=300, **kwargs)

    def close(self) -> None:
        self.stop(0, 1)
        self.stack.close()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("replicas"))
    try:
        cluster.start(0, 1)
        cluster.both_in_balancer()
        yield cluster
    finally:
        cluster.close()


class Polls:
    """Every status/get through the balancer, and those not answered 200."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster, self.count, self.failures = cluster, 0, []

    def result(self, kind: str, task_id: str, timeout_s: float = 120) -> dict:
        def finished():
            self.count += 1
            answer = self.cluster.get(f"/{kind}/status", task_id=task_id)
            if answer.status_code != 200:
                self.failures.append(answer.text)
                return None
            return answer.json() if answer.json()["status"] != "in_progress" else None

        status = _wait(finished, timeout_s, f"{task_id} finished")
        assert status["status"] == "completed", status
        self.count += 1
        answer = self.cluster.get(f"/{kind}/get", task_id=task_id)
        assert answer.status_code == 200, answer.text
        return answer.json()


def _sample_body(seed: int) -> dict:
    return {"model": "vae", "n": 2, "seed": seed}


def test_twenty_tasks_and_all_their_polls_through_the_balancer_succeed(cluster):
    polls = Polls(cluster)
    submitted = [cluster.post("/sample_task/submit", _sample_body(seed)) for seed in range(20)]
    assert [answer.status_code for answer in submitted] == [200] * 20
    for seed, answer in enumerate(submitted):
        result = polls.result("sample_task", answer.json()["task_id"])
        assert result == cluster.post("/sample", _sample_body(seed)).json()
    print(f"\n{polls.count} polls through the balancer, {len(polls.failures)} failed")
    assert polls.failures == []
    cluster.results = {answer.json()["task_id"]: seed for seed, answer in enumerate(submitted)}


def test_a_task_on_a_killed_replica_completes_on_the_other_with_the_same_bytes(cluster):
    # About 5 s of one core (the decoder 600 times): long enough to be found running and
    # killed part-way.
    image = [[(x * y) % 256 for x in range(28)] for y in range(28)]
    body = {"model": "vae", "images": [image, image[::-1]], "method": "iwae", "k": 300, "seed": 7}
    task_id = cluster.post("/likelihood_task/submit", body).json()["task_id"]
    runner = _wait(lambda: cluster.running_on("likelihood_task"), 60, "running")
    cluster.kill(runner)
    killed_at = time.monotonic()
    survivor = 1 - runner

    def taken_over():
        return cluster.get("/likelihood_task/status", task_id=task_id).json()["attempts"] == 2

    _wait(taken_over, LEASE_S + 30, "taken over")
    takeover_s = time.monotonic() - killed_at
    result = Polls(cluster).result("likelihood_task", task_id, timeout_s=300)
    done_s = time.monotonic() - killed_at
    print(f"\ntaken over {takeover_s:.1f} s after the kill, completed after {done_s:.1f} s")
    assert takeover_s < LEASE_S + 5
    synchronous = requests.post(
        f"http://127.0.0.1:{cluster.ports[survivor]}/likelihood", json=body, timeout=300
    )
    assert result == synchronous.json()
    cluster.results[task_id] = None


def test_finished_results_are_readable_after_every_replica_restarts(cluster):
    cluster.stop(0, 1)
    cluster.start(0, 1)
    cluster.both_in_balancer()
    for task_id, seed in cluster.results.items():
        kind = "sample_task" if seed is not None else "likelihood_task"
        answer = cluster.get(f"/{kind}/get", task_id=task_id)
        assert answer.status_code == 200
        if seed is not None:
            assert answer.json()["seed"] == seed


def test_redis_down_costs_the_task_routes_only_and_they_recover(cluster):
    image = [[0] * 28] * 28
    finished = next(iter(cluster.results))
    cluster.redis.stop()
    try:
        refused = cluster.post("/sample_task/submit", _sample_body(1))
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "task store" in refused.json()["error"]
        assert cluster.get("/sample_task/status", task_id=finished).status_code == 503
        scored = cluster.post("/score", {"model": "vae", "images": [image], "fpr": 0.1})
        assert scored.status_code == 200
        readiness = cluster.get("/readyz")
        assert readiness.status_code == 200 and "task_store" in readiness.json()["degraded"]
    finally:
        cluster.redis.start()
    assert cluster.get("/sample_task/get", task_id=finished).status_code == 200
    task_id = cluster.post("/sample_task/submit", _sample_body(3)).json()["task_id"]
    assert (
        Polls(cluster).result("sample_task", task_id)
        == cluster.post("/sample", _sample_body(3)).json()
    )


def test_the_sqlite_default_keeps_results_over_a_restart(tmp_path):
    overrides = {
        "ELBO_SERVE_MODEL_DIR": str(vae_only(tmp_path)),
        "ELBO_SERVE_TASK_DIR": str(tmp_path / "tasks"),
        "ELBO_SERVE_TORCH_THREADS": "1",
    }
    env = replica_environment(overrides, tmp_path / "bentoml")
    env.pop("ELBO_SERVE_TASK_STORE", None)
    body = _sample_body(11)
    with running_server(env, tmp_path / "first.log") as (url, _):
        task_id = requests.post(f"{url}/sample_task/submit", json=body, timeout=30).json()[
            "task_id"
        ]
        _wait(
            lambda: (
                requests.get(f"{url}/sample_task/status", params={"task_id": task_id}).json()[
                    "status"
                ]
                == "completed"
            ),
            60,
            "completed",
        )
        first = requests.get(f"{url}/sample_task/get", params={"task_id": task_id}).json()
    with running_server(env, tmp_path / "second.log") as (url, _):
        again = requests.get(f"{url}/sample_task/get", params={"task_id": task_id}, timeout=30)
        assert again.status_code == 200 and again.json() == first
