"""Locust traffic for elbo-serve: anomaly scoring, sampling, encoding and likelihood bounds.

Start the service (``make serve``), then, from the repository root::

    python -m locust -f load_tests/locustfile.py --headless -u 16 -r 4 -t 2m \\
        --host http://127.0.0.1:3000 --csv runs/load --html runs/load.html \\
        --slo-max-fail-ratio 0 --slo-p95-ms 2000 --slo-p95-ms-by-name '/sample ddpm ddim=20000'

Traffic kinds are ``HttpUser`` classes weighted by ``--weight-scoring``, ``--weight-sampling``
and ``--weight-bounds``. Scoring sends mostly one real test image per request, a share
``--batch-share`` of batches of 16-64, and each image is anomalous (handwritten digits, noisy
or inverted test images) with probability ``--anomalous-share``. The SLO gate (load_tests/slo.py)
makes the run exit with code 3 when the failure ratio or any request name's p95 passes its
limit; every option can also sit in a config file (``--config load_tests/locust.conf``).
Only loopback hosts are loaded: this is a benchmark of one machine, not a tool to aim at others.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from locust import HttpUser, between, events, task

# `locust` (the console script) does not put the working directory on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from load_tests import slo  # noqa: E402
from load_tests.payloads import ImagePool, image_pool  # noqa: E402
from load_tests.serving import LOOPBACK_HOSTS  # noqa: E402

DEFAULT_HOST = "http://127.0.0.1:3000"
logger = logging.getLogger("elbo_serve.load")
_pool: ImagePool | None = None


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    slo.add_arguments(parser)
    traffic = parser.add_argument_group("elbo-serve traffic")
    for kind, weight in (("scoring", 6), ("sampling", 2), ("bounds", 2)):
        traffic.add_argument(
            f"--weight-{kind}", type=int, default=weight, help=f"User weight of {kind} traffic."
        )
    traffic.add_argument("--batch-share", type=float, default=0.1, help="Scores sent in batches.")
    traffic.add_argument(
        "--ddpm-score-share", type=float, default=0.1, help="Scores asked of the DDPM."
    )
    traffic.add_argument("--anomalous-share", type=float, default=0.2, help="Anomalous images.")
    traffic.add_argument("--ddim-steps", type=int, default=10, help="DDIM steps of DDPM samples.")
    traffic.add_argument("--pool-size", type=int, default=256, help="Distinct images per kind.")
    traffic.add_argument(
        "--each-request-first",
        action="store_true",
        help="Each user starts with one request of every kind it sends (a short smoke run "
        "then reaches every request name however slow the CPU), then draws as usual.",
    )


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    host = urlsplit(environment.host or DEFAULT_HOST).hostname
    if host not in LOOPBACK_HOSTS:
        logger.error("refusing to load %s: only loopback hosts %s", host, sorted(LOOPBACK_HOSTS))
        sys.exit(2)
    options = environment.parsed_options
    if options is not None:  # None when Locust is used as a library
        ScoringUser.weight = options.weight_scoring
        SamplingUser.weight = options.weight_sampling
        BoundsUser.weight = options.weight_bounds


@events.quitting.add_listener
def _slo_gate(environment: Any, **_: Any) -> None:
    if environment.parsed_options is None:
        return
    limits = slo.limits_from_options(environment.parsed_options)
    stats = environment.stats
    found = slo.breaches(limits, stats.total.fail_ratio, stats.entries.values())
    for line in found:
        logger.error("SLO breached: %s", line)
    if found:
        environment.process_exit_code = slo.SLO_EXIT_CODE


def _pool_for(environment: Any) -> ImagePool:
    global _pool
    if _pool is None:  # once per process, shared by its users
        _pool = image_pool(_option(environment, "pool_size", 256))
    return _pool


def _option(environment: Any, name: str, default: Any) -> Any:
    return getattr(environment.parsed_options, name, default)


class _ElboUser(HttpUser):
    abstract = True
    host = DEFAULT_HOST
    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.pool = _pool_for(self.environment)
        if _option(self.environment, "each_request_first", False):
            for send in self.request_kinds():
                send()

    def request_kinds(self) -> list[Any]:
        """One sender per request name this user sends."""
        raise NotImplementedError

    def images(self, count: int) -> list[str]:
        share = _option(self.environment, "anomalous_share", 0.2)
        return self.pool.draw(self.rng, count, share)

    def post(self, path: str, name: str, body: dict[str, Any], field: str, count: int) -> None:
        """POST and check the answer carries ``count`` entries in ``field``."""
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json().get(field) or []) != count:
                response.failure(f"expected {count} {field}, got {response.text[:200]}")


class ScoringUser(_ElboUser):
    """Anomaly scoring of real test images: mostly single images, some batches."""

    weight = 6

    @task
    def score(self) -> None:
        if self.rng.random() < _option(self.environment, "ddpm_score_share", 0.1):
            self.score_ddpm()
        else:
            self.score_vae()

    def request_kinds(self) -> list[Any]:
        return [self.score_vae_one, self.score_vae_batch, self.score_ddpm]

    def score_vae(self) -> None:
        if self.rng.random() < _option(self.environment, "batch_share", 0.1):
            self.score_vae_batch()
        else:
            self.score_vae_one()

    def score_vae_one(self) -> None:
        body = {"model": "vae", "images": self.images(1)}
        self.post("/score", "/score vae 1", body, "results", 1)

    def score_vae_batch(self) -> None:
        n = self.rng.randint(16, 64)
        body = {"model": "vae", "images": self.images(n)}
        self.post("/score", "/score vae 16-64", body, "results", n)

    def score_ddpm(self) -> None:
        body = {"model": "ddpm", "images": self.images(1)}
        self.post("/score", "/score ddpm 1", body, "results", 1)


class SamplingUser(_ElboUser):
    """VAE samples, and DDPM samples by DDIM at a small step count."""

    weight = 2

    def request_kinds(self) -> list[Any]:
        return [self.sample_vae, self.sample_ddpm]

    @task(3)
    def sample_vae(self) -> None:
        n = self.rng.randint(1, 8)
        body = {"model": "vae", "n": n, "seed": self.rng.randrange(2**31)}
        self.post("/sample", "/sample vae", body, "images", n)

    @task(1)
    def sample_ddpm(self) -> None:
        steps = _option(self.environment, "ddim_steps", 10)
        body = {"model": "ddpm", "n": 1, "steps": steps, "seed": self.rng.randrange(2**31)}
        self.post("/sample", "/sample ddpm ddim", body, "images", 1)


class BoundsUser(_ElboUser):
    """Posterior encodings and likelihood bounds of single images."""

    weight = 2

    def request_kinds(self) -> list[Any]:
        return [self.encode_vae, self.likelihood_vae, self.likelihood_ddpm]

    @task(2)
    def encode_vae(self) -> None:
        self.post("/encode", "/encode vae", {"model": "vae", "images": self.images(1)}, "means", 1)

    @task(2)
    def likelihood_vae(self) -> None:
        body = {"model": "vae", "images": self.images(1), "method": "iwae", "k": 16}
        self.post("/likelihood", "/likelihood vae iwae", body, "results", 1)

    @task(1)
    def likelihood_ddpm(self) -> None:
        body = {"model": "ddpm", "images": self.images(1), "method": "vlb_mc", "k": 4}
        self.post("/likelihood", "/likelihood ddpm vlb_mc", body, "results", 1)
