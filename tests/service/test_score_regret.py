"""/score with correction 'regret': the Likelihood Regret of the bundled VAE (Xiao et al.
2020), judged against its card's calibration; the same request as a task; and its refusals:
a DDPM (400 naming it), a card without the calibration (409 saying how), steps past the
ceiling or other than calibrated (400), a request past the cost ceiling (413 -> /score_task)."""

from __future__ import annotations

import time

import pytest
from service_testing import png_b64, replace_card, served_models

from models.core.noise import seeded_generator
from models.core.pixels import pixels_to_signed_unit
from models.eval.regret import measure_regret, with_regret_calibration
from models.vae.regret import likelihood_regret

STEPS = 3  # a short optimisation: the test is of the plumbing; tests/models the maths
FPR = 0.25


@pytest.fixture(scope="module")
def pixels(test_images):
    return test_images[:3]


@pytest.fixture(scope="module")
def images(pixels):
    return [png_b64(image) for image in pixels]


@pytest.fixture(scope="module")
def regret_card(client, test_images):
    """The served VAE's card with a regret calibration at STEPS steps, measured here on
    held-out-like test images 8..39 (the bundled card's own calibration may differ)."""
    model = served_models()["vae"]
    regret = model.kind.likelihood_regret(model.model)
    record = measure_regret(
        regret,
        model.model,
        test_images[3:8],
        {},
        test_images[8:40],
        "test fixture: test images 8..39",
        seeded_generator(0),
        steps=STEPS,
    )
    return with_regret_calibration(model.checkpoint.card, "elbo", record)


@pytest.fixture
def regret_calibrated(client, regret_card, monkeypatch):
    replace_card(monkeypatch, "vae", regret_card)
    return client


def _body(images, **fields):
    return {"model": "vae", "images": images, "correction": "regret", "fpr": FPR, **fields}


def test_score_with_regret_is_the_elbo_gap_against_the_calibrated_threshold(
    regret_calibrated, images, pixels
):
    response = regret_calibrated.post("/score", json=_body(images, seed=5))
    assert response.status_code == 200, response.text
    body = response.json()
    model = served_models()["vae"]
    regret = model.kind.likelihood_regret(model.model)
    assert body["correction"] == "regret" and body["method"] == "elbo"
    assert body["regret_steps"] == STEPS and body["regret_learning_rate"] == regret.learning_rate
    assert body["calibration_images"] == 32 and body["calibration_source"].startswith("test")
    direct = likelihood_regret(
        model.model, pixels_to_signed_unit(pixels), seeded_generator(5), STEPS
    )
    plain = regret_calibrated.post(
        "/score", json={"model": "vae", "images": images, "fpr": FPR, "seed": 5}
    ).json()
    for i, result in enumerate(body["results"]):
        assert result["score"] >= 0
        assert result["score"] == pytest.approx(
            result["bits_per_dim"] - result["optimised_bits_per_dim"], abs=1e-9
        )
        assert result["score"] == pytest.approx(direct.regret_bits_per_dim[i].item(), abs=1e-5)
        # the amortised bound is the served elbo with the same seed
        assert result["bits_per_dim"] == pytest.approx(plain["results"][i]["bits_per_dim"])
        assert result["is_anomaly"] == (result["score"] > body["threshold"])
    again = regret_calibrated.post("/score", json=_body(images, seed=5)).json()
    assert [r["score"] for r in again["results"]] == [r["score"] for r in body["results"]]


def test_get_models_says_which_models_offer_the_regret_and_at_which_steps(regret_calibrated):
    models = regret_calibrated.get("/models").json()["models"]
    offered = models["vae"]["likelihood_regret"]
    assert offered["bound"] == "elbo" and offered["steps_range"] == [0, 500]
    assert models["vae"]["methods"]["elbo"]["scores"]["regret"]["regret_steps"] == STEPS
    assert "regret" not in models["vae"]["methods"]["iwae"]["scores"]
    assert models["ddpm"]["likelihood_regret"] is None
    assert all("regret" not in m["scores"] for m in models["ddpm"]["methods"].values())


def test_score_with_regret_on_a_ddpm_is_a_400_naming_the_model_and_what_it_lacks(client, images):
    body = {**_body(images), "model": "ddpm"}
    response = client.post("/score", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "correction"
    error = response.json()["error"]
    assert "the ddpm model offers no likelihood regret" in error
    assert "no amortised posterior q(z|x)" in error


def test_score_with_regret_without_its_calibration_is_a_409_that_says_how(
    client, images, monkeypatch
):
    card = dict(served_models()["vae"].checkpoint.card)
    card["calibration"] = {
        method: {key: value for key, value in entry.items() if key != "likelihood_regret"}
        for method, entry in card["calibration"].items()
    }
    replace_card(monkeypatch, "vae", card)
    response = client.post("/score", json=_body(images))
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert "no likelihood regret calibration for method 'elbo'" in error
    assert "python -m models.eval.regret" in error


@pytest.mark.parametrize("steps", [-1, 501])
def test_regret_steps_outside_0_to_500_are_a_400_naming_the_field(client, images, steps):
    response = client.post("/score", json=_body(images, regret_steps=steps))
    assert response.status_code == 400, response.text
    assert "regret_steps" in response.text


def test_regret_steps_other_than_calibrated_are_a_400_saying_which(regret_calibrated, images):
    response = regret_calibrated.post("/score", json=_body(images, regret_steps=STEPS + 1))
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "regret_steps"
    assert f"used {STEPS} steps" in response.json()["error"]


def test_a_regret_past_the_cost_ceiling_is_a_413_and_runs_as_a_score_task(
    regret_calibrated, images, monkeypatch
):
    from _bentoml_sdk.service import get_current_service

    from service.settings import Ceiling

    calls = get_current_service().calls
    body = _body(images, seed=2)
    expected = regret_calibrated.post("/score", json=body).json()
    # A ceiling below this request's cost (3 images x (1 encoder + 7 decoder) evaluations)
    monkeypatch.setattr(calls, "ceiling", Ceiling(0.5, "ELBO_SERVE_CPU_MAX_REQUEST_GFLOP"))
    refused = regret_calibrated.post("/score", json=body)
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert "POST /score_task/submit" in error and "regret_steps" in error
    assert "decoder evaluations" in error  # the cost counts the optimisation's calls
    submitted = regret_calibrated.post("/score_task/submit", json=body)
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    deadline = time.monotonic() + 120
    while (
        status := regret_calibrated.get("/score_task/status", params={"task_id": task_id}).json()
    )["status"] == "in_progress":
        assert time.monotonic() < deadline, "the score task is still running"
        time.sleep(0.1)
    assert status["status"] == "completed", status
    result = regret_calibrated.get("/score_task/get", params={"task_id": task_id}).json()
    assert [r["score"] for r in result["results"]] == [r["score"] for r in expected["results"]]


def test_a_score_task_for_a_ddpm_regret_is_refused_at_submission(client, images):
    response = client.post("/score_task/submit", json={**_body(images), "model": "ddpm"})
    assert response.status_code == 400, response.text
    assert "no likelihood regret" in response.json()["error"]


def test_the_request_schemas_steps_ceiling_is_the_vae_regrets():
    from models.vae.regret import REGRET_STEPS_RANGE
    from service.schemas import MAX_REGRET_STEPS

    assert REGRET_STEPS_RANGE == (0, MAX_REGRET_STEPS)
