"""The typed model card: the shipped cards read into it and write back unchanged, a malformed
card names what is wrong, and the strings other modules key on exist in it once."""

import copy
import json
from pathlib import Path

import pytest

from models.core.card import (
    BITS_PER_DIM,
    BITS_PER_DIM_MINUS_PNG,
    SCORE_KINDS,
    CardError,
    ModelCard,
    calibrations_in,
)

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


def _shipped(name: str) -> dict:
    return json.loads((CHECKPOINTS / name / "model_card.json").read_text())


@pytest.mark.parametrize("name", ["vae", "ddpm"])
def test_shipped_card_round_trips_to_the_same_json(name):
    text = (CHECKPOINTS / name / "model_card.json").read_text()
    card = ModelCard.from_dict(json.loads(text))
    # Byte for byte as written by models.core.checkpoints.write_model_card.
    assert json.dumps(card.to_dict(), indent=2) + "\n" == text


def test_shipped_cards_read_as_typed_figures():
    vae, ddpm = ModelCard.from_dict(_shipped("vae")), ModelCard.from_dict(_shipped("ddpm"))
    assert (vae.kind, ddpm.kind) == ("vae", "ddpm")
    assert vae.likelihood.headline.bits_per_dim.mean == pytest.approx(3.19941709, abs=1e-8)
    assert ddpm.likelihood.headline.bits_per_dim.mean == pytest.approx(2.96968340, abs=1e-8)
    assert vae.likelihood.others[0].headline_same_images == vae.likelihood.headline.bits_per_dim
    assert len(vae.checkpoint.weights_sha256) == 64 and vae.checkpoint.training is not None
    for card in (vae, ddpm):
        for calibration in card.calibration.values():
            # the evaluation calibrates the raw bound and the codec corrections; the ratio
            # only where models.eval.ratio added a background model
            assert {"bits_per_dim", "bits_per_dim_minus_png"} <= set(calibration.scores)
            assert set(calibration.scores) <= set(SCORE_KINDS.values())
            for fitted in calibration.scores.values():
                assert len(fitted.normal_scores) == fitted.num_images
                assert list(fitted.normal_scores) == sorted(fitted.normal_scores)


def test_card_records_are_frozen():
    card = ModelCard.from_dict(_shipped("vae"))
    with pytest.raises(AttributeError):
        card.kind = "ddpm"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("checkpoint", "weights_sha256"), "model card.checkpoint: missing key 'weights_sha256'"),
        (("likelihood", "headline", "bits_per_dim"), "likelihood.headline: missing key 'bits"),
        (("anomaly", "methods", "elbo", "sets", "digits", "raw"), "sets.digits: missing key 'raw'"),
        (("evaluation",), "model card: missing key 'evaluation'"),
    ],
)
def test_malformed_card_error_names_the_missing_key(path, message):
    card = _shipped("vae")
    parent = card
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(CardError) as error:
        ModelCard.from_dict(card)
    assert message in str(error.value)


def test_card_of_the_wrong_shape_says_what_it_expected():
    card = _shipped("ddpm")
    card["likelihood"]["others"] = {"not": "a list"}
    with pytest.raises(CardError, match=r"likelihood\.others: expected a list"):
        ModelCard.from_dict(card)
    with pytest.raises(CardError, match="expected an object"):
        ModelCard.from_dict([])


def test_optional_sections_are_left_out_not_written_as_null():
    card = _shipped("ddpm")
    del card["likelihood"]["tf32_check"], card["checkpoint"]["training"]
    typed = ModelCard.from_dict(card)
    assert typed.likelihood.tf32_check is None and typed.checkpoint.training is None
    assert typed.to_dict() == card


def test_calibrations_are_read_from_a_card_holding_only_them():
    full = _shipped("vae")
    calibrations = calibrations_in({"calibration": copy.deepcopy(full["calibration"])})
    assert calibrations == ModelCard.from_dict(full).calibration
    assert calibrations_in({}) == {}
    with pytest.raises(CardError, match="calibration.elbo: missing key 'k'"):
        calibrations_in({"calibration": {"elbo": {"scores": {}}}})


def test_score_kinds_are_the_calibrated_scores_each_correction_names():
    assert SCORE_KINDS == {
        "none": BITS_PER_DIM,
        "png": BITS_PER_DIM_MINUS_PNG,
        "webp": "bits_per_dim_minus_webp",
        "ratio": "bits_per_dim_minus_background",
    }
    assert (BITS_PER_DIM, BITS_PER_DIM_MINUS_PNG) == ("bits_per_dim", "bits_per_dim_minus_png")
