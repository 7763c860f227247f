"""From a folder of one's own images to a served anomaly detector, end to end on a tiny
folder: `models.train --data`, `models.evaluate --normal --outliers`, the checkpoint dropped
into a model directory, `ELBO_SERVE_MODEL_DIR=... bentoml serve`, then /models and /score."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from PIL import Image

from load_tests.serving import running_server, server_environment
from models.core.card import ModelCard
from models.evaluate import main as evaluate
from models.train import main as train

SIZE = 16
TINY_VAE = {
    "model": {"image_channels": 3, "image_size": SIZE, "latent_dim": 4, "channels": [8, 16]},
    "train": {"steps": 30, "batch_size": 16, "warmup_steps": 5, "checkpoint_every": 15},
}
TINY_EVALUATION = [
    "--iwae-images", "8", "--iwae-k", "4", "--score-iwae-k", "4", "--anomaly-images", "40",
    "--calibration-images", "40", "--fd-samples", "0", "--batch-size", "20", "--threads", "1",
]  # fmt: skip


def _blobs(folder, count: int, seed: int) -> None:
    """Smooth colour blobs on a dark background: the normal images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    folder.mkdir(parents=True)
    for i in range(count):
        cy, cx = rng.uniform(4, SIZE - 4, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)[..., None]
        pixels = (blob * rng.uniform(120, 255, 3)).astype(np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / f"{i:03d}.png")


def _noise(folder, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / f"{i:03d}.png")


def _png_b64(path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.slow
def test_a_folder_becomes_a_served_calibrated_model(tmp_path):
    _blobs(tmp_path / "parts", 120, seed=0)
    _noise(tmp_path / "scratched", 30, seed=1)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_VAE))
    run = tmp_path / "run"
    # Half held out: the evaluation splits those again into measured and calibration images.
    data = ["--data", str(tmp_path / "parts"), "--validation-fraction", "0.5"]
    assert train(["vae", "--config", str(config), *data, "--out", str(run), "--threads", "1"]) == 0
    normal = ["--normal", str(tmp_path / "parts"), "--outliers", str(tmp_path / "scratched")]
    assert evaluate([str(run / "checkpoint"), *normal, *TINY_EVALUATION]) == 0

    card = ModelCard.from_dict(json.loads((run / "checkpoint" / "model_card.json").read_text()))
    assert "scratched" in card.anomaly.methods["elbo"].sets
    # The evaluation's normal images are the ones training held out (never trained on).
    assert card.data is not None
    assert not any("training images" in warning for warning in card.data.warnings)

    repository = tmp_path / "models"
    repository.mkdir()
    (repository / "parts-v1").symlink_to(run / "checkpoint")
    overrides = {"ELBO_SERVE_MODEL_DIR": str(repository), "ELBO_SERVE_MODELS": ""}
    env = server_environment({**overrides, "ELBO_SERVE_TORCH_THREADS": "1"}, tmp_path / "home")
    with running_server(env, tmp_path / "server.log") as (url, _process):
        models = requests.get(f"{url}/models", timeout=60).json()["models"]
        assert list(models) == ["parts-v1"]
        assert models["parts-v1"]["image"] == {
            "channels": 3,
            "height": SIZE,
            "width": SIZE,
            "mode": "RGB",
        }
        images = [
            _png_b64(tmp_path / "parts" / "000.png"),
            _png_b64(tmp_path / "scratched" / "000.png"),
        ]
        body = {"model": "parts-v1", "images": images, "fpr": 0.1}
        scored = requests.post(f"{url}/score", json=body, timeout=60)
        # The evaluation also fitted the term density and the maps' pixel statistics.
        extras = {**body, "correction": "terms", "maps": True}
        scored_with_extras = requests.post(f"{url}/score", json=extras, timeout=60)
    assert scored_with_extras.status_code == 200, scored_with_extras.text
    for result in scored_with_extras.json()["results"]:
        assert np.asarray(result["anomaly_map"]).shape == (3, SIZE, SIZE)
        assert np.isfinite(result["score"]) and result["heatmap_png"]
    assert scored.status_code == 200, scored.text
    results = scored.json()["results"]
    assert (
        scored.json()["calibration_source"]
        == card.calibration["elbo"].scores["bits_per_dim"].source
    )
    assert all(np.isfinite(r["score"]) and 0 <= r["percentile"] <= 100 for r in results)
