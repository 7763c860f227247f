"""Fashion-MNIST feature classifier (models/nn/classifier.py, models/training/classifier.py)."""

from __future__ import annotations

import json

import pytest
import torch

from models.core.checkpoints import CONFIG_FILE, load_checkpoint, save_checkpoint
from models.core.config import ClassifierConfig, ClassifierTrainConfig, ConfigError
from models.core.pixels import pixels_to_signed_unit
from models.data import load_fashion_mnist
from models.nn.classifier import FashionClassifier
from models.training.classifier import (
    accuracy,
    build_classifier,
    extract_features,
    train_classifier,
)

TINY = ClassifierConfig(channels=(8, 16), norm_groups=4, feature_dim=16)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def _labels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fashion_mnist() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    try:
        return {"train": load_fashion_mnist("train"), "test": load_fashion_mnist("test")}
    except FileNotFoundError as error:
        pytest.skip(f"Fashion-MNIST is not installed: {error}")


def test_logits_and_features_have_the_documented_shapes():
    model = build_classifier(ClassifierConfig(), seed=0).eval()
    x = pixels_to_signed_unit(_images(3))
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, 128)


def test_default_classifier_weights_stay_under_two_megabytes():
    model = FashionClassifier(ClassifierConfig())
    assert sum(p.numel() * p.element_size() for p in model.parameters()) < 2_000_000


def test_logits_are_the_last_linear_layer_applied_to_the_features():
    model = build_classifier(TINY, seed=0).eval()
    x = pixels_to_signed_unit(_images(4))
    features = model.features(x)
    assert (features >= 0).all()  # post-ReLU
    torch.testing.assert_close(model(x), model.head(features), rtol=0, atol=0)
    assert model.head.in_features == TINY.feature_dim


def test_classifier_rejects_wrong_image_shape_and_uint8_pixels():
    model = FashionClassifier(TINY)
    with pytest.raises(ValueError, match="expected images"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(TypeError, match="pixels_to_signed_unit"):
        model(_images(2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": ()},
        {"channels": (8, 12), "norm_groups": 8},
        {"feature_dim": 0},
        {"num_classes": 1},
        {"image_size": 30},  # not divisible by 2**2
    ],
)
def test_classifier_config_rejects_invalid_values(kwargs):
    with pytest.raises(ConfigError):
        ClassifierConfig(**kwargs)


def test_extract_features_batches_to_the_same_numbers_in_eval_mode_without_grad():
    model = build_classifier(TINY, seed=0).train()
    images = _images(7)
    features = extract_features(model, images, batch_size=3)
    assert features.shape == (7, TINY.feature_dim) and features.dtype == torch.float32
    assert not features.requires_grad
    assert model.training  # the caller's mode is restored
    with torch.no_grad():
        expected = model.eval().features(pixels_to_signed_unit(images))
    torch.testing.assert_close(features, expected)
    with pytest.raises(TypeError, match="uint8"):
        extract_features(model, pixels_to_signed_unit(images))


def test_classifier_checkpoint_round_trip_rebuilds_the_same_function(tmp_path):
    model = build_classifier(TINY, seed=3).eval()
    card = {"test_accuracy": 0.5, "test_images": 10}
    save_checkpoint(tmp_path / "classifier", model, card=card)
    header = json.loads((tmp_path / "classifier" / CONFIG_FILE).read_text())
    assert header["kind"] == "classifier"

    loaded = load_checkpoint(tmp_path / "classifier")
    assert loaded.kind == "classifier" and isinstance(loaded.model, FashionClassifier)
    assert loaded.model.config == TINY and loaded.card == card
    images = _images(5)
    torch.testing.assert_close(
        extract_features(loaded.model, images), extract_features(model, images), rtol=0, atol=0
    )


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    images, labels = _images(40), _labels(40)

    def run(seed: int) -> dict[str, torch.Tensor]:
        config = ClassifierTrainConfig(epochs=2, batch_size=16, seed=seed)
        model = build_classifier(TINY, seed)
        return train_classifier(model, images, labels, config, progress=False).state_dict()

    first, second, other = run(0), run(0), run(1)
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
    assert not all(torch.equal(tensor, other[name]) for name, tensor in first.items())


def test_build_classifier_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    build_classifier(TINY, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.slow
def test_one_epoch_on_2000_images_beats_chance_clearly(fashion_mnist):
    train_images, train_labels = fashion_mnist["train"]
    test_images, test_labels = fashion_mnist["test"]
    model = build_classifier(ClassifierConfig(), seed=0)
    config = ClassifierTrainConfig(epochs=1, batch_size=32, seed=0)
    train_classifier(model, train_images[:2000], train_labels[:2000], config, progress=False)
    assert accuracy(model, test_images[:1000], test_labels[:1000]) > 0.6  # chance: 0.1
