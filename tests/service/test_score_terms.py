"""/score with correction 'terms': the card's density over the bound's term vector scores each
image against its calibrated threshold; a card without one is a 409 that says so."""

from __future__ import annotations

import math

import pytest
from service_testing import metric_value, png_b64, replace_card, served_models

from models.core.card import calibrations_in
from models.eval.typicality import Density, fit_and_calibrate, with_term_density

FPR = 0.05


@pytest.fixture(scope="module")
def images(test_images):
    return [png_b64(image) for image in test_images[:2]]


@pytest.fixture
def term_calibrated(client, monkeypatch):
    """The service, each model's card given a term density if it has none (fitted here on
    random vectors of the right width: the test is of the plumbing, not of the fit)."""
    import numpy as np

    for name, model in served_models().items():
        card = model.checkpoint.card
        method = model.kind.term_method
        entry = calibrations_in(card).get(method)
        if entry is not None and entry.term_density is not None:
            continue
        k = entry.k if entry is not None else model.kind.methods(model.model)[method].default_k
        names = model.kind.term_names(model.model, k)
        rng = np.random.default_rng(0)
        vectors = 100.0 + rng.standard_normal((300, len(names)))
        density = fit_and_calibrate(
            vectors[:200], vectors[200:], names, k, "gaussian", "fixture", "fixture"
        )
        replace_card(monkeypatch, name, with_term_density(card, method, density))
    return client


@pytest.mark.parametrize("maps", [False, True])
def test_score_with_terms_counts_each_image_once_for_the_drift_alerts(
    term_calibrated, images, maps
):
    """The bits/dim histogram the drift alerts read sees every /score image, whichever
    correction scored it (and once, though maps take a second pass over the bound)."""
    count = "elbo_serve_likelihood_bits_per_dim_count"
    before = metric_value(term_calibrated, count, model="vae")
    body = {"model": "vae", "images": images, "correction": "terms", "maps": maps}
    assert term_calibrated.post("/score", json=body).status_code == 200
    assert metric_value(term_calibrated, count, model="vae") == before + len(images)


@pytest.mark.parametrize("name", ["vae", "ddpm"])
def test_score_with_term_density_returns_finite_scores_and_its_threshold(
    term_calibrated, images, name
):
    response = term_calibrated.post(
        "/score", json={"model": name, "images": images, "fpr": FPR, "correction": "terms"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    model = served_models()[name]
    entry = calibrations_in(model.checkpoint.card)[model.kind.term_method]
    density = entry.term_density
    assert body["correction"] == "terms" and body["method"] == model.kind.term_method
    assert body["k"] == density.k
    assert body["calibration_images"] == density.calibration.num_images
    assert body["threshold"] == pytest.approx(density.calibration.thresholds[str(FPR)])
    for result in body["results"]:
        assert math.isfinite(result["score"]) and math.isfinite(result["bits_per_dim"])
        assert result["is_anomaly"] == (result["score"] > body["threshold"])
        assert 0 <= result["percentile"] <= 100


def test_term_scores_are_the_densitys_score_of_the_bounds_terms(term_calibrated, images):
    """The score is -log p(terms) under the stored density; bits/dim is the same bound the
    plain correction reports, with the same seed."""
    body = {"model": "vae", "images": images, "fpr": FPR, "seed": 3}
    terms = term_calibrated.post("/score", json={**body, "correction": "terms"}).json()
    plain = term_calibrated.post("/score", json={**body, "correction": "none"}).json()
    for with_terms, without in zip(terms["results"], plain["results"], strict=True):
        assert with_terms["bits_per_dim"] == pytest.approx(without["bits_per_dim"], abs=1e-5)
    model = served_models()["vae"]
    density = Density.from_dict(calibrations_in(model.checkpoint.card)["elbo"].term_density)
    assert density.estimator in ("gaussian", "kde")


def test_score_with_terms_is_a_409_when_the_card_has_no_term_density(client, images, monkeypatch):
    card = dict(served_models()["vae"].checkpoint.card)
    card["calibration"] = {
        method: {key: value for key, value in entry.items() if key != "term_density"}
        for method, entry in card["calibration"].items()
    }
    replace_card(monkeypatch, "vae", card)
    response = client.post("/score", json={"model": "vae", "images": images, "correction": "terms"})
    assert response.status_code == 409
    assert "no term density for method 'elbo'" in response.json()["error"]
    plain = client.post("/score", json={"model": "vae", "images": images, "fpr": FPR})
    assert plain.status_code == 200


def test_score_with_terms_for_a_method_without_a_term_density_is_a_409(term_calibrated, images):
    response = term_calibrated.post(
        "/score",
        json={"model": "vae", "images": images, "method": "iwae", "correction": "terms"},
    )
    assert response.status_code == 409
    assert "no term density for method 'iwae'" in response.json()["error"]
