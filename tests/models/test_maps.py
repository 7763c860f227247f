"""Anomaly maps: each kind's bound per dimension sums to its bound, the per-pixel calibration
normalises and round-trips through the card, the heat map is RGB, and the synthetic defects'
masks are exactly the pixels they changed."""

from __future__ import annotations

import json

import pytest
import torch

from models.core.card import MethodPixelCalibration, ModelCard, pixel_calibrations_in
from models.core.noise import seeded_generator
from models.core.progressive import run_to_end
from models.eval.defects import DEFECT_KINDS, pixel_auroc, synthetic_defects
from models.eval.maps import (
    PixelCalibration,
    fit_pixel_calibration,
    heatmap_overlay,
    measure_pixel_calibration,
)
from models.kinds import OptionError, kind_of


def _tiny(name: str, tiny_vae_config, tiny_ddpm_config, channels: int = 3, size: int = 16):
    torch.manual_seed(0)
    kind = kind_of(name)
    config = tiny_vae_config if name == "vae" else tiny_ddpm_config
    return kind, kind.build(config(channels=channels, size=size)).eval()


def _images(n: int, channels: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("name", "method", "k"),
    [("vae", "elbo", None), ("ddpm", "vlb_mc", 6), ("ddpm", "vlb_exact", None)],
)
def test_pixel_nats_of_rgb_images_sum_to_the_bound_of_the_same_draws(
    name, method, k, tiny_vae_config, tiny_ddpm_config
):
    kind, model = _tiny(name, tiny_vae_config, tiny_ddpm_config)
    x = _images(3).float() / 127.5 - 1.0
    with torch.no_grad():
        bound = run_to_end(kind.method_for(model, method).run(model, x, k, seeded_generator(4), 8))
        maps = run_to_end(kind.pixel_nats(model, x, seeded_generator(4), 8, method, k))
    assert maps.shape == (3, 3, 16, 16)
    assert torch.isfinite(maps).all()
    assert torch.allclose(maps.flatten(1).sum(dim=1), bound["total_nats"].double(), rtol=1e-6)


def test_a_bound_without_a_per_pixel_form_refuses_maps(tiny_vae_config, tiny_ddpm_config):
    kind, model = _tiny("vae", tiny_vae_config, tiny_ddpm_config)
    with pytest.raises(OptionError, match="iwae has no per-pixel form.*'elbo'"):
        run_to_end(
            kind.pixel_nats(model, torch.zeros(1, 3, 16, 16), seeded_generator(0), 8, "iwae", 4)
        )


def test_vae_map_is_the_pixels_reconstruction_nll_plus_an_even_share_of_the_kl(
    tiny_vae_config, tiny_ddpm_config
):
    kind, model = _tiny("vae", tiny_vae_config, tiny_ddpm_config, channels=1)
    x = _images(2, channels=1).float() / 127.5 - 1.0
    with torch.no_grad():
        elbo = model.negative_elbo(x, seeded_generator(2), per_dim=True)
        z = model.encode(x).rsample(seeded_generator(2))[0]
        nll = -model.decode(z).log_prob_nats(x).double()
    kl_share = (elbo.kl_nats.double() / model.num_dims).reshape(-1, 1, 1, 1)
    assert torch.allclose(elbo.total_nats_per_dim, nll + kl_share, atol=1e-5)


def test_calibration_normalises_per_pixel_and_round_trips_through_the_card():
    generator = torch.Generator().manual_seed(0)
    mean = torch.rand(3, 4, 5, generator=generator) * 5
    spread = torch.rand(3, 4, 5, generator=generator) + 0.5
    maps = mean + spread * torch.randn(400, 3, 4, 5, generator=generator)
    fitted = fit_pixel_calibration(maps, "elbo", "400 synthetic maps", eps_nats=0.05)
    z = fitted.normalise(maps)
    assert z.shape == maps.shape
    assert z.mean(dim=0).abs().max() < 1e-4  # per pixel: mean 0 ...
    expected_std = fitted.std_nats / (fitted.std_nats + 0.05)  # ... and spread std / (std + eps)
    assert torch.allclose(z.std(dim=0), expected_std, atol=1e-4)

    card = json.loads(json.dumps({"pixel_calibration": {"elbo": fitted.to_card().to_dict()}}))
    record = pixel_calibrations_in(card)["elbo"]
    assert isinstance(record, MethodPixelCalibration) and record.num_images == 400
    back = PixelCalibration.of_card("elbo", record)
    assert torch.equal(back.mean_nats, fitted.mean_nats) and torch.equal(
        back.std_nats, fitted.std_nats
    )
    assert torch.equal(back.normalise(maps), z)
    with pytest.raises(ValueError, match="do not match"):
        back.normalise(torch.zeros(1, 1, 4, 5))


def test_global_normalisation_pools_every_pixel_and_keeps_the_raw_ranking():
    """One mean and spread for all pixels of the normal maps (std's fit uses N - 1, so the
    pooled moments are matched to 1e-3): z ranks pixels of all images as the nats do."""
    generator = torch.Generator().manual_seed(1)
    mean = torch.rand(1, 6, 6, generator=generator) * 4
    spread = torch.rand(1, 6, 6, generator=generator) + 0.2
    normal = mean + spread * torch.randn(5000, 1, 6, 6, generator=generator)
    fitted = fit_pixel_calibration(normal, "elbo", "synthetic", eps_nats=0.0)
    z = fitted.normalise(normal, "global")
    assert abs(z.mean().item()) < 1e-3 and abs(z.std().item() - 1.0) < 1e-3
    new = torch.rand(7, 1, 6, 6, generator=generator) * 10
    ranked = fitted.normalise(new, "global").flatten()
    assert torch.equal(ranked.argsort(), new.double().flatten().argsort())


def test_cards_without_pixel_calibration_still_parse_and_with_one_round_trip():
    from pathlib import Path

    text = (
        Path(__file__).resolve().parents[2] / "checkpoints" / "vae" / "model_card.json"
    ).read_text()
    payload = json.loads(text)
    payload.pop("pixel_calibration", None)
    assert ModelCard.from_dict(payload).pixel_calibration is None
    assert "pixel_calibration" not in ModelCard.from_dict(payload).to_dict()
    fitted = fit_pixel_calibration(torch.rand(5, 1, 28, 28), "elbo", "5 images")
    payload["pixel_calibration"] = {"elbo": fitted.to_card().to_dict()}
    assert ModelCard.from_dict(payload).to_dict() == payload


def test_measure_pixel_calibration_uses_the_methods_maps(tiny_vae_config, tiny_ddpm_config):
    kind, model = _tiny("ddpm", tiny_vae_config, tiny_ddpm_config, channels=1, size=8)
    calibration = measure_pixel_calibration(
        kind, model, _images(6, channels=1, size=8), seeded_generator(0), k=4, batch_size=4
    )
    assert calibration.method == "vlb_mc" and calibration.k == 4
    assert calibration.num_images == 6 and calibration.mean_nats.shape == (1, 8, 8)
    assert (calibration.std_nats > 0).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_heatmap_is_rgb_image_under_a_fixed_colour_scale(channels):
    images = _images(2, channels=channels, size=6)
    z = torch.zeros(2, channels, 6, 6, dtype=torch.float64)
    z[:, :, 0, 0] = 100.0  # clipped to the top of the scale: red
    heat = heatmap_overlay(images, z)
    assert heat.shape == (2, 3, 6, 6) and heat.dtype == torch.uint8
    grey = (
        images[:, :1, 0, 0].double().expand(-1, 3) if channels == 1 else images[:, :, 0, 0].double()
    )
    red = torch.tensor([127.5, 0.0, 0.0])  # jet ends in dark red ...
    assert torch.allclose(heat[:, :, 0, 0].double(), torch.round(0.5 * grey + 0.5 * red), atol=1)
    blue = torch.tensor([0.0, 0.0, 127.5])  # ... and starts in dark blue (z <= 0)
    base = (
        images[:, :, 1, 1].double().expand(-1, 3) if channels == 1 else images[:, :, 1, 1].double()
    )
    assert torch.allclose(heat[:, :, 1, 1].double(), torch.round(0.5 * base + 0.5 * blue), atol=1)


def test_defect_masks_are_exactly_the_pixels_each_defect_changed_inside_its_region():
    images = torch.zeros(30, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 6:22, 8:20] = 180  # a bright garment on black
    donors = _images(10, channels=1, size=28)
    defects = synthetic_defects(images, donors, seeded_generator(0))
    assert defects.kinds == tuple(DEFECT_KINDS[i % 3] for i in range(30))
    changed = (defects.images != images).any(dim=1)
    assert torch.equal(defects.masks, changed)  # nothing changed outside the mask ...
    assert not (defects.masks & ~defects.regions).any()  # ... and the mask is in the region
    assert (defects.masks.flatten(1).sum(dim=1) >= 3).all()
    for i, kind in enumerate(defects.kinds):
        rows, cols = defects.regions[i].nonzero().unbind(1)
        if kind == "patch":  # a full square, pasted from a donor
            size = int(rows.max() - rows.min()) + 1
            assert int(cols.max() - cols.min()) + 1 == size and 6 <= size <= 10
            assert int(defects.regions[i].sum()) == size * size


def test_pixel_auroc_is_one_for_a_perfect_map_and_half_for_a_constant_one():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 1, 1] = True
    assert pixel_auroc(masks.double(), masks) == 1.0
    assert pixel_auroc(torch.zeros(2, 4, 4), masks) == 0.5
