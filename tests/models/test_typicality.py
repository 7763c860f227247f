"""The density over term vectors: log densities against scipy, thresholds that honour their
false-positive rate on other normal data, the card entry's round trip, and term vectors that
add up to their bound."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from models.core.card import MethodCalibration, ModelCard
from models.core.config import DDPMConfig, DiffusionConfig, UNetConfig, VAEConfig
from models.core.noise import seeded_generator
from models.core.progressive import run_to_end
from models.diffusion.ddpm import DDPM
from models.eval.typicality import (
    Density,
    bound_bits_per_dim,
    fit_and_calibrate,
    with_term_density,
)
from models.kinds import kind_of
from models.vae.model import VAE

NAMES = ("a_nats", "b_nats", "c_nats")
CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


@pytest.fixture
def tiny_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(image_size=8, latent_dim=4, channels=(8, 16), num_mixtures=2)).eval()


@pytest.fixture
def tiny_ddpm() -> DDPM:
    torch.manual_seed(0)
    unet = UNetConfig(
        image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), num_heads=2,
    )  # fmt: skip
    config = DDPMConfig(unet, DiffusionConfig(num_timesteps=20, variance="learned_range"))
    return DDPM(config).eval()


@pytest.fixture
def shipped_card() -> dict:
    return json.loads((CHECKPOINTS / "vae" / "model_card.json").read_text())


def _correlated(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = np.array([[3.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-2.0, 1.0, 0.2]])
    return rng.standard_normal((n, 3)) @ mixing.T + np.array([100.0, 5.0, -3.0])


def test_gaussian_log_density_is_scipys_multivariate_normal_of_standardised_vectors():
    fit, queries = _correlated(400, 0), _correlated(50, 1)
    density = Density.fit(fit, NAMES, "gaussian")
    z = (queries - fit.mean(axis=0)) / fit.std(axis=0, ddof=1)
    expected = stats.multivariate_normal(np.zeros(3), density.covariance).logpdf(z)
    np.testing.assert_allclose(density.log_density(queries), expected, rtol=1e-10)
    assert 0.0 <= density.shrinkage < 0.1  # plenty of data: little shrinkage


def test_gaussian_covariance_is_shrunk_towards_the_identity_with_few_images():
    few = _correlated(6, 2)
    density = Density.fit(few, NAMES, "gaussian")
    z = (few - few.mean(axis=0)) / few.std(axis=0, ddof=1)
    sample = np.cov(z, rowvar=False, bias=True)
    target = np.trace(sample) / 3 * np.eye(3)
    shrunk = (1 - density.shrinkage) * sample + density.shrinkage * target
    np.testing.assert_allclose(density.covariance, shrunk, rtol=1e-10)
    assert density.shrinkage > 0


def test_kde_log_density_is_scipys_gaussian_kde_with_scotts_rule():
    fit, queries = _correlated(300, 3), _correlated(40, 4)
    density = Density.fit(fit, NAMES, "kde")
    z_fit = (fit - fit.mean(axis=0)) / fit.std(axis=0, ddof=1)
    z = (queries - fit.mean(axis=0)) / fit.std(axis=0, ddof=1)
    reference = stats.gaussian_kde(z_fit.T, bw_method="scott")
    np.testing.assert_allclose(density.log_density(queries), reference.logpdf(z.T), rtol=1e-9)


@pytest.mark.parametrize("estimator", ["gaussian", "kde"])
def test_scoring_needs_neither_scipy_nor_sklearn(estimator, monkeypatch):
    # The service scores with a fitted density, and the image installs neither (dev only).
    fit, queries = _correlated(300, 3), _correlated(40, 4)
    density = Density.fit(fit, NAMES, estimator)
    expected = density.score(queries)
    for package in ("scipy", "scipy.linalg", "scipy.special", "sklearn", "sklearn.covariance"):
        monkeypatch.setitem(sys.modules, package, None)  # any import of it now fails
    with pytest.raises(ImportError):
        import scipy.linalg  # noqa: F401
    np.testing.assert_array_equal(density.score(queries), expected)


@pytest.mark.parametrize("estimator", ["gaussian", "kde"])
def test_score_is_high_both_below_and_above_the_typical_set(estimator):
    fit = _correlated(500, 5)
    density = Density.fit(fit, NAMES, estimator)
    centre, typical = fit.mean(axis=0, keepdims=True), _correlated(200, 6)
    too_low = centre - 6 * fit.std(axis=0)
    too_high = centre + 6 * fit.std(axis=0)
    ceiling = np.quantile(density.score(typical), 0.99)
    assert density.score(too_low)[0] > ceiling and density.score(too_high)[0] > ceiling
    assert density.score(centre)[0] < np.median(density.score(typical))


@pytest.mark.parametrize("estimator", ["gaussian", "kde"])
def test_thresholds_honour_their_target_fpr_on_other_normal_vectors(estimator):
    entry = fit_and_calibrate(
        _correlated(1000, 7),
        _correlated(2000, 8),
        NAMES,
        None,
        estimator,
        "fit",
        "calibration",
        check_vectors=_correlated(20_000, 9),
    )
    observed = entry.calibration.observed_fpr_on_other_normal_images
    for fpr in (0.01, 0.05):
        # 2,000 calibration scores: the quantile's own error is about sqrt(p (1-p) / 2000).
        tolerance = 4 * np.sqrt(fpr * (1 - fpr) / 2000)
        assert abs(observed[str(fpr)] - fpr) < tolerance
    assert entry.calibration.num_images == 2000 and entry.num_images == 1000


def test_density_round_trips_through_its_dict_and_the_card_entry():
    fit = _correlated(200, 10)
    entry = fit_and_calibrate(fit, _correlated(100, 11), NAMES, 10, "kde", "f", "c")
    again = MethodCalibration.from_dict(
        json.loads(
            json.dumps(
                {
                    "k": 10,
                    "scores": {},
                    "term_density": entry.to_dict(),
                }
            )
        )
    ).term_density
    assert again == entry
    queries = _correlated(30, 12)
    # The stored density (points rounded to 1e-6) is the one the calibration scored with.
    stored = Density.from_dict(entry)
    np.testing.assert_allclose(
        stored.score(queries), Density.fit(fit, NAMES, "kde").score(queries), atol=1e-4
    )
    assert Density.from_dict(stored.to_dict()).to_dict() == stored.to_dict()


def test_adding_a_term_density_to_a_card_changes_nothing_else(shipped_card):
    entry = fit_and_calibrate(
        _correlated(50, 13), _correlated(40, 14), NAMES, None, "gaussian", "f", "c"
    )
    card = {
        **shipped_card,
        "calibration": {
            m: {k: v for k, v in e.items() if k != "term_density"}
            for m, e in shipped_card["calibration"].items()
        },
    }
    updated = with_term_density(card, "elbo", entry)
    typed = ModelCard.from_dict(updated)
    assert typed.calibration["elbo"].term_density == entry
    updated["calibration"]["elbo"].pop("term_density")
    assert updated == card


@pytest.mark.parametrize("checkpoint", ["vae", "ddpm"])
def test_term_vectors_add_up_to_their_bound_with_the_same_draws(checkpoint, request):
    model = request.getfixturevalue(f"tiny_{checkpoint}")
    kind = kind_of(model)
    method = kind.methods(model)[kind.term_method]
    k = 6 if method.k_range else None
    x = torch.rand(3, *kind.image_shape(model.config), generator=seeded_generator(0)) * 2 - 1
    x = (x * 127.5).round() / 127.5
    with torch.no_grad():
        vectors = run_to_end(kind.term_vector(model, x, seeded_generator(1), 64, k))
        terms = run_to_end(method.run(model, x, k, seeded_generator(1), 64))
    assert vectors.shape == (3, len(kind.term_names(model, k))) and vectors.dtype == torch.float64
    torch.testing.assert_close(
        bound_bits_per_dim(vectors, x[0].numel()),
        terms["total_bits_per_dim"].double(),
        rtol=1e-6,
        atol=1e-6,
    )
