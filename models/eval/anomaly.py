"""Anomaly scores from likelihood bounds: detection metrics and calibrated thresholds.

Convention: a higher score is more anomalous (a bound in bits/dim is a codelength, so an input
the model finds unlikely costs more bits). Scores are 1-D tensors or arrays of floats.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def _as_numpy(scores: torch.Tensor | np.ndarray | Iterable[float]) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    array = np.asarray(scores, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("need at least one score")
    if not np.all(np.isfinite(array)):
        raise ValueError("scores must be finite")
    return array


def auroc(normal_scores, anomalous_scores) -> float:
    """Area under the ROC curve: P(anomalous score > normal score) + P(tie) / 2.

    The Mann-Whitney U statistic divided by n_normal * n_anomalous, with average ranks for ties.
    """
    normal, anomalous = _as_numpy(normal_scores), _as_numpy(anomalous_scores)
    combined = np.concatenate([normal, anomalous])
    order = combined.argsort(kind="mergesort")
    ranks = np.empty_like(combined)
    sorted_scores = combined[order]
    # Average rank (1-based) over each run of tied scores.
    _, first_index, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_ranks = first_index + (counts + 1) / 2.0
    ranks[order] = np.repeat(average_ranks, counts)
    rank_sum = ranks[len(normal) :].sum()
    n_a, n_n = len(anomalous), len(normal)
    return float((rank_sum - n_a * (n_a + 1) / 2.0) / (n_a * n_n))


def fpr_at_tpr(normal_scores, anomalous_scores, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold that flags at least ``tpr`` of anomalies.

    An input is flagged when its score is >= the threshold.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    normal, anomalous = _as_numpy(normal_scores), _as_numpy(anomalous_scores)
    descending = np.sort(anomalous)[::-1]
    needed = int(np.ceil(tpr * len(descending)))
    threshold = descending[needed - 1]
    return float(np.mean(normal >= threshold))


def calibrated_threshold(normal_scores, fpr: float) -> float:
    """The score above which only a fraction ``fpr`` of held-out normal inputs lie.

    The (1 - fpr) empirical quantile (numpy's "higher" method, so the realised false-positive
    rate on these scores never exceeds ``fpr`` with the strict test score > threshold).
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    return float(np.quantile(_as_numpy(normal_scores), 1.0 - fpr, method="higher"))


def percentile_among(scores, normal_scores) -> np.ndarray:
    """Percentage (0..100) of held-out normal scores strictly below each score."""
    reference = np.sort(_as_numpy(normal_scores))
    return 100.0 * np.searchsorted(reference, _as_numpy(scores), side="left") / len(reference)


def png_bits_per_dim(images: torch.Tensor) -> torch.Tensor:
    """Per image, the size of its optimised 8-bit PNG (grayscale 'L' or 'RGB') in bits per
    dimension, D = C*H*W: (B,).

    ``images`` are uint8 (B, C, H, W) with C = 1 or 3. A generic lossless compressor's
    codelength measures input complexity (Serra et al. 2019, Sec. 3).
    """
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"need uint8 images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    sizes = []
    for image in images.cpu().numpy():
        channels = image.shape[0]
        pixels = image[0] if channels == 1 else image.transpose(1, 2, 0)  # (H, W[, 3])
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L" if channels == 1 else "RGB").save(
            buffer, format="PNG", optimize=True
        )
        sizes.append(8.0 * buffer.tell() / image.size)
    return torch.tensor(sizes, dtype=torch.float64)


def complexity_corrected_score(
    bits_per_dim: torch.Tensor, compressor_bits_per_dim: torch.Tensor
) -> torch.Tensor:
    """S(x) = L_model(x) - L_compressor(x) (Serra et al. 2019, Eq. 2), both in bits/dim: (B,).

    Raw likelihood favours simple inputs; subtracting a generic compressor's codelength leaves
    how much better the model explains x than a model of images in general would.
    """
    return bits_per_dim.double() - compressor_bits_per_dim.double()


@dataclass(frozen=True)
class Calibration:
    """Scores of held-out normal inputs for one anomaly score, as kept in a model card.

    Thresholds for any false-positive rate and percentiles of new scores both come from these
    scores, so the service and the evaluation agree by construction.
    """

    normal_scores: np.ndarray  # (N,) sorted ascending
    source: str

    @classmethod
    def of(cls, normal_scores, source: str) -> Calibration:
        return cls(np.sort(_as_numpy(normal_scores)), source)

    @property
    def mean(self) -> float:
        """The mean held-out normal score: where served scores of normal inputs centre."""
        return float(self.normal_scores.mean())

    @property
    def std(self) -> float:
        """The sample standard deviation (N - 1) of the held-out normal scores; NaN for one."""
        if len(self.normal_scores) < 2:
            return float("nan")
        return float(self.normal_scores.std(ddof=1))

    @property
    def min_fpr(self) -> float:
        """Below 1/N the (1 - fpr) quantile is just the largest held-out score."""
        return 1.0 / len(self.normal_scores)

    def threshold(self, fpr: float) -> float:
        if not self.min_fpr <= fpr < 1.0:
            raise ValueError(
                f"fpr must be in [{self.min_fpr:g}, 1) for a calibration set of "
                f"{len(self.normal_scores)} normal inputs, got {fpr}"
            )
        return calibrated_threshold(self.normal_scores, fpr)

    def percentile(self, scores) -> np.ndarray:
        return percentile_among(scores, self.normal_scores)

    def to_dict(self, reported_fprs: Sequence[float] = (0.01, 0.05)) -> dict[str, Any]:
        thresholds = {str(fpr): self.threshold(fpr) for fpr in reported_fprs}
        return {
            "source": self.source,
            "num_images": len(self.normal_scores),
            "thresholds": thresholds,
            "normal_scores": [round(float(s), 6) for s in self.normal_scores],
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibration:
        return cls.of(payload["normal_scores"], payload["source"])
