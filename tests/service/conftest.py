"""Service fixtures: the served checkpoints (with a model card that has calibrations), an
in-process HTTP client, and image helpers.

The service serves what ``Settings`` points at: the model repository ``checkpoints/`` (the
committed ``vae`` and ``ddpm``) by default, or ``ELBO_SERVE_MODEL_DIR`` / ``ELBO_SERVE_MODELS``.
A checkpoint whose card has no calibration yet is copied and given one measured here on a few
test images, so /score can be exercised before the evaluation CLI has run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Before bentoml or prometheus_client are imported anywhere: keep BentoML off the network and
# out of ~/bentoml, and give our metrics the multi-process mode `bentoml serve` uses.
_SCRATCH = Path(tempfile.mkdtemp(prefix="elbo-serve-tests-"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.setdefault("BENTOML_HOME", str(_SCRATCH / "bentoml"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_SCRATCH / "prometheus")
(_SCRATCH / "prometheus").mkdir()
os.environ["ELBO_SERVE_PROGRESS_DIR"] = str(_SCRATCH / "progress")

import pytest  # noqa: E402
import torch  # noqa: E402
from service_testing import (  # noqa: E402
    fixture_calibration,
    fixture_pixel_calibration,
    wait_ready,
)

from models.core.checkpoints import read_model_card, write_model_card  # noqa: E402
from models.data import load_fashion_mnist  # noqa: E402
from service.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def test_images() -> torch.Tensor:
    """Real Fashion-MNIST test images, uint8 (N, 1, 28, 28)."""
    images, _ = load_fashion_mnist("test")
    return images[:64]


@pytest.fixture(scope="session")
def served_checkpoints(test_images: torch.Tensor) -> dict[str, Path]:
    """Point the service at checkpoints with calibrated model cards (name -> directory)."""
    served = {}
    for name, directory in Settings.from_env().served_directories().items():
        card = read_model_card(directory)
        if "calibration" not in card or "pixel_calibration" not in card:
            copy = _SCRATCH / "checkpoints" / name
            shutil.copytree(directory, copy)
            card.setdefault("calibration", fixture_calibration(copy, test_images))
            card.setdefault("pixel_calibration", fixture_pixel_calibration(copy, test_images))
            write_model_card(copy, card)
            directory = copy
        served[name] = directory
    os.environ["ELBO_SERVE_MODELS"] = ",".join(f"{n}={d}" for n, d in served.items())
    # The ceiling tests (test_request_costs.py) size requests past the CPU's default ceiling;
    # the CUDA default (1,000,000 GFLOP) is past anything these checkpoints can be asked, so
    # the service under test keeps the CPU's ceiling on a GPU too.
    os.environ.setdefault(
        "ELBO_SERVE_CUDA_MAX_REQUEST_GFLOP", str(Settings().cpu_max_request_gflop)
    )
    return served


@pytest.fixture(scope="session")
def client(served_checkpoints):
    """In-process HTTP client on the service's ASGI app, ready (checkpoints loaded, warm)."""
    from _bentoml_impl.server.serving import server_on_deployment
    from starlette.testclient import TestClient

    from service.service import ElboServe

    # What `bentoml serve` does before it starts workers (creates the task result store).
    server_on_deployment(ElboServe)
    with TestClient(ElboServe.to_asgi()) as test_client:
        wait_ready(lambda path: test_client.get(path).status_code)
        yield test_client


@pytest.fixture(scope="session")
def server_url(served_checkpoints, tmp_path_factory):
    """A real `bentoml serve` on a loopback port (one torch thread), shared by the
    real-server tests and the Locust smoke test."""
    from load_tests.serving import running_server, server_environment

    env = server_environment(
        {"ELBO_SERVE_TORCH_THREADS": "1"}, tmp_path_factory.mktemp("bentoml-home")
    )
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with running_server(env, log) as (url, _process):
            yield url
    except RuntimeError as error:  # not ready: the message carries the server's log
        pytest.fail(str(error))
