import numpy as np
import pytest
import torch
from scipy import linalg

from models.eval.frechet import FeatureStatistics, FeatureSums, frechet_distance


def test_one_dimensional_gaussians_have_the_closed_form_distance():
    a = FeatureStatistics(torch.tensor([1.0]).double(), torch.tensor([[4.0]]).double(), 10)
    b = FeatureStatistics(torch.tensor([3.0]).double(), torch.tensor([[9.0]]).double(), 10)
    # (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    assert frechet_distance(a, b) == pytest.approx(4.0 + 1.0)


def test_matches_scipy_sqrtm_on_random_covariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8))
    y = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8)) + 0.5
    a, b = FeatureStatistics.of(torch.tensor(x)), FeatureStatistics.of(torch.tensor(y))
    ca, cb = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(
        ca + cb - 2 * linalg.sqrtm(ca @ cb).real
    )
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_distance_of_a_set_to_itself_is_zero_and_symmetric():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
    y = torch.randn(300, 5, generator=torch.Generator().manual_seed(2)) * 2
    a, b = FeatureStatistics.of(x), FeatureStatistics.of(y)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_feature_statistics_need_two_rows():
    with pytest.raises(ValueError, match="N >= 2"):
        FeatureStatistics.of(torch.zeros(1, 4))


def test_summed_chunk_statistics_give_the_distance_of_all_features_at_once():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 6)) @ rng.normal(size=(6, 6)) + 4.0  # off-centre, correlated
    y = rng.normal(size=(500, 6)) * 1.5 - 1.0
    parts = [torch.tensor(part) for part in np.split(x, [1, 250, 251, 600])]  # uneven, a 1-row
    sums = FeatureSums.of(parts[0])
    for part in parts[1:]:
        sums = sums + FeatureSums.of(part)
    stats = sums.statistics()
    assert stats.count == 700
    np.testing.assert_allclose(stats.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance.numpy(), np.cov(x, rowvar=False), rtol=1e-10)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(
        cx + cy - 2 * linalg.sqrtm(cx @ cy).real
    )
    reference = FeatureStatistics.of(torch.tensor(y))
    assert frechet_distance(stats, reference) == pytest.approx(expected, rel=1e-8)


def test_feature_sums_need_two_rows_for_a_covariance():
    with pytest.raises(ValueError, match="N >= 2"):
        FeatureSums.of(torch.zeros(1, 4)).statistics()
