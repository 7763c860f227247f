"""The example plug-in's decoder likelihood (examples/categorical_vae), checked against scipy:
a proper distribution on the 8-bit grid whose log-probabilities, mean and draws are those of a
256-way categorical per pixel; and the kind found by its entry point, saved and loaded."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from kind_plugins import EXAMPLE, EXAMPLE_KIND, kinds_on_path, write_distribution

from models.core.likelihood import nats_to_bits_per_dim
from models.core.noise import seeded_generator
from models.core.pixels import pixels_to_signed_unit

stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")


@pytest.fixture(scope="module")
def example():
    """The example's kind module, imported from its source (its tests need no install)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from categorical_vae import kind

        yield kind
    finally:
        sys.path.remove(str(EXAMPLE))


def _logits(shape, seed=0) -> torch.Tensor:
    return 3.0 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_log_prob_is_the_categorical_log_pmf(example):
    logits = _logits((2, 256, 1, 3, 3)).double()
    values = torch.randint(0, 256, (2, 1, 3, 3), generator=torch.Generator().manual_seed(1))
    values[0, 0, 0, :2] = torch.tensor([0, 255])  # both edges of the grid
    got = example.PixelCategorical(logits).log_prob_nats(pixels_to_signed_unit(values))
    probs = special.softmax(logits.numpy(), axis=1)
    for b, c, h, w in np.ndindex(*values.shape):
        onehot = np.eye(256)[values[b, c, h, w].item()]
        expected = stats.multinomial.logpmf(onehot, 1, probs[b, :, c, h, w])
        assert got[b, c, h, w].item() == pytest.approx(expected, abs=1e-9)


def test_the_probabilities_of_the_256_values_sum_to_one(example):
    logits = _logits((1, 256, 1, 2, 2)).double().expand(256, -1, -1, -1, -1)
    every_value = pixels_to_signed_unit(torch.arange(256).reshape(256, 1, 1, 1).expand(-1, 1, 2, 2))
    log_probs = example.PixelCategorical(logits).log_prob_nats(every_value)  # (256, 1, 2, 2)
    assert torch.logsumexp(log_probs, dim=0).abs().max().item() < 1e-12


def test_uniform_logits_cost_exactly_eight_bits_per_dim(example):
    x = pixels_to_signed_unit(torch.randint(0, 256, (3, 1, 4, 4)))
    nats = -example.PixelCategorical(torch.zeros(3, 256, 1, 4, 4)).log_prob_nats(x).sum((1, 2, 3))
    assert torch.allclose(nats_to_bits_per_dim(nats, 16), torch.full((3,), 8.0))
    assert example.uniform_bits_per_dim() == 8.0


def test_the_mean_image_is_the_expected_pixel_value(example):
    logits = _logits((1, 256, 1, 1, 1), seed=2).double()
    p = special.softmax(logits.numpy().ravel())
    expected = float(np.dot(p, np.arange(256) / 127.5 - 1.0))
    mean = example.PixelCategorical(logits).mean_image().item()
    assert mean == pytest.approx(expected, abs=1e-6)


def test_draws_follow_the_categorical(example):
    """A chi-square goodness-of-fit test of 20,000 Gumbel-max draws of one pixel over the
    values of probability >= 1% (the rest pooled)."""
    logits = torch.log(torch.tensor(special.softmax(np.linspace(0, 4, 256) ** 2 / 3)))
    draws = example.PixelCategorical(
        logits.float().reshape(1, 256, 1, 1, 1).expand(20_000, -1, -1, -1, -1)
    )
    values = (draws.sample(seeded_generator(5)).flatten() * 127.5 + 127.5).round().long()
    counts = np.bincount(values.numpy(), minlength=256)
    p = logits.exp().numpy()
    kept = p >= 0.01
    observed = np.append(counts[kept], counts[~kept].sum())
    expected = 20_000 * np.append(p[kept], p[~kept].sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_the_kind_is_found_by_its_entry_point_and_saved_and_loaded(example, tmp_path):
    from models.core.checkpoints import load_checkpoint, save_checkpoint
    from models.kinds import architecture_of, kind_of

    declared = {EXAMPLE_KIND: "categorical_vae.kind:CategoricalVAEKind"}
    site = write_distribution(tmp_path / "site", "elbo-serve-categorical-vae", declared)
    with kinds_on_path(site):
        model = example.CategoricalVAE(example.CategoricalVAEConfig(1, 8, 2, (4,), 0))
        # the nearest network class decides: a CategoricalVAE is a VAE, but not of kind "vae"
        assert architecture_of(model).name == EXAMPLE_KIND
        loaded = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model))
        assert loaded.kind == EXAMPLE_KIND and isinstance(loaded.model, example.CategoricalVAE)
        x = pixels_to_signed_unit(torch.randint(0, 256, (2, 1, 8, 8)))
        bound = kind_of(EXAMPLE_KIND).method_for(loaded.model, "elbo")
        from models.core.progressive import run_to_end

        terms = run_to_end(bound.run(loaded.model, x, None, seeded_generator(0), 64))
        assert torch.isfinite(terms["total_bits_per_dim"]).all()
        assert math.isclose(loaded.model.num_dims, 64)
