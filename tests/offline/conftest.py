"""Offline scores are compared with the service's: the service's fixtures (shared with
tests/service through ``service_fixtures.py``), and a local Spark session per test module."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

import pytest  # noqa: E402
from service_fixtures import client, served_checkpoints, test_images  # noqa: E402, F401


@pytest.fixture(scope="module")
def spark():
    """local[2]: two task slots, so work really is split over two Python workers."""
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        pytest.skip("Spark needs Java 17 or later: no java on PATH and no JAVA_HOME")
    from offline.spark_score import spark_session

    session = spark_session("local[2]", **{"spark.ui.enabled": "false"})
    session.sparkContext.setLogLevel("ERROR")  # failing tasks are expected in the tests
    yield session
    session.stop()
