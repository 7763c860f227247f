"""The README's curl examples and the quick start's Python client work as written, against a
real `bentoml serve` (only the address changes: the test server listens on a free loopback
port). The blocks are the ones marked ``<!-- run: NAME -->`` (tests/markdown_blocks.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
from markdown_blocks import block


def _run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done


@pytest.mark.skipif(sys.platform == "win32", reason="bash and curl")
def test_the_curl_examples_work_as_written(server_url, tmp_path):
    script = block("README.md", "readme-curl").replace("localhost:3000", server_url)
    done = _run(["bash", "-eu", "-c", script], tmp_path)
    assert '"is_anomaly"' in done.stdout and '"total_bits_per_dim"' in done.stdout
    assert "4 images" in done.stdout  # the sampling task's result
    assert done.stdout.count('"is_anomaly"') == 2  # the JSON and the uploaded PNG
    assert "elbo_serve_images_generated_total" in done.stdout
    for name in ("grid.png", "image.png", "decoded.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_the_python_client_example_works_as_written(server_url, tmp_path):
    script = block("docs/quickstart.md", "python-client").replace(
        "http://localhost:3000", server_url
    )
    done = _run([sys.executable, "-c", script], tmp_path)
    assert "threshold" in done.stdout and "bits/dim" in done.stdout
    assert "'is_anomaly'" in done.stdout  # the uploaded file's result
    assert (tmp_path / "grid.png").stat().st_size > 0
