"""/score without a correction: the one the model card recommends (measured best on its
outlier sets), shown per method in GET /models; the raw bound where the card recommends none."""

from __future__ import annotations

import copy
import io

import pytest
from PIL import Image
from service_testing import png_b64, replace_card, served_models

FPR = 0.25


@pytest.fixture(scope="module")
def pixels(test_images):
    return test_images[:2]


@pytest.fixture
def recommending_png(client, monkeypatch):
    card = copy.deepcopy(served_models()["vae"].checkpoint.card)
    mean_auroc = {"none": 0.90, "png": 0.97, "webp": 0.96}
    card["anomaly"]["recommended"] = {"elbo": {"correction": "png", "mean_auroc": mean_auroc}}
    replace_card(monkeypatch, "vae", card)
    return client


def _png_bits_per_dim(pixels) -> float:
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(0).numpy(), mode="L").save(buffer, "PNG", optimize=True)
    return 8.0 * buffer.tell() / pixels.numel()


def test_score_without_a_correction_uses_the_one_the_card_recommends(recommending_png, pixels):
    body = {"model": "vae", "images": [png_b64(p) for p in pixels], "fpr": FPR}
    answer = recommending_png.post("/score", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["correction"] == "png"
    for result, image in zip(answer.json()["results"], pixels, strict=True):
        assert result["png_bits_per_dim"] == pytest.approx(_png_bits_per_dim(image), abs=1e-4)
        assert result["score"] == pytest.approx(
            result["bits_per_dim"] - result["png_bits_per_dim"], abs=1e-4
        )
    raw = recommending_png.post("/score", json={**body, "correction": "none"}).json()
    assert raw["correction"] == "none"
    assert [r["score"] for r in raw["results"]] == [r["bits_per_dim"] for r in raw["results"]]
    # the IWAE bound has no recommendation on this card: the raw bound
    iwae = recommending_png.post("/score", json={**body, "method": "iwae", "k": None})
    assert iwae.status_code == 200, iwae.text
    assert iwae.json()["correction"] == "none"


def test_get_models_shows_each_methods_recommended_correction(recommending_png):
    methods = recommending_png.get("/models").json()["models"]["vae"]["methods"]
    assert methods["elbo"]["recommended_correction"] == "png"
    assert methods["iwae"]["recommended_correction"] == "none"


def test_a_card_without_a_recommendation_scores_the_raw_bound_by_default(client, pixels):
    body = {"model": "vae", "images": [png_b64(pixels[0])], "fpr": FPR}
    answer = client.post("/score", json=body).json()
    assert answer["correction"] == "none"
    assert answer["results"][0]["score"] == answer["results"][0]["bits_per_dim"]
