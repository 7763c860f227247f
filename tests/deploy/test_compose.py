"""The scale-out stack (deploy/compose): its files agree with each other and with the rules.

The stack itself runs in `python -m load_tests.scale_out` (minutes, Docker); these checks catch
a broken file without Docker, with the real tools where they are installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy/compose"


def _compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def _prometheus() -> dict:
    return yaml.safe_load((COMPOSE / "prometheus.yml").read_text())


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of a compose service's bind mounts."""
    pairs = (volume.split(":")[:2] for volume in _compose()["services"][service]["volumes"])
    return {inside: (COMPOSE / outside).resolve() for outside, inside in pairs}


def test_prometheus_loads_the_rule_files_the_tests_evaluate():
    mounts = _mounts("prometheus")
    loaded = [mounts[path] for path in _prometheus()["rule_files"]]
    assert loaded == [ROOT / "deploy/prometheus/rules.yml", ROOT / "deploy/prometheus/alerts.yml"]
    assert all(path.is_file() for path in loaded)


def test_replicas_are_scraped_under_the_job_the_rules_and_dashboard_select():
    jobs = {job["job_name"]: job for job in _prometheus()["scrape_configs"]}
    (names,) = [block["names"] for block in jobs["elbo-serve"]["dns_sd_configs"]]
    assert names == ["replica"] and "replica" in _compose()["services"]
    assert 'job="elbo-serve"' in (ROOT / "deploy/prometheus/rules.yml").read_text()


def test_balancer_spreads_over_the_replica_service_on_the_service_port():
    config = (COMPOSE / "haproxy.cfg").read_text()
    assert "server-template replica 1-8 replica:3000" in config
    assert "option httpchk GET /readyz" in config
    assert _compose()["services"]["replica"]["expose"] == ["3000"]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_configuration():
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(COMPOSE / "haproxy.cfg")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is missing")
def test_compose_file_is_valid():
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
