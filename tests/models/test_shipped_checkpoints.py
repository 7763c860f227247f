"""The committed checkpoints: they load, sample, bound real images sanely, and their model cards
hold every figure of the evaluation, measured on exactly these weights."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from models.core.card import ModelCard
from models.core.checkpoints import WEIGHTS_FILE, load_checkpoint, read_model_card
from models.core.noise import seeded_generator
from models.data import load_fashion_mnist
from models.diffusion.ddpm import DDPM
from models.diffusion.samplers import ddim_sample
from models.eval.outliers import uniform_noise
from models.eval.scoring import elbo_bits_per_dim, in_chunks, vlb_mc_bits_per_dim
from models.vae.model import VAE

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "checkpoints"
OUTLIER_SETS = {"digits", "gaussian_noise", "inverted", "blurred", "uniform_noise"}


@pytest.fixture(scope="module")
def vae() -> VAE:
    return load_checkpoint(CHECKPOINTS / "vae").model.eval()


@pytest.fixture(scope="module")
def ddpm() -> DDPM:
    return load_checkpoint(CHECKPOINTS / "ddpm").model.eval()


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    return load_fashion_mnist("test")[0][:8]


def _check_samples(draw) -> None:
    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape == (4, 1, 28, 28)
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_vae_samples_have_the_right_shape_range_and_are_seeded(vae):
    _check_samples(lambda seed: vae.sample(4, seeded_generator(seed)))


def test_ddpm_samples_have_the_right_shape_range_and_are_seeded(ddpm):
    _check_samples(
        lambda seed: ddim_sample(ddpm.diffusion, ddpm, (4, 1, 28, 28), 5, seeded_generator(seed))
    )


def _check_bounds(bound, test_images) -> None:
    real = in_chunks(bound, test_images, torch.device("cpu"), 8)
    noise = in_chunks(
        bound, uniform_noise(8, (1, 28, 28), seeded_generator(1)), torch.device("cpu"), 8
    )
    assert torch.isfinite(real).all() and (real < 8.0).all()
    # A trained model codes garments far better than noise, which costs about 8 bits/dim.
    assert real.max() < noise.min() - 1.0


def test_vae_elbo_of_test_images_is_finite_below_8_bits_and_beats_noise(vae, test_images):
    _check_bounds(elbo_bits_per_dim(vae, seeded_generator(0)), test_images)


def test_ddpm_bound_of_test_images_is_finite_below_8_bits_and_beats_noise(ddpm, test_images):
    _check_bounds(vlb_mc_bits_per_dim(ddpm, 20, seeded_generator(0)), test_images)


@pytest.mark.parametrize("name", ["vae", "ddpm"])
def test_model_card_was_measured_on_the_committed_weights(name):
    card = read_model_card(CHECKPOINTS / name)
    weights = (CHECKPOINTS / name / WEIGHTS_FILE).read_bytes()
    assert card["checkpoint"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert card["evaluation"]["seconds"] > 0 and card["evaluation"]["hardware"]


def test_vae_card_holds_every_figure():
    card = read_model_card(CHECKPOINTS / "vae")
    likelihood = ModelCard.from_dict(card).likelihood
    assert likelihood.headline.method == "elbo" and likelihood.headline.test_images == 10_000
    (iwae,) = likelihood.others
    assert iwae.method == "iwae" and iwae.k >= 1000
    samplers = card["sample_quality"]["samplers"]
    assert all(s["num_samples"] == 10_000 for s in samplers.values())
    _check_anomaly_and_calibration(card, ["elbo", "iwae"])


def test_ddpm_card_holds_every_figure(ddpm):
    card = read_model_card(CHECKPOINTS / "ddpm")
    headline = ModelCard.from_dict(card).likelihood.headline
    assert headline.method == "vlb_exact"
    assert headline.label == f"exact VLB, T = {ddpm.diffusion.num_timesteps}"
    terms = headline.terms_bits_per_dim
    assert set(terms) == {"L_T", "sum of L_t", "L_0"} and min(terms.values()) >= 0
    assert sum(terms.values()) == pytest.approx(headline.bits_per_dim.mean, rel=1e-9)
    samplers = card["sample_quality"]["samplers"]
    assert {"ddim_50", f"ancestral_{ddpm.diffusion.num_timesteps}"} <= set(samplers)
    _check_anomaly_and_calibration(card, ["vlb_exact", "vlb_mc"])


def _check_anomaly_and_calibration(card, methods) -> None:
    assert card["sample_quality"]["classifier"]["test_accuracy"] > 0.85
    for figures in card["sample_quality"]["samplers"].values():
        assert figures["real_data_floor"] > 0 and figures["frechet_distance"] > 0
        assert (CHECKPOINTS / card["kind"] / figures["grid"]).exists()
    for method in methods:
        assert set(card["anomaly"]["methods"][method]["sets"]) == OUTLIER_SETS
        scores = card["calibration"][method]["scores"]
        for kind in ("bits_per_dim", "bits_per_dim_minus_png"):
            assert "0.05" in scores[kind]["thresholds"]
    cheap = methods[-1]  # ELBO-like scores are calibrated on enough images for a 1% target
    assert "0.01" in card["calibration"][cheap]["scores"]["bits_per_dim"]["thresholds"]


def test_classifier_card_reports_its_test_accuracy():
    card = json.loads((CHECKPOINTS / "classifier" / "model_card.json").read_text())
    assert card["test_accuracy"] > 0.85 and card["test_images"] == 10_000
