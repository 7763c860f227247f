"""The one-class protocol's pieces: per-class AUROCs of each score, and the whole loop at toy
scale (two classes, a few training steps, a few hundred test images)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from models.eval.one_class import SCORES, class_aurocs, codec_terms, main, markdown_table


def _terms(rng: np.random.Generator, n: int, shift: np.ndarray) -> dict[str, np.ndarray]:
    recon = rng.normal(1000, 50, n) + shift * 200
    kl = rng.normal(20, 3, n) + shift * 10
    d = 784 * np.log(2)
    return {
        "reconstruction_nats": recon,
        "kl_nats": kl,
        "elbo_bits_per_dim": (recon + kl) / d,
        "png_bits_per_dim": rng.normal(4, 0.5, n),
        "webp_bits_per_dim": rng.normal(3, 0.5, n),
        "lzma_bits_per_dim": rng.normal(3.5, 0.5, n),
    }


def test_class_aurocs_score_the_class_as_normal_and_the_rest_as_anomalies():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)
    test = _terms(rng, len(labels), (labels != 3).astype(float))
    validation = _terms(rng, 300, np.zeros(300))
    aurocs = class_aurocs(test, validation, labels, normal=3)
    # no IWAE bound and no background model measured: their scores are left out
    measured = {"elbo", "elbo_minus_png", "elbo_minus_webp", "elbo_minus_lzma"}
    assert set(aurocs) == measured | {"terms_gaussian", "terms_kde"}
    assert {"iwae", "iwae_minus_png", "elbo_ratio"} <= set(SCORES)
    expected = roc_auc_score(labels != 3, test["elbo_bits_per_dim"])
    assert aurocs["elbo"] == pytest.approx(expected)
    assert aurocs["terms_gaussian"] > 0.9  # both terms shift for the other classes
    for codec in ("png", "webp", "lzma"):
        corrected = test["elbo_bits_per_dim"] - test[f"{codec}_bits_per_dim"]
        assert aurocs[f"elbo_minus_{codec}"] == pytest.approx(roc_auc_score(labels != 3, corrected))


def test_scores_whose_terms_were_not_measured_are_left_out():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 20)
    test = _terms(rng, len(labels), (labels != 0).astype(float))
    del test["webp_bits_per_dim"]
    aurocs = class_aurocs(test, _terms(rng, 50, np.zeros(50)), labels, normal=0)
    assert "elbo_minus_webp" not in aurocs and "elbo_minus_lzma" in aurocs


def test_codec_terms_are_each_codecs_own_output_size_in_bits_per_dim():
    images = torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    terms = codec_terms(images)
    first = images[0, 0].numpy()
    webp = io.BytesIO()
    Image.fromarray(first, mode="L").save(webp, format="WEBP", lossless=True, quality=100, method=6)
    assert set(terms) == {"png_bits_per_dim", "webp_bits_per_dim", "lzma_bits_per_dim"}
    assert terms["webp_bits_per_dim"][0] == pytest.approx(8 * len(webp.getvalue()) / 784)
    assert terms["lzma_bits_per_dim"].shape == (3,)


def test_markdown_table_has_a_row_per_class_and_the_mean():
    table = markdown_table(
        {"0": {"elbo": 0.8, "terms_kde": 0.9}, "1": {"elbo": 0.6, "terms_kde": 0.7}}
    )
    assert "| 0 T-shirt/top | 80.0 | 90.0 |" in table
    assert "| **mean** | **70.0** | **80.0** |" in table


@pytest.mark.slow
def test_the_protocol_runs_end_to_end_from_class_folders(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model": {"latent_dim": 4, "channels": [8, 16]},
                "train": {"steps": 4, "batch_size": 16, "warmup_steps": 1, "log_every": 2},
            }
        )
    )
    out = tmp_path / "one_class"
    args = ["--out", str(out), "--config", str(config), "--classes", "0", "1"]
    assert main([*args, "--test-images", "300", "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["classes"]) == {"0", "1"}
    for c in ("0", "1"):
        entry = results["classes"][c]
        assert 0.0 <= entry["auroc"]["elbo"] <= 1.0
        assert entry["validation_images"] == 600  # 10% of the class's 6,000 training images
        assert len(list((out / "data" / f"class_{c}").glob("*.png"))) == 6000
    assert "elbo_ratio" not in results["classes"]["0"]["auroc"]
    # A second run re-measures from the saved per-image terms, without training the class
    # models again; asked for the likelihood ratio, it trains each class's background.
    weights = out / "class_0" / "checkpoint" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = [*args, "--test-images", "300", "--threads", "1", "--background-mutation-rate", "0.2"]
    assert main(again) == 0
    assert weights.stat().st_mtime_ns == before
    background = json.loads((out / "class_0_background/checkpoint/training.json").read_text())
    assert background["experiment"]["background"]["mutation_rate"] == 0.2
    saved = np.load(out / "class_0" / "scores.npz")
    ratio = saved["test_elbo_bits_per_dim"] - saved["test_background_elbo_bits_per_dim"]
    results = json.loads((out / "results.json").read_text())
    expected = roc_auc_score(saved["labels"] != 0, ratio)
    assert results["classes"]["0"]["auroc"]["elbo_ratio"] == pytest.approx(expected)
