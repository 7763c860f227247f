"""Fréchet distance between Gaussians fitted to feature sets (Heusel et al. 2017, Eq. 6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean (F,) and covariance (F, F) of a set of feature vectors, in float64."""

    mean: torch.Tensor
    covariance: torch.Tensor
    count: int

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStatistics:
        """features: (N, F) with N >= 2."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need (N >= 2, F) features, got {tuple(features.shape)}")
        x = features.double()
        return cls(x.mean(dim=0), torch.cov(x.T), x.shape[0])


@dataclass(frozen=True)
class FeatureSums:
    """Sufficient statistics of a set of feature vectors in float64: the count n, the sum
    (F,) and the sum of outer products (F, F). Sets add up, so features drawn in chunks (and
    in several sessions) give the same statistics as all of them at once."""

    count: int
    total: torch.Tensor  # (F,) sum_i f_i
    outer: torch.Tensor  # (F, F) sum_i f_i f_i^T

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureSums:
        """features: (N, F)."""
        if features.ndim != 2:
            raise ValueError(f"need (N, F) features, got {tuple(features.shape)}")
        x = features.double()
        return cls(x.shape[0], x.sum(dim=0), x.T @ x)

    def __add__(self, other: FeatureSums) -> FeatureSums:
        return FeatureSums(
            self.count + other.count, self.total + other.total, self.outer + other.outer
        )

    def statistics(self) -> FeatureStatistics:
        """Mean and unbiased covariance (S - n mu mu^T) / (n - 1), as torch.cov gives them."""
        if self.count < 2:
            raise ValueError(f"need N >= 2 features, got {self.count}")
        mean = self.total / self.count
        covariance = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return FeatureStatistics(mean, (covariance + covariance.T) / 2, self.count)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^{1/2}).

    Tr((C_a C_b)^{1/2}) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix C_a^{1/2} C_b C_a^{1/2}, which has the same spectrum as C_a C_b.
    """
    root_a = _psd_sqrt(a.covariance)
    middle = root_a @ b.covariance @ root_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    mean_term = (a.mean - b.mean).pow(2).sum()
    trace_term = a.covariance.trace() + b.covariance.trace() - 2 * trace_sqrt
    return float(mean_term + trace_term)
