"""Faults at start-up: a real `bentoml serve` over a broken checkpoint never reports ready,
and its log names the file and what is wrong with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from load_tests.serving import REPO_ROOT, free_port, server_environment

CHECKPOINTS = REPO_ROOT / "checkpoints"


# Each damages a copy of the bundled VAE checkpoint; returns (file named, words in the error).


def _break_card_hash(directory: Path) -> tuple[str, str]:
    card_path = directory / "model_card.json"
    card = json.loads(card_path.read_text())
    card["checkpoint"]["weights_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    return "model.safetensors", "SHA-256"


def _truncate_weights(directory: Path) -> tuple[str, str]:
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return "model.safetensors", "not a readable safetensors file"


def _remove_card(directory: Path) -> tuple[str, str]:
    (directory / "model_card.json").unlink()
    return "model_card.json", "missing"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_break_card_hash, _truncate_weights, _remove_card])
def test_a_broken_checkpoint_never_becomes_ready_and_the_log_says_why(tmp_path, damage):
    broken = tmp_path / "vae"
    shutil.copytree(CHECKPOINTS / "vae", broken)
    file_name, expected = damage(broken)
    env = server_environment({"ELBO_SERVE_MODELS": f"vae={broken}"}, tmp_path / "home")
    port, log_path = free_port(), tmp_path / "server.log"
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while "CheckpointError" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                status = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
                assert status != 200
            except requests.RequestException:
                pass  # not listening: not ready either
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)
    error_lines = [line for line in log_path.read_text().splitlines() if "CheckpointError" in line]
    assert any(str(broken / file_name) in line for line in error_lines)
    assert any(expected in line for line in error_lines)
