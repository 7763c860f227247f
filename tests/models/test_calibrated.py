"""Calibrated anomaly scores: options resolved against the card as /score resolves them, and
per image a score judged against the calibration's threshold and held-out scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.core.noise import seeded_generator
from models.core.pixels import pixels_to_signed_unit
from models.core.progressive import run_to_end
from models.eval.anomaly import Calibration
from models.eval.calibrated import CalibratedScorer, NoCalibrationError, bound_calibrations
from models.kinds import OptionError, kind_of
from models.vae.model import VAE

# 40 held-out scores, exact in the card's 6 decimals; thresholds resolve fpr down to 1/40
NORMAL_SCORES = 9.0 + (np.arange(40) - 20) / 64  # about where the tiny VAE scores


@pytest.fixture(scope="module")
def vae(tiny_vae_config):
    torch.manual_seed(0)
    return VAE(tiny_vae_config(size=8)).eval()


def _card() -> dict:
    entry = Calibration.of(NORMAL_SCORES, "fixture").to_dict((0.05,))
    return {"calibration": {"iwae": {"k": 3, "scores": {"bits_per_dim": entry}}}}


def _scorer(vae, **options) -> CalibratedScorer:
    return CalibratedScorer.of("tiny", kind_of(vae), vae, _card(), **options)


def test_scorer_runs_the_calibrations_k_and_judges_against_its_scores(vae):
    scorer = _scorer(vae, method="iwae", fpr=0.3)
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    judged = scorer.score(images, [seeded_generator(3) for _ in range(5)], max_batch=2)

    x = pixels_to_signed_unit(images)
    for i in range(5):  # each image alone, with its own generator: the same bound
        terms = run_to_end(scorer.method.run(vae, x[i : i + 1], 3, seeded_generator(3), 2))
        assert judged.bits_per_dim[i] == pytest.approx(terms["total_bits_per_dim"].item())
    assert scorer.k == 3
    assert np.array_equal(judged.score, judged.bits_per_dim)  # correction 'none'
    assert scorer.threshold == Calibration.of(NORMAL_SCORES, "fixture").threshold(0.3)
    assert np.array_equal(judged.is_anomaly, judged.score > scorer.threshold)
    assert 0 < judged.is_anomaly.sum() < 5  # the threshold splits them: the test tells
    below = [100 * np.mean(s > NORMAL_SCORES) for s in judged.score]
    assert judged.percentile == pytest.approx(below)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"method": "elbo"}, NoCalibrationError, "^method: .*no calibration for method 'elbo'"),
        ({"method": "iwae", "correction": "png"}, NoCalibrationError, "calibrated: iwae/bits_"),
        ({"method": "iwae", "correction": "terms"}, NoCalibrationError, "^correction: .*density"),
        ({"method": "iwae", "k": 5}, OptionError, "^k: the iwae calibration used k=3"),
        ({"method": "iwae", "fpr": 0.01}, OptionError, "^fpr: 0.01 is below 0.025"),
        ({"method": "iwae", "correction": "jpeg"}, OptionError, "^correction: one of none, png"),
    ],
)
def test_options_the_card_cannot_honour_name_the_option(vae, options, error, message):
    with pytest.raises(error, match=message):
        _scorer(vae, **options)


def test_bound_calibrations_are_each_methods_raw_bits_per_dim_scores():
    raw = Calibration.of(NORMAL_SCORES, "fixture").to_dict((0.05,))
    minus_png = Calibration.of(NORMAL_SCORES - 5.0, "fixture").to_dict((0.05,))
    card = {
        "calibration": {
            "iwae": {"k": 3, "scores": {"bits_per_dim": raw, "bits_per_dim_minus_png": minus_png}},
            "only_png": {"k": None, "scores": {"bits_per_dim_minus_png": minus_png}},
        }
    }
    found = bound_calibrations(card)
    assert list(found) == ["iwae"]  # a method with no raw calibration has no bound reference
    assert found["iwae"].normal_scores.tolist() == sorted(raw["normal_scores"])
    assert found["iwae"].mean == pytest.approx(9.0 - 1 / 128)  # (-20..19) / 64 averages -1/128
    assert bound_calibrations({}) == {}
