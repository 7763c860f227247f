"""Locust against the real server: a short headless run has no failure and reaches every
endpoint, and the SLO gate fails a run whose limits cannot be met."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.serving import REPO_ROOT
from load_tests.slo import SLO_EXIT_CODE

LOCUSTFILE = REPO_ROOT / "load_tests" / "locustfile.py"
REQUEST_NAMES = {
    "/score vae 1",
    "/score vae 16-64",
    "/score ddpm 1",
    "/sample vae",
    "/sample ddpm ddim",
    "/encode vae",
    "/likelihood vae iwae",
    "/likelihood ddpm vlb_mc",
}
# Equal user weights, more batches and DDPM scores than real traffic, and one request of every
# kind from each user first, so that 20 s reach every request name even when requests take
# seconds each on a busy CPU (a run beside other jobs once sent no single-image VAE score).
SMOKE_TRAFFIC = ["--weight-scoring", "1", "--weight-sampling", "1", "--weight-bounds", "1"]
SMOKE_TRAFFIC += ["--each-request-first"]
SMOKE_TRAFFIC += ["--batch-share", "0.5", "--ddpm-score-share", "0.4", "--ddim-steps", "4"]
SMOKE_TRAFFIC += ["--pool-size", "32"]


def _locust(host: str, seconds: int, csv_prefix: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    command += ["-u", "6", "-r", "6", "-t", f"{seconds}s", "--host", host]
    command += ["--csv", str(csv_prefix), "--only-summary", *SMOKE_TRAFFIC, *extra]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=seconds + 120
    )


def _stats(csv_prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{csv_prefix}_stats.csv", newline="") as rows:
        return {row["Name"]: row for row in csv.DictReader(rows)}


@pytest.mark.slow
def test_smoke_load_has_no_failures_and_reaches_every_endpoint(server_url, tmp_path):
    run = _locust(server_url, 20, tmp_path / "smoke", "--slo-max-fail-ratio", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    stats = _stats(tmp_path / "smoke")
    assert stats["Aggregated"]["Failure Count"] == "0"
    hits = {name: int(row["Request Count"]) for name, row in stats.items()}
    assert {name for name in REQUEST_NAMES if hits.get(name, 0) == 0} == set()


@pytest.mark.slow
def test_slo_gate_fails_a_run_past_its_p95_limit(server_url, tmp_path):
    # Long enough for requests to finish behind the DDPM work the 6 users queue at once.
    run = _locust(server_url, 12, tmp_path / "gate", "--slo-p95-ms", "0.001")
    assert run.returncode == SLO_EXIT_CODE, run.stderr[-3000:]
    assert "SLO breached" in run.stderr


def test_locustfile_refuses_a_host_that_is_not_loopback(tmp_path):
    run = _locust("http://192.0.2.1:3000", 2, tmp_path / "refused")
    assert run.returncode == 2
    assert "only loopback hosts" in run.stderr
