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


def _detection(**per_set):
    """A MethodDetection whose sets have the given (raw, png, webp) AUROCs."""
    from models.core.card import Detection, MethodDetection, OutlierDetection

    def outcome(raw, png, webp):
        return OutlierDetection(
            mean_bits_per_dim=5.0,
            raw=Detection(raw, 0.1),
            minus_png=Detection(png, 0.1),
            minus_codecs={"webp": Detection(webp, 0.1)},
        )

    return MethodDetection(None, 100, {s: outcome(*a) for s, a in per_set.items()}, 3.0)


def test_the_recommended_correction_has_the_best_mean_auroc_among_the_calibrated():
    from models.core.card import recommend

    detection = _detection(a=(0.90, 0.95, 0.99), b=(0.80, 0.70, 0.90))
    best = recommend(detection, {"none", "png", "webp"})
    assert best.correction == "webp"
    assert best.mean_auroc == pytest.approx({"none": 0.85, "png": 0.825, "webp": 0.945})
    assert recommend(detection, {"none", "png"}).correction == "none"  # webp not calibrated
    tie = _detection(a=(0.9, 0.9, 0.8))
    assert recommend(tie, {"none", "png", "webp"}).correction == "none"  # the first listed
    assert recommend(_detection(), {"none"}) is None  # no outlier set measured


def test_a_cards_recommendation_decides_the_plan_of_a_request_without_a_correction():
    from models.core.card import recommended_corrections_in
    from models.core.checkpoints import load_checkpoint
    from models.eval.plan import Scoring
    from models.kinds import kind_of

    card = _shipped("vae")
    vae = load_checkpoint(CHECKPOINTS / "vae").model
    assert Scoring("vae", kind_of(vae), vae, card).plan(correction=None).correction == "none"
    card["anomaly"]["recommended"] = {"elbo": {"correction": "png", "mean_auroc": {"png": 1.0}}}
    assert recommended_corrections_in(card) == {"elbo": "png"}
    scoring = Scoring("vae", kind_of(vae), vae, card)
    assert scoring.plan(correction=None).correction == "png"
    assert scoring.plan("iwae", correction=None).correction == "none"
    assert scoring.plan(correction="none").correction == "none"
    card["anomaly"]["recommended"] = ["png"]
    with pytest.raises(CardError, match="anomaly.recommended"):
        recommended_corrections_in(card)
