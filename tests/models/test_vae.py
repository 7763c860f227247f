"""The convolutional VAE (models/vae/model.py): shapes, sampling, -ELBO by term, the IWAE bound.

Every expected number is computed independently of the code under test: KL with
torch.distributions, discretized-logistic masses with scipy.stats.logistic, log-sum-exp with
scipy.special, and the importance-weighted bound against a linear-Gaussian model solved in closed
form. Statistical checks use fixed seeds and margins of several standard errors, sized so that a
mis-computed bound (e.g. a mean of log-weights in place of a log-mean-exp) fails them.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special, stats
from torch.distributions import Normal, kl_divergence

from models.core.config import VAEConfig
from models.core.likelihood import DiscretizedLogisticMixture, log_mean_exp_over_chunks
from models.core.noise import seeded_generator
from models.core.pixels import pixels_to_signed_unit
from models.data import load_fashion_mnist
from models.vae.model import VAE

LATENT_DIM = 4
NUM_MIXTURES = 2


# --------------------------------------------------------------------------------------------
# Helpers


def tiny_vae(image_size: int = 28, seed: int = 0, image_channels: int = 1) -> VAE:
    torch.manual_seed(seed)
    config = VAEConfig(
        image_channels=image_channels,
        image_size=image_size,
        latent_dim=LATENT_DIM,
        channels=(8, 16),
        num_res_blocks=1,
        num_mixtures=NUM_MIXTURES,
    )
    return VAE(config).eval()


def downsample_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> uint8 (N, 1, size, size) by block averaging and rounding."""
    pooled = F.avg_pool2d(pixels.to(torch.float32), 28 // size)
    return torch.round(pooled).clamp(0, 255).to(torch.uint8)


def scipy_log_prob_nats(
    pixels: np.ndarray, logit_weights: np.ndarray, means: np.ndarray, log_scales: np.ndarray
) -> np.ndarray:
    """log P(pixels) per image under a per-pixel discretized logistic mixture, with scipy.

    ``pixels``: integers 0..255 (B, C, H, W). Parameters: (B or 1, K, C, H, W). Value k owns
    [v - 1/255, v + 1/255] with v = k / 127.5 - 1; value 0 owns (-inf, ...] and 255 [..., +inf).
    """
    pixels = pixels.astype(np.int64)[:, None]  # (B, 1, C, H, W) against K components
    v = pixels / 127.5 - 1.0
    loc = means.astype(np.float64)
    scale = np.exp(log_scales.astype(np.float64))
    lower, upper = v - 1.0 / 255.0, v + 1.0 / 255.0
    # Differences of CDFs below the mean and of survival functions above it (no cancellation).
    cdf_upper = np.where(pixels == 255, 1.0, stats.logistic.cdf(upper, loc, scale))
    cdf_lower = np.where(pixels == 0, 0.0, stats.logistic.cdf(lower, loc, scale))
    sf_lower = np.where(pixels == 0, 1.0, stats.logistic.sf(lower, loc, scale))
    sf_upper = np.where(pixels == 255, 0.0, stats.logistic.sf(upper, loc, scale))
    mass = np.where(v > loc, sf_lower - sf_upper, cdf_upper - cdf_lower)
    weights = special.softmax(logit_weights.astype(np.float64), axis=1)
    per_pixel = np.log((weights * mass).sum(axis=1))  # (B, C, H, W)
    return per_pixel.reshape(per_pixel.shape[0], -1).sum(axis=1)


def mixture_params(decoded: DiscretizedLogisticMixture) -> tuple[np.ndarray, ...]:
    return tuple(
        t.detach().numpy() for t in (decoded.logit_weights, decoded.means, decoded.log_scales)
    )


def z_blind_vae(image_size: int, seed: int) -> VAE:
    """A VAE whose decoder ignores z: ``from_latent`` keeps only its bias."""
    model = tiny_vae(image_size, seed=seed)
    with torch.no_grad():
        model.from_latent.weight.zero_()
    return model


def exact_nll_of_z_blind_vae(model: VAE, pixels: torch.Tensor) -> np.ndarray:
    """-log p(x) per image when p(x|z) does not depend on z: one scipy evaluation, in nats."""
    with torch.no_grad():
        at_origin = model.decode(torch.zeros(1, LATENT_DIM))
        elsewhere = model.decode(3.0 * torch.randn(5, LATENT_DIM))
    for ours, theirs in zip(mixture_params(at_origin), mixture_params(elsewhere), strict=True):
        np.testing.assert_allclose(np.broadcast_to(ours, theirs.shape), theirs, atol=1e-5)
    return -scipy_log_prob_nats(pixels.numpy(), *mixture_params(at_origin))


def standard_error(values: torch.Tensor) -> float:
    return values.std().item() / math.sqrt(values.numel())


def on_the_8_bit_grid(x: torch.Tensor) -> bool:
    levels = (x.double() + 1.0) * 127.5
    return bool(((levels - levels.round()).abs() < 1e-3).all()) and bool(
        ((levels.round() >= 0) & (levels.round() <= 255)).all()
    )


@pytest.fixture(scope="module")
def fashion_pixels() -> torch.Tensor:
    """The first 64 Fashion-MNIST test images, uint8 (64, 1, 28, 28)."""
    try:
        images, _ = load_fashion_mnist("test")
    except FileNotFoundError as error:  # the data package is installed by `make data`
        pytest.skip(str(error))
    return images[:64]


# --------------------------------------------------------------------------------------------
# Shapes and input validation


@pytest.mark.parametrize("image_channels", [1, 3])
def test_encode_returns_batch_by_latent_mean_and_logvar(image_channels):
    model = tiny_vae(8, image_channels=image_channels)
    x = torch.rand(5, image_channels, 8, 8) * 2 - 1
    posterior = model.encode(x)
    assert posterior.mean.shape == (5, LATENT_DIM)
    assert posterior.logvar.shape == (5, LATENT_DIM)
    assert torch.isfinite(posterior.mean).all() and torch.isfinite(posterior.logvar).all()


@pytest.mark.parametrize("image_channels", [1, 3])
def test_decode_returns_a_logistic_mixture_with_batch_k_c_h_w_parameters(image_channels):
    model = tiny_vae(8, image_channels=image_channels)
    decoded = model.decode(torch.randn(3, LATENT_DIM))
    assert isinstance(decoded, DiscretizedLogisticMixture)
    expected = (3, NUM_MIXTURES, image_channels, 8, 8)
    assert decoded.logit_weights.shape == expected
    assert decoded.means.shape == expected
    assert decoded.log_scales.shape == expected
    # Salimans et al. floor on the log-scale.
    assert decoded.log_scales.min() >= -7.0
    assert decoded.log_prob_nats(torch.zeros(3, image_channels, 8, 8)).shape == (
        3,
        image_channels,
        8,
        8,
    )


@pytest.mark.parametrize(
    "shape", [(2, 1, 27, 27), (2, 1, 14, 14), (2, 3, 28, 28), (1, 28, 28), (2, 1, 28, 14)]
)
def test_encode_rejects_wrong_image_size(shape):
    model = tiny_vae(28)
    expected = re.escape("(B, 1, 28, 28)")
    with pytest.raises(ValueError, match=expected) as error:
        model.encode(torch.zeros(shape))
    assert str(tuple(shape)) in str(error.value)
    with pytest.raises(ValueError, match=expected):
        model.negative_elbo(torch.zeros(shape), seeded_generator(0))
    with pytest.raises(ValueError, match=expected):
        model.iwae_bound(torch.zeros(shape), 2, seeded_generator(0))


# --------------------------------------------------------------------------------------------
# Sampling


def loud_vae() -> VAE:
    """A decoder whose means and scales reach far outside [-1, 1] (so clipping is exercised)."""
    model = tiny_vae(28, seed=3)
    with torch.no_grad():
        model.to_pixel_params[-1].weight.mul_(8.0)
    return model


@pytest.mark.parametrize("sample_pixels", [False, True])
def test_sample_has_shape_n_c_h_w_and_stays_in_signed_unit_range(sample_pixels):
    model = loud_vae()
    images = model.sample(6, seeded_generator(0), sample_pixels=sample_pixels)
    assert images.shape == (6, 1, 28, 28)
    assert images.min() >= -1.0 and images.max() <= 1.0
    # This decoder pushes many pixels past both ends, so the range check has teeth.
    assert (images == -1.0).any() and (images == 1.0).any()


def test_sample_pixels_lie_on_the_8_bit_grid():
    model = loud_vae()
    images = model.sample(4, seeded_generator(1), sample_pixels=True)
    assert on_the_8_bit_grid(images)
    # Many distinct grid values, not just the two ends.
    assert torch.unique(images).numel() > 50


def test_mean_samples_are_not_quantized():
    images = tiny_vae(28).sample(2, seeded_generator(1))
    assert not on_the_8_bit_grid(images)


@pytest.mark.parametrize("sample_pixels", [False, True])
def test_sample_with_the_same_seed_is_identical_and_with_another_seed_differs(sample_pixels):
    model = tiny_vae(28, seed=1)
    first = model.sample(3, seeded_generator(42), sample_pixels=sample_pixels)
    again = model.sample(3, seeded_generator(42), sample_pixels=sample_pixels)
    other = model.sample(3, seeded_generator(43), sample_pixels=sample_pixels)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Within one call the n images differ too.
    assert not torch.equal(first[0], first[1])


def test_sample_at_temperature_zero_is_the_decoder_mean_at_the_origin_for_every_image():
    model = tiny_vae(28, seed=2)
    images = model.sample(4, seeded_generator(5), temperature=0.0)
    with torch.no_grad():
        decoded = model.decode(torch.zeros(1, LATENT_DIM))
    weights = torch.softmax(decoded.logit_weights.double(), dim=1)
    expected = (weights * decoded.means.double()).sum(dim=1).clamp(-1.0, 1.0)  # (1, C, H, W)
    assert torch.allclose(images.double(), expected.expand(4, -1, -1, -1), atol=1e-5)
    # A positive temperature gives different images.
    assert not torch.allclose(model.sample(4, seeded_generator(5), temperature=1.0), images)


@pytest.mark.parametrize("sample_pixels", [False, True])
def test_sample_of_a_request_does_not_depend_on_requests_batched_with_it(sample_pixels):
    model = tiny_vae(28, seed=4)
    alone = model.sample(3, seeded_generator(7), sample_pixels=sample_pixels)
    neighbours = [seeded_generator(100)] * 2 + [seeded_generator(7)] * 3 + [seeded_generator(9)]
    mixed = model.sample(6, neighbours, sample_pixels=sample_pixels)[2:5]
    if sample_pixels:
        # Float noise from a different batch size may move a value across a rounding edge.
        assert (mixed != alone).float().mean() < 1e-3
        assert (mixed - alone).abs().max() <= 2.0 / 255.0 + 1e-6
    else:
        assert torch.allclose(mixed, alone, atol=1e-5)


def test_sampled_pixels_follow_the_decoders_discretized_logistic_mixture():
    """Chi-square goodness of fit of 12,800 sampled pixels against scipy's bin masses."""
    model = tiny_vae(8, seed=6)
    with torch.no_grad():
        head = model.to_pixel_params[-1]
        head.weight.zero_()  # every pixel of every image gets the same mixture: the bias
        # (logit weights, means, log-scales) of K=2 components: a bimodal law with real mass
        # in both end bins.
        head.bias.copy_(torch.tensor([0.4, -0.3, -0.75, 0.55, -2.2, -1.6]))
    images = model.sample(200, seeded_generator(11), sample_pixels=True)
    with torch.no_grad():
        decoded = model.decode(torch.zeros(1, LATENT_DIM))
    logits, means, log_scales = (
        p[0, :, 0, 0, 0].double().numpy()
        for p in (decoded.logit_weights, decoded.means, decoded.log_scales)
    )
    grid = np.arange(256).reshape(256, 1, 1, 1)
    probs = np.exp(
        scipy_log_prob_nats(
            grid,
            logits.reshape(1, -1, 1, 1, 1),
            means.reshape(1, -1, 1, 1, 1),
            log_scales.reshape(1, -1, 1, 1, 1),
        )
    )
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)
    levels = torch.round((images.double() + 1.0) * 127.5).long().flatten()
    observed = np.bincount(levels.numpy(), minlength=256).astype(np.float64)
    expected = probs * levels.numel()
    # Merge neighbouring values until every cell expects at least 20 draws.
    cells_observed, cells_expected, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20.0:
            cells_observed.append(acc_o)
            cells_expected.append(acc_e)
            acc_o, acc_e = 0.0, 0.0
    cells_observed[-1] += acc_o
    cells_expected[-1] += acc_e
    assert len(cells_expected) > 30
    result = stats.chisquare(cells_observed, cells_expected)
    assert result.pvalue > 1e-3, result


# --------------------------------------------------------------------------------------------
# Negative ELBO


def spread_posterior_vae(seed: int = 0) -> VAE:
    """A 28x28 VAE whose posteriors sit well away from the prior (KL of several nats)."""
    model = tiny_vae(28, seed=seed)
    with torch.no_grad():
        model.to_posterior.weight.mul_(10.0)
    return model


def test_kl_term_equals_closed_form_kl_from_torch_distributions(fashion_pixels):
    model = spread_posterior_vae()
    x = pixels_to_signed_unit(fashion_pixels[:4])
    result = model.negative_elbo(x, seeded_generator(0))
    with torch.no_grad():
        posterior = model.encode(x)
    q = Normal(posterior.mean.double(), torch.exp(0.5 * posterior.logvar.double()))
    expected = kl_divergence(q, Normal(0.0, 1.0)).sum(dim=1)
    assert result.kl_nats.shape == (4,)
    assert (expected > 1.0).all()  # far from the prior: the comparison is not 0 == 0
    assert torch.allclose(result.kl_nats.double(), expected, rtol=1e-5)


def test_kl_term_agrees_with_a_monte_carlo_estimate_of_log_q_minus_log_p(fashion_pixels):
    model = spread_posterior_vae(seed=1)
    x = pixels_to_signed_unit(fashion_pixels[4:8])
    with torch.no_grad():
        kl = model.negative_elbo(x, seeded_generator(0)).kl_nats.double()
        posterior = model.encode(x)
    q = Normal(posterior.mean.double(), torch.exp(0.5 * posterior.logvar.double()))
    generator = torch.Generator().manual_seed(8)
    eps = torch.randn((40_000, *q.mean.shape), generator=generator, dtype=torch.float64)
    z = q.mean + q.stddev * eps  # (S, B, Z)
    log_ratio = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(dim=-1)  # (S, B)
    estimate = log_ratio.mean(dim=0)
    errors = log_ratio.std(dim=0) / math.sqrt(log_ratio.shape[0])
    assert (errors < 0.1).all()
    assert ((estimate - kl).abs() < 4.0 * errors).all(), (estimate, kl, errors)


@pytest.mark.parametrize("num_samples", [1, 4])
def test_reconstruction_term_is_minus_log_likelihood_at_reparameterised_draws(
    fashion_pixels, num_samples
):
    model = spread_posterior_vae(seed=2)
    x = pixels_to_signed_unit(fashion_pixels[8:11])
    with torch.no_grad():
        result = model.negative_elbo(x, seeded_generator(17), num_samples=num_samples)
        posterior = model.encode(x)
        generator = torch.Generator().manual_seed(17)
        log_likelihoods = []
        for _ in range(num_samples):
            eps = torch.randn((3, LATENT_DIM), generator=generator)
            z = posterior.mean + torch.exp(0.5 * posterior.logvar) * eps
            log_likelihoods.append(model.decode(z).log_prob_nats(x).sum(dim=(1, 2, 3)))
    expected = -torch.stack(log_likelihoods).mean(dim=0)
    assert result.reconstruction_nats.shape == (3,)
    assert torch.allclose(result.reconstruction_nats, expected, rtol=1e-5)
    assert torch.allclose(result.total_nats, expected + result.kl_nats, rtol=1e-6)


def test_total_bits_per_dim_is_total_nats_over_784_ln_2(fashion_pixels):
    model = tiny_vae(28)
    x = pixels_to_signed_unit(fashion_pixels[:3])
    with torch.no_grad():
        result = model.negative_elbo(x, seeded_generator(3))
    assert result.num_dims == 784
    expected = (result.reconstruction_nats + result.kl_nats) / (784 * math.log(2.0))
    assert torch.allclose(result.total_bits_per_dim, expected, rtol=1e-6)


def test_negative_elbo_of_a_request_does_not_depend_on_requests_batched_with_it(fashion_pixels):
    model = spread_posterior_vae(seed=3)
    x = pixels_to_signed_unit(fashion_pixels[:5])
    with torch.no_grad():
        alone = model.negative_elbo(x[2:4], seeded_generator(7), num_samples=2)
        generators = [seeded_generator(1)] * 2 + [seeded_generator(7)] * 2 + [seeded_generator(2)]
        mixed = model.negative_elbo(x, generators, num_samples=2)
    assert torch.allclose(mixed.total_nats[2:4], alone.total_nats, rtol=1e-5)


def test_gradients_of_negative_elbo_reach_every_parameter_and_are_finite(fashion_pixels):
    model = tiny_vae(28, seed=4).train()
    x = pixels_to_signed_unit(fashion_pixels[:2])
    model.negative_elbo(x, seeded_generator(0)).total_nats.mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.from_latent.weight.grad.abs().sum() > 0
    assert model.to_pixel_params[-1].weight.grad.abs().sum() > 0


def test_reconstruction_gradient_reaches_the_encoder_through_the_reparameterisation(
    fashion_pixels,
):
    """The KL term alone would also move the encoder; the reconstruction term must too."""
    model = tiny_vae(28, seed=4).train()
    x = pixels_to_signed_unit(fashion_pixels[:2])
    model.negative_elbo(x, seeded_generator(0)).reconstruction_nats.sum().backward()
    assert model.to_posterior.weight.grad.abs().sum() > 0
    assert model.encoder.layers[0].weight.grad.abs().sum() > 0
    assert torch.isfinite(model.to_posterior.weight.grad).all()


# --------------------------------------------------------------------------------------------
# Known answer: posterior = prior and a decoder that ignores z


def test_negative_elbo_is_the_exact_nll_when_posterior_is_prior_and_decoder_ignores_z(
    fashion_pixels,
):
    """KL = 0 and p(x|z) = p(x), so -ELBO = -log p(x) exactly; scipy gives -log p(x)."""
    model = z_blind_vae(28, seed=5)
    with torch.no_grad():
        model.to_posterior.weight.zero_()
        model.to_posterior.bias.zero_()
    pixels = fashion_pixels[:6]
    x = pixels_to_signed_unit(pixels)
    expected_nats = exact_nll_of_z_blind_vae(model, pixels)
    with torch.no_grad():
        result = model.negative_elbo(x, seeded_generator(0), num_samples=3)
    assert torch.equal(result.kl_nats, torch.zeros(6))
    np.testing.assert_allclose(result.reconstruction_nats.numpy(), expected_nats, rtol=1e-4)
    np.testing.assert_allclose(result.total_nats.numpy(), expected_nats, rtol=1e-4)
    expected_bits_per_dim = expected_nats / (784 * math.log(2.0))
    np.testing.assert_allclose(result.total_bits_per_dim.numpy(), expected_bits_per_dim, rtol=1e-4)
    # A codelength between 0 and the 8 bits/dim of a uniform code over 256 values.
    assert ((expected_bits_per_dim > 0) & (expected_bits_per_dim < 8)).all()


def test_iwae_bound_is_the_exact_nll_for_any_k_when_posterior_is_prior_and_decoder_ignores_z(
    fashion_pixels,
):
    """Every importance weight equals p(x); 37 samples in uneven chunks of 8 must average to
    exactly p(x) (a miscounted k or a dropped chunk would shift the result by log terms)."""
    model = z_blind_vae(28, seed=5)
    with torch.no_grad():
        model.to_posterior.weight.zero_()
        model.to_posterior.bias.zero_()
    pixels = fashion_pixels[:6]
    expected_nats = exact_nll_of_z_blind_vae(model, pixels)
    x = pixels_to_signed_unit(pixels)
    for k, max_batch in ((1, 2048), (37, 50), (37, 6)):
        bound = model.iwae_bound(x, k, seeded_generator(1), max_batch=max_batch)
        assert bound.k == k
        np.testing.assert_allclose(bound.total_nats.numpy(), expected_nats, rtol=1e-4)
        np.testing.assert_allclose(
            bound.total_bits_per_dim.numpy(), expected_nats / (784 * math.log(2.0)), rtol=1e-4
        )


def test_iwae_bound_closes_the_kl_gap_when_only_the_decoder_ignores_z(fashion_pixels):
    """q(z|x) = N(0.3, 2 I) != p(z): -ELBO = -log p(x) + KL exactly, and the IWAE bound with
    k = 2000 lands on -log p(x): the gap shrinks from 0.79 nats to Monte-Carlo noise (the weights
    p(z)/q(z|x) have variance 1.00 here, so the bound's standard deviation is about 0.022)."""
    model = z_blind_vae(14, seed=7)
    with torch.no_grad():
        model.to_posterior.weight.zero_()
        model.to_posterior.bias.copy_(
            torch.tensor([0.3] * LATENT_DIM + [math.log(2.0)] * LATENT_DIM)
        )
    pixels = downsample_pixels(fashion_pixels[:3], 14)
    x = pixels_to_signed_unit(pixels)
    exact_nll = exact_nll_of_z_blind_vae(model, pixels)
    q = Normal(torch.full((LATENT_DIM,), 0.3, dtype=torch.float64), math.sqrt(2.0))
    kl_gap = kl_divergence(q, Normal(0.0, 1.0)).sum().item()
    # Per dimension: (variance + mean^2 - 1 - log variance) / 2.
    assert kl_gap == pytest.approx(LATENT_DIM * 0.5 * (2.0 + 0.3**2 - 1.0 - math.log(2.0)))

    with torch.no_grad():
        elbo = model.negative_elbo(x, seeded_generator(0), num_samples=2)
    np.testing.assert_allclose(elbo.kl_nats.numpy(), kl_gap, rtol=1e-5)
    np.testing.assert_allclose(elbo.total_nats.numpy(), exact_nll + kl_gap, rtol=1e-4)

    bound = model.iwae_bound(x, 2000, seeded_generator(1), max_batch=600).total_nats.numpy()
    assert (np.abs(bound - exact_nll) < 0.12).all(), (bound - exact_nll, kl_gap)


# --------------------------------------------------------------------------------------------
# IWAE on a real-looking batch (Burda et al. 2015)

IWAE_KS = (1, 10, 100, 1000)
# Independent replicates per image, so that every k's per-image mean has comparable noise.
IWAE_REPLICATES = {1: 64, 10: 16, 100: 2, 1000: 1}


@pytest.fixture(scope="module")
def iwae_study(fashion_pixels) -> dict[str, torch.Tensor]:
    """Per-image bounds on 16 Fashion-MNIST images (14x14) for a fixed random tiny VAE.

    Returns "elbo" (-ELBO with 100 samples) and "k=..." (IWAE bound averaged over replicates),
    each (16,) in nats.
    """
    model = tiny_vae(14, seed=0)
    x = pixels_to_signed_unit(downsample_pixels(fashion_pixels[:16], 14))
    study: dict[str, torch.Tensor] = {}
    for k in IWAE_KS:
        replicates = IWAE_REPLICATES[k]
        rows = x.repeat(replicates, 1, 1, 1)  # row r*16 + i is image i
        bound = model.iwae_bound(rows, k, seeded_generator(1000 + k), max_batch=512)
        study[f"k={k}"] = bound.total_nats.reshape(replicates, 16).mean(dim=0)
    with torch.no_grad():
        study["elbo"] = model.negative_elbo(x, seeded_generator(7), num_samples=100).total_nats
    return study


@pytest.mark.slow
def test_iwae_codelength_is_at_most_the_negative_elbo_on_average(iwae_study):
    elbo = iwae_study["elbo"]
    for k in IWAE_KS:
        gap = elbo - iwae_study[f"k={k}"]  # >= 0 in expectation, = 0 for k = 1
        assert gap.mean() > -3.0 * standard_error(gap), k
        if k >= 10:
            # Strictly tighter: a bound computed as a mean of log-weights would not be.
            assert gap.mean() > 3.0 * standard_error(gap), (k, gap.mean(), standard_error(gap))


@pytest.mark.slow
def test_iwae_codelength_does_not_increase_with_k(iwae_study):
    for k_small, k_large in zip(IWAE_KS, IWAE_KS[1:], strict=False):
        change = iwae_study[f"k={k_large}"] - iwae_study[f"k={k_small}"]
        assert change.mean() < 3.0 * standard_error(change), (k_small, k_large)
    improvement = iwae_study["k=1"] - iwae_study["k=1000"]
    assert improvement.mean() > 3.0 * standard_error(improvement)


@pytest.mark.slow
def test_iwae_with_one_sample_has_the_expectation_of_the_negative_elbo(fashion_pixels):
    """E[-log w] = E_q[-log p(x|z)] + KL for one sample; compared over 256 rows (16 images x 16
    independent draws), where a sign error in log p(z) - log q(z|x) would be 2 KL ~ 10+ nats off."""
    model = tiny_vae(14, seed=1)
    with torch.no_grad():
        model.to_posterior.weight.mul_(10.0)
    x = pixels_to_signed_unit(downsample_pixels(fashion_pixels[16:32], 14)).repeat(16, 1, 1, 1)
    one_sample = model.iwae_bound(x, 1, seeded_generator(21)).total_nats
    with torch.no_grad():
        elbo = model.negative_elbo(x, seeded_generator(22), num_samples=8)
    assert elbo.kl_nats.mean() > 1.0
    difference = one_sample - elbo.total_nats
    assert difference.mean().abs() < 4.0 * standard_error(difference), (
        difference.mean(),
        standard_error(difference),
    )
    assert standard_error(difference) < 0.25 * elbo.kl_nats.mean()


@pytest.mark.slow
def test_iwae_with_5000_samples_in_chunks_is_finite_and_agrees_across_max_batch(fashion_pixels):
    """k = 5000 on 2 images, chunked (128 samples per chunk) and in one chunk, with different
    seeds, and from 5000 one-sample bounds combined with scipy's logsumexp: three independent
    estimates of one number, which must agree within the delta-method Monte-Carlo error."""
    model = tiny_vae(8, seed=2)
    x = pixels_to_signed_unit(
        torch.round(F.avg_pool2d(fashion_pixels[:2, :, 2:26, 2:26].float(), 3))
    )
    k = 5000
    chunked = model.iwae_bound(x, k, seeded_generator(31), max_batch=256)
    whole = model.iwae_bound(x, k, seeded_generator(32), max_batch=2 * k)
    assert chunked.k == k
    assert torch.isfinite(chunked.total_nats).all() and torch.isfinite(whole.total_nats).all()

    rows = x.repeat(k, 1, 1, 1)  # row 2j + i is image i
    log_weights = -model.iwae_bound(rows, 1, seeded_generator(33)).total_nats
    log_weights = log_weights.double().reshape(k, 2).numpy()
    by_scipy = -(special.logsumexp(log_weights, axis=0) - math.log(k))
    normalised = np.exp(log_weights - log_weights.max(axis=0))
    sd = normalised.std(axis=0) / (normalised.mean(axis=0) * math.sqrt(k))
    assert (sd > 0).all()
    tolerance = 5.0 * math.sqrt(2.0) * sd + 1e-3
    estimates = (chunked.total_nats.double().numpy(), whole.total_nats.double().numpy(), by_scipy)
    for i, first in enumerate(estimates):
        for second in estimates[i + 1 :]:
            assert (np.abs(first - second) < tolerance).all(), (first, second, tolerance)


def test_iwae_with_a_seed_is_reproducible_for_any_max_batch(fashion_pixels):
    model = tiny_vae(8, seed=3)
    x = pixels_to_signed_unit(
        torch.round(F.avg_pool2d(fashion_pixels[:3, :, 2:26, 2:26].float(), 3))
    )
    reference = model.iwae_bound(x, 120, seeded_generator(5), max_batch=4096).total_nats
    # 3 images: 120 samples in chunks of 3, 21 (the last 15) and 119 (the last 1).
    for max_batch in (9, 63, 357):
        other = model.iwae_bound(x, 120, seeded_generator(5), max_batch=max_batch).total_nats
        assert torch.allclose(other, reference, atol=1e-3), max_batch


def test_iwae_of_a_request_does_not_depend_on_requests_batched_with_it(fashion_pixels):
    """Per-row generators: a 2-image request (seed 7) gets the same bound alone and between
    other requests, although the batch size changes how the k samples are chunked."""
    model = tiny_vae(8, seed=4)
    x = pixels_to_signed_unit(
        torch.round(F.avg_pool2d(fashion_pixels[:5, :, 2:26, 2:26].float(), 3))
    )
    alone = model.iwae_bound(x[1:3], 50, [seeded_generator(7)] * 2, max_batch=64).total_nats
    generators = [seeded_generator(1)] + [seeded_generator(7)] * 2 + [seeded_generator(2)] * 2
    mixed = model.iwae_bound(x, 50, generators, max_batch=64).total_nats  # chunks of 12, not 32
    assert torch.allclose(mixed[1:3], alone, rtol=1e-5)
    # The neighbours' seeds matter to them: the same image with another seed moves.
    other = model.iwae_bound(x[1:3], 50, [seeded_generator(8)] * 2, max_batch=64).total_nats
    assert not torch.allclose(other, alone, rtol=1e-5)


@pytest.mark.parametrize("k", [0, -1, -100])
def test_iwae_rejects_fewer_than_one_sample(k):
    model = tiny_vae(8)
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.iwae_bound(torch.zeros(1, 1, 8, 8), k, seeded_generator(0))


# --------------------------------------------------------------------------------------------
# Importance weighting in closed form: a 1-D linear-Gaussian model

# p(z) = N(0, 1), p(x|z) = N(A z, S^2), proposal q(z|x) = N(M, V) (wider and off-centre).
A, S, M, V = 1.5, 0.7, 0.2, 0.6
XS = torch.tensor([-1.0, 0.4, 1.7], dtype=torch.float64)


def linear_gaussian_log_weights(z: torch.Tensor) -> torch.Tensor:
    """log p(x, z) - log q(z|x) for z (n, len(XS))."""
    log_prior = Normal(0.0, 1.0).log_prob(z)
    log_likelihood = Normal(A * z, S).log_prob(XS)
    log_proposal = Normal(M, math.sqrt(V)).log_prob(z)
    return log_prior + log_likelihood - log_proposal


def linear_gaussian_exact_log_evidence() -> torch.Tensor:
    return Normal(0.0, math.sqrt(A**2 + S**2)).log_prob(XS)


def linear_gaussian_elbo() -> torch.Tensor:
    """E_q[log p(z) + log p(x|z) - log q(z)] in closed form.

    E_q[z^2] = M^2 + V; E_q[(x - A z)^2] = (x - A M)^2 + A^2 V; -E_q[log q] = log(2 pi e V) / 2.
    """
    log_2pi = math.log(2.0 * math.pi)
    expected_log_prior = -0.5 * log_2pi - 0.5 * (M**2 + V)
    expected_log_likelihood = (
        -0.5 * log_2pi - math.log(S) - ((XS - A * M) ** 2 + A**2 * V) / (2.0 * S**2)
    )
    entropy = 0.5 * math.log(2.0 * math.pi * math.e * V)
    return expected_log_prior + expected_log_likelihood + entropy


def test_closed_form_elbo_is_log_evidence_minus_kl_to_the_true_posterior():
    """Checks the derivation used below: log p(x) - ELBO = KL(q || p(z|x))."""
    posterior_var = S**2 / (A**2 + S**2)
    posterior_means = A * XS / (A**2 + S**2)
    kl = kl_divergence(
        Normal(torch.full_like(XS, M), math.sqrt(V)),
        Normal(posterior_means, math.sqrt(posterior_var)),
    )
    assert torch.allclose(linear_gaussian_exact_log_evidence() - linear_gaussian_elbo(), kl)
    assert (kl > 0.05).all()  # the proposal is really wrong


def test_log_mean_exp_over_chunks_converges_to_the_exact_log_evidence():
    generator = torch.Generator().manual_seed(0)
    proposal = Normal(M, math.sqrt(V))

    def chunks(k: int, chunk: int):
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            eps = torch.randn((n, XS.numel()), generator=generator, dtype=torch.float64)
            yield linear_gaussian_log_weights(proposal.mean + proposal.stddev * eps)

    exact = linear_gaussian_exact_log_evidence()
    estimate = log_mean_exp_over_chunks(chunks(100_000, 7_000))  # 15 chunks, the last 2,000
    assert estimate.shape == XS.shape
    assert torch.allclose(estimate, exact, atol=0.01), (estimate, exact)
    # ... while a few samples are clearly short of it (a lower bound on log p(x)).
    small = torch.stack([log_mean_exp_over_chunks(chunks(2, 2)) for _ in range(2000)])
    assert ((exact - small.mean(dim=0)) > 5.0 * small.std(dim=0) / math.sqrt(2000)).all()


def test_log_mean_exp_over_chunks_with_one_sample_has_the_closed_form_elbo_as_expectation():
    generator = torch.Generator().manual_seed(1)
    num_draws = 200_000
    eps = torch.randn((num_draws, XS.numel()), generator=generator, dtype=torch.float64)
    z = M + math.sqrt(V) * eps
    log_weights = linear_gaussian_log_weights(z)
    one_sample = torch.stack(
        [log_mean_exp_over_chunks([row.unsqueeze(0)]) for row in log_weights[:2000]]
    )
    assert torch.allclose(one_sample, log_weights[:2000])  # k = 1: the log-weight itself
    elbo = linear_gaussian_elbo()
    mean = log_weights.mean(dim=0)
    error = log_weights.std(dim=0) / math.sqrt(num_draws)
    assert ((mean - elbo).abs() < 4.0 * error).all(), (mean, elbo, error)


def test_log_mean_exp_over_chunks_matches_scipy_for_uneven_chunks_and_extreme_values():
    generator = torch.Generator().manual_seed(2)
    weights = torch.randn((23, 4), generator=generator, dtype=torch.float64) * 50.0
    weights[:, 0] -= 2000.0  # exp underflows: only a stable log-sum-exp survives this column
    weights[:, 1] += 2000.0  # exp overflows
    chunks = [weights[:1], weights[1:9], weights[9:10], weights[10:]]
    expected = special.logsumexp(weights.numpy(), axis=0) - math.log(23)
    result = log_mean_exp_over_chunks(iter(chunks))
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12)


def test_log_mean_exp_over_chunks_rejects_no_chunks():
    with pytest.raises(ValueError, match="no log-weights"):
        log_mean_exp_over_chunks(iter([]))
