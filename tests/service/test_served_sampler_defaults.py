"""/sample draws a checkpoint's measured serving defaults when a request names no sampler,
and /models shows them; a request naming another sampler keeps that sampler's defaults."""

from __future__ import annotations

import dataclasses

import pytest

from models.core.serving_defaults import ServingDefaults

MEASURED = {"sampler": "ddim", "steps": 2, "eta": 0.0}


@pytest.fixture
def ddpm_with_defaults(client, monkeypatch):
    from _bentoml_sdk.service import get_current_service

    served = get_current_service().calls.repository._served
    defaults = ServingDefaults(sample=MEASURED, measured="a test's figures")
    monkeypatch.setitem(
        served, "ddpm", dataclasses.replace(served["ddpm"], serving_defaults=defaults)
    )
    return client


def _sample(client, **fields):
    response = client.post("/sample", json={"model": "ddpm", "n": 1, "seed": 3, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_request_naming_no_sampler_is_drawn_with_the_measured_defaults(ddpm_with_defaults):
    drawn = _sample(ddpm_with_defaults)
    assert (drawn["sampler"], drawn["steps"]) == ("ddim", 2)
    assert drawn["images"] == _sample(ddpm_with_defaults, **MEASURED)["images"]
    assert (
        drawn["images"] != _sample(ddpm_with_defaults, sampler="ddim", steps=2, eta=1.0)["images"]
    )


def test_models_shows_the_defaults_and_what_chose_them(ddpm_with_defaults):
    info = ddpm_with_defaults.get("/models").json()["models"]["ddpm"]
    assert info["default_sample"] == MEASURED
    assert info["sampler_defaults"]["ddim"] == MEASURED
    assert info["serving_defaults"]["measured"] == "a test's figures"
    ancestral = info["sampler_defaults"]["ancestral"]
    assert "eta" not in ancestral and ancestral["sampler"] == "ancestral"


def test_a_model_without_serving_defaults_keeps_its_kind_defaults(client):
    info = client.get("/models").json()["models"]["vae"]
    assert info["serving_defaults"] is None
    assert info["default_sample"]["sampler"] == info["samplers"][0]
