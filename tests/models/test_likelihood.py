"""Likelihoods and KLs (models/core/likelihood.py) checked against scipy, torch.distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats
from torch.distributions import Normal, kl_divergence

from models.core.likelihood import (
    DiscretizedLogisticMixture,
    discretized_gaussian_log_likelihood_nats,
    discretized_logistic_log_likelihood_nats,
    log_mean_exp_over_chunks,
    nats_to_bits_per_dim,
    normal_kl_nats,
    quantize_to_grid,
    standard_normal_kl_nats,
)
from models.core.noise import seeded_generator

HALF_BIN = 1.0 / 255.0
# k / 127.5 - 1 for k in 0..255, in float64 (the exact grid) for the scipy references.
GRID64 = np.arange(256) / 127.5 - 1.0

DISCRETIZED_LAWS = {
    "gaussian": (discretized_gaussian_log_likelihood_nats, stats.norm),
    "logistic": (discretized_logistic_log_likelihood_nats, stats.logistic),
}


def grid(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.arange(256, dtype=dtype) / 127.5 - 1.0


def float64_args(x, mean: float, scale: float) -> tuple[torch.Tensor, ...]:
    """(x, mean, log_scale) as float64 tensors for a law with standard deviation/scale ``scale``."""
    return tuple(torch.as_tensor(v, dtype=torch.float64) for v in (x, mean, math.log(scale)))


def reference_log_mass(law, k: int, mean: float, scale: float) -> float:
    """log P(pixel k) from scipy's logcdf/logsf, in float64, stable in both tails."""
    x = GRID64[k]
    lo = (x - HALF_BIN - mean) / scale
    hi = (x + HALF_BIN - mean) / scale
    if k == 0:
        return float(law.logcdf(hi))
    if k == 255:
        return float(law.logsf(lo))
    if lo + hi > 0:  # upper tail: difference of survival functions
        big, small = law.logsf(lo), law.logsf(hi)
    else:
        big, small = law.logcdf(hi), law.logcdf(lo)
    return float(big + np.log1p(-np.exp(small - big)))


def reference_mixture_prob(x: float, logits, means, scales) -> float:
    """P(x) of a discretized logistic mixture from scipy.stats.logistic.cdf bin masses."""
    weights = special.softmax(np.asarray(logits, dtype=np.float64))
    lo = -np.inf if x < -1 + HALF_BIN else x - HALF_BIN
    hi = np.inf if x > 1 - HALF_BIN else x + HALF_BIN
    masses = [
        stats.logistic.cdf(hi, loc=m, scale=s) - stats.logistic.cdf(lo, loc=m, scale=s)
        for m, s in zip(means, scales, strict=True)
    ]
    return float(np.dot(weights, masses))


def single_pixel_mixture(
    logits, means, log_scales, batch: int = 1, dtype: torch.dtype = torch.float64
) -> DiscretizedLogisticMixture:
    """K components for one pixel, repeated over ``batch`` rows: tensors (batch, K, 1, 1, 1)."""

    def as_param(values) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype).reshape(1, -1, 1, 1, 1)
        return t.expand(batch, -1, 1, 1, 1)

    return DiscretizedLogisticMixture(as_param(logits), as_param(means), as_param(log_scales))


# --- Gaussian KL --------------------------------------------------------------------------


def test_normal_kl_matches_torch_distributions_with_broadcasting():
    g = torch.Generator().manual_seed(0)
    mean1 = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    logvar1 = torch.randn(1, 5, 1, generator=g, dtype=torch.float64)
    mean2 = torch.randn(5, 4, generator=g, dtype=torch.float64)
    logvar2 = torch.randn(4, generator=g, dtype=torch.float64)

    ours = normal_kl_nats(mean1, logvar1, mean2, logvar2)

    expected = kl_divergence(
        Normal(mean1, torch.exp(0.5 * logvar1)), Normal(mean2, torch.exp(0.5 * logvar2))
    )
    assert ours.shape == (3, 5, 4)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_standard_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean = 2 * torch.randn(6, 7, generator=g, dtype=torch.float64)
    logvar = 2 * torch.randn(6, 7, generator=g, dtype=torch.float64)

    expected = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(standard_normal_kl_nats(mean, logvar), expected)


def test_standard_normal_kl_is_exactly_zero_at_the_prior():
    zeros = torch.zeros(4, 3)
    kl = standard_normal_kl_nats(zeros, zeros)
    assert torch.equal(kl, torch.zeros(4, 3))


# --- Discretized Gaussian -----------------------------------------------------------------


@pytest.mark.parametrize("mean, scale", [(0.0, 0.3), (0.37, 0.05), (-0.8, 0.01), (1.3, 0.7)])
def test_discretized_gaussian_matches_scipy_cdf_bin_masses(mean, scale):
    ours = discretized_gaussian_log_likelihood_nats(*float64_args(GRID64, mean, scale))

    # Plain CDF differences (no log-space tricks): first bin from -inf, last bin to +inf.
    lower = np.concatenate([[-np.inf], GRID64[1:] - HALF_BIN])
    upper = np.concatenate([GRID64[:-1] + HALF_BIN, [np.inf]])
    masses = stats.norm.cdf(upper, mean, scale) - stats.norm.cdf(lower, mean, scale)
    visible = masses > 1e-200  # far-tail masses underflow in this naive reference
    np.testing.assert_allclose(ours.exp().numpy()[visible], masses[visible], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("k", [1, 60, 127, 128, 200, 254])
def test_discretized_gaussian_interior_bins_match_numerical_integration(k):
    mean, scale = 0.05, 0.2
    x = GRID64[k]
    mass, abserr = integrate.quad(
        stats.norm(mean, scale).pdf, x - HALF_BIN, x + HALF_BIN, epsabs=1e-14, epsrel=1e-12
    )
    assert abserr < 1e-12

    ours = discretized_gaussian_log_likelihood_nats(*float64_args(x, mean, scale))
    assert ours.exp().item() == pytest.approx(mass, rel=1e-9)


def test_discretized_gaussian_end_bins_extend_to_infinity():
    mean, scale = 0.6, 0.9
    ours = discretized_gaussian_log_likelihood_nats(*float64_args([-1.0, 1.0], mean, scale))
    expected = [
        stats.norm.cdf(-1 + HALF_BIN, mean, scale),
        stats.norm.sf(1 - HALF_BIN, mean, scale),
    ]
    np.testing.assert_allclose(ours.exp().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize(
    "k, mean, scale",
    [
        (0, 0.9, 0.001),  # x = -1, first bin ~1900 sd below the mean
        (191, 0.9, 0.001),  # x ~ 0.5, interior bin ~400 sd below the mean
        (255, -0.9, 0.001),  # x = +1, last bin far above the mean
        (64, -0.9, 0.001),  # interior bin in the upper tail
        (128, 0.9, 0.001),
        (255, 0.9, 0.001),  # last bin holding almost all the mass
        (10, 3.0, 0.05),  # mean outside [-1, 1]
    ],
)
def test_discretized_gaussian_is_finite_and_accurate_far_in_the_tails(k, mean, scale, dtype, rtol):
    ours = discretized_gaussian_log_likelihood_nats(
        (torch.arange(256, dtype=dtype) / 127.5 - 1.0)[k],
        torch.tensor(mean, dtype=dtype),
        torch.tensor(math.log(scale), dtype=dtype),
    )
    expected = reference_log_mass(stats.norm, k, mean, scale)
    assert torch.isfinite(ours)
    assert ours.item() == pytest.approx(expected, rel=rtol, abs=1e-6)


# --- Discretized logistic -----------------------------------------------------------------


@pytest.mark.parametrize("mean, scale", [(0.0, 0.1), (-0.42, 0.02), (0.99, 0.3), (-2.0, 0.5)])
def test_discretized_logistic_matches_scipy_logistic(mean, scale):
    ours = discretized_logistic_log_likelihood_nats(*float64_args(GRID64, mean, scale))

    lower = np.concatenate([[-np.inf], GRID64[1:] - HALF_BIN])
    upper = np.concatenate([GRID64[:-1] + HALF_BIN, [np.inf]])
    masses = stats.logistic.cdf(upper, mean, scale) - stats.logistic.cdf(lower, mean, scale)
    visible = masses > 1e-200
    np.testing.assert_allclose(ours.exp().numpy()[visible], masses[visible], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("k, mean, scale", [(0, 0.9, 0.001), (191, 0.9, 0.001), (255, -0.7, 0.002)])
def test_discretized_logistic_is_accurate_far_in_the_tails(k, mean, scale):
    ours = discretized_logistic_log_likelihood_nats(
        grid()[k], torch.tensor(mean), torch.tensor(math.log(scale))
    )
    expected = reference_log_mass(stats.logistic, k, mean, scale)
    assert torch.isfinite(ours)
    assert ours.item() == pytest.approx(expected, rel=1e-5)


# --- Normalisation over the 256 values ----------------------------------------------------

# Tiny scales need float64: in float32 the grid values k/127.5 - 1 carry rounding errors of
# ~3e-8, which is a visible fraction of a standard deviation of 1e-6.
NORMALISATION_CASES = [
    (0.0, 0.0, torch.float32),
    (0.3, -3.0, torch.float32),
    (-0.77, -5.0, torch.float32),
    (0.9, 2.0, torch.float32),  # wide: mass spread over both end bins
    (0.1, 10.0, torch.float32),  # huge scale: nearly all mass in the two end bins
    (2.5, -1.0, torch.float32),  # mean outside [-1, 1]
    (-4.0, 1.0, torch.float32),
    (0.0, -7.0, torch.float64),  # the VAE's log-scale floor, mean on a bin edge
    (0.31, -9.0, torch.float64),
    (-0.5, -13.0, torch.float64),  # scale ~2e-6: all mass in one bin
    (1.7, -13.0, torch.float64),
    (0.2, 15.0, torch.float64),
]


@pytest.mark.parametrize("law", sorted(DISCRETIZED_LAWS))
@pytest.mark.parametrize("mean, log_scale, dtype", NORMALISATION_CASES)
def test_discretized_law_probabilities_sum_to_one(law, mean, log_scale, dtype):
    log_likelihood, _ = DISCRETIZED_LAWS[law]
    log_probs = log_likelihood(
        grid(dtype), torch.tensor(mean, dtype=dtype), torch.tensor(log_scale, dtype=dtype)
    )
    assert torch.isfinite(log_probs).all()
    assert log_probs.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("mean, log_scale, dtype", NORMALISATION_CASES)
def test_logistic_mixture_probabilities_sum_to_one(mean, log_scale, dtype):
    mixture = single_pixel_mixture(
        [0.3, -1.0, 1.2], [mean, -0.2, 0.8], [log_scale] * 3, batch=256, dtype=dtype
    )

    log_probs = mixture.log_prob_nats(grid(dtype).reshape(256, 1, 1, 1))

    assert log_probs.shape == (256, 1, 1, 1)
    assert log_probs.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("law", sorted(DISCRETIZED_LAWS))
@pytest.mark.parametrize("log_scale", [-7.0, -9.0, -13.0, -20.0])
def test_float32_probabilities_sum_to_one_for_a_tiny_scale_centred_on_a_bin_edge(law, log_scale):
    log_likelihood, _ = DISCRETIZED_LAWS[law]
    log_probs = log_likelihood(grid(), torch.tensor(0.0), torch.tensor(log_scale))
    assert log_probs.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


# --- Gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("law", sorted(DISCRETIZED_LAWS))
@pytest.mark.parametrize(
    "mean, log_scale",
    [(0.9, math.log(0.001)), (-3.0, -7.0), (5.0, -7.0), (1.0, -7.0), (-1.0, 0.0), (0.0, 10.0)],
)
def test_discretized_log_likelihood_gradients_are_finite_at_edge_bins_and_tails(
    law, mean, log_scale
):
    log_likelihood, _ = DISCRETIZED_LAWS[law]
    # The two end bins, their neighbours, and interior bins far from the mean.
    x = grid()[[0, 1, 64, 191, 254, 255]]
    mean_t = torch.full_like(x, mean, requires_grad=True)
    log_scale_t = torch.full_like(x, log_scale, requires_grad=True)

    log_likelihood(x, mean_t, log_scale_t).sum().backward()

    assert torch.isfinite(mean_t.grad).all()
    assert torch.isfinite(log_scale_t.grad).all()


def test_logistic_mixture_gradients_are_finite_at_edge_bins_and_tails():
    x = grid()[[0, 1, 128, 254, 255]].reshape(5, 1, 1, 1)
    logits = torch.tensor([0.0, 2.0]).reshape(1, 2, 1, 1, 1).repeat(5, 1, 1, 1, 1)
    means = torch.tensor([0.9, -4.0]).reshape(1, 2, 1, 1, 1).repeat(5, 1, 1, 1, 1)
    log_scales = torch.full((5, 2, 1, 1, 1), -7.0)
    for t in (logits, means, log_scales):
        t.requires_grad_(True)

    DiscretizedLogisticMixture(logits, means, log_scales).log_prob_nats(x).sum().backward()

    for t in (logits, means, log_scales):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("law", sorted(DISCRETIZED_LAWS))
def test_discretized_log_likelihood_gradients_match_finite_differences(law):
    log_likelihood, _ = DISCRETIZED_LAWS[law]
    x = torch.tensor(GRID64[[0, 3, 100, 128, 252, 255]])
    mean = torch.tensor([-0.9, -0.95, 0.2, 0.0, 1.2, 0.8], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([-2.0, -3.0, -1.0, -4.0, -2.5, 0.5], dtype=torch.float64)
    log_scale.requires_grad_(True)

    assert torch.autograd.gradcheck(lambda m, s: log_likelihood(x, m, s), (mean, log_scale))


def test_discretized_gaussian_gradient_is_finite_for_an_extremely_narrow_far_component():
    mean = torch.tensor(5.0, requires_grad=True)
    log_scale = torch.tensor(-13.0, requires_grad=True)

    value = discretized_gaussian_log_likelihood_nats(torch.tensor(1.0), mean, log_scale)
    value.backward()

    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(mean.grad) and torch.isfinite(log_scale.grad)


# --- Mixture of discretized logistics -----------------------------------------------------


def test_logistic_mixture_equals_weighted_scipy_mixture():
    g = torch.Generator().manual_seed(3)
    shape = (2, 3, 1, 2, 2)  # (B, K, C, H, W)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    means = torch.rand(shape, generator=g, dtype=torch.float64) * 2.4 - 1.2
    log_scales = torch.rand(shape, generator=g, dtype=torch.float64) * 3.0 - 4.0
    pixels = torch.tensor([[0, 17, 128, 255], [255, 90, 1, 0]]).reshape(2, 1, 2, 2)
    x = pixels.to(torch.float64) / 127.5 - 1.0

    ours = DiscretizedLogisticMixture(logits, means, log_scales).log_prob_nats(x)

    assert ours.shape == (2, 1, 2, 2)
    for b, h, w in np.ndindex(2, 2, 2):
        expected = reference_mixture_prob(
            float(x[b, 0, h, w]),
            logits[b, :, 0, h, w].numpy(),
            means[b, :, 0, h, w].numpy(),
            np.exp(log_scales[b, :, 0, h, w].numpy()),
        )
        assert math.exp(ours[b, 0, h, w].item()) == pytest.approx(expected, rel=1e-9)


def test_logistic_mixture_with_one_component_is_the_discretized_logistic():
    x = grid().reshape(1, 1, 16, 16)
    means = torch.full((1, 1, 1, 16, 16), 0.3)
    log_scales = torch.full((1, 1, 1, 16, 16), -2.0)
    mixture = DiscretizedLogisticMixture(torch.randn(1, 1, 1, 16, 16), means, log_scales)

    expected = [reference_log_mass(stats.logistic, k, 0.3, math.exp(-2.0)) for k in range(256)]
    np.testing.assert_allclose(mixture.log_prob_nats(x).flatten().numpy(), expected, rtol=1e-5)


MIXTURE_LOGITS = [0.0, 1.0, -0.5]
MIXTURE_MEANS = [-0.5, 0.1, 0.95]
MIXTURE_LOG_SCALES = [-2.5, -3.5, -2.0]


def test_mixture_samples_lie_on_the_8_bit_grid():
    mixture = single_pixel_mixture(MIXTURE_LOGITS, MIXTURE_MEANS, MIXTURE_LOG_SCALES, batch=5000)
    x = mixture.sample(seeded_generator(0))

    assert x.shape == (5000, 1, 1, 1)
    assert x.min() >= -1.0 and x.max() <= 1.0
    k = torch.round((x.double() + 1.0) * 127.5)
    torch.testing.assert_close(x.double(), k / 127.5 - 1.0, rtol=0, atol=1e-6)


def test_mixture_sample_is_reproducible_from_its_seed():
    mixture = single_pixel_mixture(MIXTURE_LOGITS, MIXTURE_MEANS, MIXTURE_LOG_SCALES, batch=500)

    first = mixture.sample(seeded_generator(42))
    again = mixture.sample(seeded_generator(42))
    other = mixture.sample(seeded_generator(43))

    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_mixture_sample_histogram_matches_its_probabilities():
    n = 200_000
    mixture = single_pixel_mixture(MIXTURE_LOGITS, MIXTURE_MEANS, MIXTURE_LOG_SCALES, batch=n)
    x = mixture.sample(seeded_generator(7))
    pixels = torch.round((x.double() + 1.0) * 127.5).long().flatten()
    observed = np.bincount(pixels.numpy(), minlength=256)

    scales = np.exp(MIXTURE_LOG_SCALES)
    probs = np.array(
        [reference_mixture_prob(x, MIXTURE_LOGITS, MIXTURE_MEANS, scales) for x in GRID64]
    )
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)

    total_variation = 0.5 * np.abs(observed / n - probs).sum()
    assert total_variation < 0.02
    # Chi-square over the 256 bins (every one expects at least 5 draws here).
    expected = probs * n
    assert expected.min() >= 5
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_mixture_mean_image_is_the_clipped_weighted_mean():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]]).reshape(3, 2, 1, 1, 1)
    means = torch.tensor([[0.2, -0.6], [3.0, 4.0], [-5.0, -1.5]]).reshape(3, 2, 1, 1, 1)
    mixture = DiscretizedLogisticMixture(logits, means, torch.zeros(3, 2, 1, 1, 1))

    mean_image = mixture.mean_image()

    weights = special.softmax(logits.squeeze().numpy(), axis=1)
    expected = np.clip((weights * means.squeeze().numpy()).sum(axis=1), -1.0, 1.0)
    assert mean_image.shape == (3, 1, 1, 1)
    assert mean_image.min() >= -1.0 and mean_image.max() <= 1.0
    np.testing.assert_allclose(mean_image.flatten().numpy(), expected, rtol=1e-6)
    assert expected[1] == 1.0 and expected[2] == -1.0  # both clips exercised


# --- Units, log-mean-exp, quantisation ----------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_over_256_values_is_exactly_8_bits_per_dim(dtype):
    nats = torch.tensor(784 * math.log(256), dtype=dtype)
    assert nats_to_bits_per_dim(nats, 784).item() == 8.0


def test_bits_per_dim_of_summed_uniform_log_probs_is_8():
    per_pixel = torch.full((3, 784), math.log(256.0), dtype=torch.float64)
    bits = nats_to_bits_per_dim(per_pixel.sum(dim=1), 784)
    torch.testing.assert_close(bits, torch.full((3,), 8.0, dtype=torch.float64))


def test_log_mean_exp_over_unequal_chunks_matches_logsumexp_of_all():
    g = torch.Generator().manual_seed(5)
    chunks = [torch.randn(n, 4, generator=g, dtype=torch.float64) * 30 for n in (3, 1, 7, 2)]
    everything = torch.cat(chunks)

    ours = log_mean_exp_over_chunks(iter(chunks))

    expected = torch.logsumexp(everything, dim=0) - math.log(13)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_log_mean_exp_over_chunks_is_stable_for_large_log_weights():
    chunks = [torch.tensor([[-1000.0, 1000.0]]), torch.tensor([[-1001.0, 1002.0], [-999.0, 0.0]])]
    ours = log_mean_exp_over_chunks(chunks)

    values = torch.cat(chunks).double().numpy()
    expected = special.logsumexp(values, axis=0) - math.log(3)
    assert torch.isfinite(ours).all()
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)


def test_log_mean_exp_over_no_chunks_raises():
    with pytest.raises(ValueError, match="no log-weights"):
        log_mean_exp_over_chunks([])


def test_quantize_to_grid_maps_every_grid_value_to_itself():
    values = grid()
    assert torch.equal(quantize_to_grid(values), values)


def test_quantize_to_grid_returns_the_nearest_grid_value_clipping_outside():
    g = torch.Generator().manual_seed(9)
    x = torch.rand(10_000, generator=g, dtype=torch.float64) * 3.0 - 1.5

    q = quantize_to_grid(x.float()).double()

    k = (q + 1.0) * 127.5
    torch.testing.assert_close(k, torch.round(k), rtol=0, atol=1e-4)
    assert k.min() >= 0 and k.max() <= 255
    # Nearest: no grid value is closer than half a spacing (1/255) except at exact ties.
    distance = (q - x.clamp(-1.0, 1.0)).abs()
    assert distance.max() <= HALF_BIN + 1e-6
    assert (q[x > 1] == 1.0).all() and (q[x < -1] == -1.0).all()
