"""The container image: what it copies, and `make image-test`'s run where Docker is here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.core.repository import servable_checkpoints

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("ELBO_SERVE_IMAGE", "elbo-serve:cpu")


def _dockerfile_copies() -> set[str]:
    """Every source of the Dockerfile's COPY lines from the build context (the last word of a
    COPY is its destination)."""
    lines = re.findall(r"^COPY (?!--from)(.+)$", (ROOT / "Dockerfile").read_text(), flags=re.M)
    return {source for line in lines for source in line.split()[:-1]}


def _dockerignore_allows() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def test_image_copies_every_bundled_servable_checkpoint():
    bundled = {f"checkpoints/{name}" for name in servable_checkpoints(ROOT / "checkpoints")}
    assert bundled, "no servable checkpoint found under checkpoints/"
    assert bundled <= _dockerfile_copies()
    assert bundled <= _dockerignore_allows()


def test_build_context_admits_everything_the_dockerfile_copies():
    copied = {source.rstrip("/") for source in _dockerfile_copies()}
    assert copied <= _dockerignore_allows(), "a COPY source is excluded by .dockerignore"


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return "no Docker daemon answers (start dockerd)"
    found = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True)
    if found.returncode != 0:
        return f"image {IMAGE} is not built (make image)"
    return None


@pytest.mark.slow
def test_built_image_serves_scores_and_stops_cleanly():
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy/docker/image_test.py"), "--image", IMAGE],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "image test passed" in done.stdout
