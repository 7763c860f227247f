import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from models.eval.anomaly import (
    Calibration,
    auroc,
    calibrated_threshold,
    complexity_corrected_score,
    fpr_at_tpr,
    percentile_among,
    png_bits_per_dim,
)


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    normal = np.round(rng.normal(3.0, 0.5, 500), 2)  # rounding creates ties
    anomalous = np.round(rng.normal(4.0, 0.7, 300), 2)
    return normal, anomalous


def test_auroc_matches_sklearn_including_ties(scores):
    normal, anomalous = scores
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    expected = roc_auc_score(labels, np.r_[normal, anomalous])
    assert auroc(normal, anomalous) == pytest.approx(expected, abs=1e-12)
    assert auroc(torch.tensor(normal), torch.tensor(anomalous)) == pytest.approx(expected)


def test_auroc_extremes():
    assert auroc([1, 2, 3], [4, 5]) == 1.0
    assert auroc([4, 5], [1, 2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5


def test_fpr_at_95_tpr_matches_the_roc_curve(scores):
    normal, anomalous = scores
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    fpr, tpr, _ = roc_curve(labels, np.r_[normal, anomalous], drop_intermediate=False)
    expected = fpr[np.searchsorted(tpr, 0.95, side="left")]
    assert fpr_at_tpr(normal, anomalous, 0.95) == pytest.approx(expected)


def test_calibrated_threshold_keeps_the_false_positive_rate_at_most_the_target(scores):
    normal, _ = scores
    for target in (0.01, 0.05, 0.2):
        threshold = calibrated_threshold(normal, target)
        realised = np.mean(normal > threshold)
        assert realised <= target
        assert np.mean(normal >= threshold) >= target  # and it is the tightest such quantile


def test_percentile_among_normal_scores():
    normal = np.arange(100, dtype=float)
    assert percentile_among([-1.0, 0.0, 50.0, 1000.0], normal).tolist() == [0.0, 0.0, 50.0, 100.0]


def test_bad_scores_are_rejected_with_a_message():
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        calibrated_threshold([1.0, float("nan")], 0.05)
    with pytest.raises(ValueError, match="fpr"):
        calibrated_threshold([1.0, 2.0], 1.5)


def test_png_codelength_orders_images_by_complexity():
    blank = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    noise = torch.randint(
        0, 256, (1, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    bits = png_bits_per_dim(torch.cat([blank, noise]))
    assert bits[0] < 1.0 < 8.0 < bits[1]
    corrected = complexity_corrected_score(torch.tensor([3.0, 8.5]), bits)
    assert torch.allclose(corrected, torch.tensor([3.0, 8.5], dtype=torch.float64) - bits)


def test_calibration_thresholds_and_percentiles_survive_the_model_card_round_trip(scores):
    normal, _ = scores
    calibration = Calibration.of(normal, "test scores")
    restored = Calibration.from_dict(calibration.to_dict())
    for fpr in (0.01, 0.05):
        expected = np.quantile(normal, 1 - fpr, method="higher")
        assert restored.threshold(fpr) == pytest.approx(expected, abs=1e-6)
        assert restored.to_dict()["thresholds"][str(fpr)] == pytest.approx(expected, abs=1e-6)
    assert restored.percentile([normal.min() - 1, normal.max() + 1]).tolist() == [0.0, 100.0]


def test_calibration_refuses_a_false_positive_rate_it_cannot_resolve():
    calibration = Calibration.of(np.arange(100.0), "hundred scores")
    assert calibration.min_fpr == 0.01
    calibration.threshold(0.01)
    with pytest.raises(ValueError, match="100 normal inputs"):
        calibration.threshold(0.001)


def test_calibration_mean_and_std_are_those_of_its_normal_scores(scores):
    import statistics

    normal, _ = scores
    calibration = Calibration.of(normal, "test scores")
    assert calibration.mean == pytest.approx(statistics.fmean(normal.tolist()), abs=1e-12)
    assert calibration.std == pytest.approx(statistics.stdev(normal.tolist()), abs=1e-12)
    assert np.isnan(Calibration.of([3.0], "one score").std)


def test_png_bits_per_dim_of_rgb_images_is_their_rgb_png_size_over_c_h_w():
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8))
    images[1] = 7  # a flat image compresses far better
    expected = []
    for image in images.numpy():
        buffer = io.BytesIO()
        Image.fromarray(image.transpose(1, 2, 0), mode="RGB").save(buffer, "PNG", optimize=True)
        expected.append(8.0 * buffer.tell() / (3 * 16 * 16))
    assert png_bits_per_dim(images).tolist() == pytest.approx(expected)
    # Random bytes do not compress: over 8 bits/dim (filters and framing, 768 bytes); flat: far
    # less.
    assert 8.0 < expected[0] < 9.5 and expected[1] < 1.0
