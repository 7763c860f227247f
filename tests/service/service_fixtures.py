"""Service fixtures: the served checkpoints (with a model card that has calibrations), an
in-process HTTP client, a real server, and test images. ``tests/service/conftest.py`` and
``tests/offline/conftest.py`` (offline scores compared with /score's) both take them from here,
so that this set-up runs once per test session.

The service serves what ``Settings`` points at: the model repository ``checkpoints/`` (the
committed ``vae`` and ``ddpm``) by default, or ``ELBO_SERVE_MODEL_DIR`` / ``ELBO_SERVE_MODELS``.
A checkpoint whose card has no calibration yet is copied and given one measured here on a few
test images, so /score can be exercised before the evaluation CLI has run.

pytest scopes a fixture to the directory of the conftest that names it, so each package gets
its own instance of these fixtures; those that must exist once per process (the calibrated
copies, the in-process service) share what the first one made.
"""

from __future__ import annotations

import functools
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
os.environ["ELBO_SERVE_TASK_DIR"] = str(_SCRATCH / "tasks")
os.environ["ELBO_SERVE_CPU_MODE_CACHE_DIR"] = str(_SCRATCH / "cpu-modes")

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
    return _test_images()


@functools.cache
def _test_images() -> torch.Tensor:
    images, _ = load_fashion_mnist("test")
    return images[:64]


@pytest.fixture(scope="session")
def served_checkpoints() -> dict[str, Path]:
    """Point the service at checkpoints with calibrated model cards (name -> directory)."""
    served = dict(_calibrated_checkpoints())
    os.environ["ELBO_SERVE_MODELS"] = ",".join(f"{n}={d}" for n, d in served.items())
    # The ceiling tests (test_request_costs.py) size requests past the CPU's default ceiling;
    # the CUDA default (1,000,000 GFLOP) is past anything these checkpoints can be asked, so
    # the service under test keeps the CPU's ceiling on a GPU too.
    os.environ.setdefault(
        "ELBO_SERVE_CUDA_MAX_REQUEST_GFLOP", str(Settings().cpu_max_request_gflop)
    )
    return served


@functools.cache
def _calibrated_checkpoints() -> dict[str, Path]:
    """Once per session, whichever conftest asks first (a second copy would collide)."""
    test_images = _test_images()
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
    return served


@pytest.fixture(scope="session")
def client(served_checkpoints):
    """In-process HTTP client on the service's ASGI app, ready (checkpoints loaded, warm).

    One per process, whichever conftest asks first: a second app in the process would register
    BentoML's request metrics again (prometheus_client's DuplicateTimeseries)."""
    if _in_process:
        yield _in_process[0]
        return
    from _bentoml_impl.server.serving import server_on_deployment
    from starlette.testclient import TestClient

    from service.service import ElboServe

    # What `bentoml serve` does before it starts workers (creates the task result store).
    server_on_deployment(ElboServe)
    with TestClient(ElboServe.to_asgi()) as test_client:
        wait_ready(lambda path: test_client.get(path).status_code)
        _in_process.append(test_client)
        try:
            yield test_client
        finally:
            _in_process.clear()


_in_process: list = []  # the session's in-process client, once started


@pytest.fixture(scope="session")
def server_url(served_checkpoints, tmp_path_factory):
    """A real `bentoml serve` on a loopback port (one torch thread), shared by the
    real-server tests and the Locust smoke test."""
    yield from _real_server({}, tmp_path_factory)


# The keys of the server at ``keyed_server_url``.
API_KEYS = ("k1", "k2")


@pytest.fixture(scope="session")
def keyed_server_url(served_checkpoints, tmp_path_factory):
    """The same, wanting one of ``API_KEYS``: shared by the tests of keys over real HTTP
    (test_auth.py, test_ui_browser.py)."""
    yield from _real_server({"ELBO_SERVE_API_KEYS": ",".join(API_KEYS)}, tmp_path_factory)


def _real_server(overrides: dict[str, str], tmp_path_factory):
    from load_tests.serving import running_server, server_environment

    env = server_environment(
        {"ELBO_SERVE_TORCH_THREADS": "1", **overrides}, tmp_path_factory.mktemp("bentoml-home")
    )
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with running_server(env, log) as (url, _process):
            yield url
    except RuntimeError as error:  # not ready: the message carries the server's log
        pytest.fail(str(error))
