import math

import numpy as np
import pytest
import torch
from oracles import PointMassDenoiser
from scipy import stats

from models.core.config import DiffusionConfig
from models.core.noise import seeded_generator
from models.core.pixels import pixels_to_signed_unit
from models.diffusion.bound import (
    stratum_edges,
    vlb_exact,
    vlb_monte_carlo,
)
from models.diffusion.ddpm import DDPM
from models.diffusion.gaussian import GaussianDiffusion


def _point_mass_image() -> torch.Tensor:
    """A 1x4x4 image on the 8-bit grid that uses both end bins and interior values."""
    pixels = torch.tensor([0, 255, 17, 128, 200, 3, 0, 255, 90, 90, 45, 250, 1, 254, 64, 192])
    return pixels_to_signed_unit(pixels).reshape(1, 4, 4)


def _point_mass_bound_bits_per_dim(x_star: torch.Tensor) -> float:
    nats_per_dim = _point_mass_bound_nats_per_dim(x_star)
    return nats_per_dim.sum() / (nats_per_dim.size * math.log(2))


def _point_mass_bound_nats_per_dim(x_star: torch.Tensor) -> np.ndarray:
    """The bound per dimension (D,), worked out by hand for data = the single image x*, an
    optimal denoiser and fixed variance beta-tilde (linear schedule, T = 1000):
    every denoising KL is 0 (model posterior = true posterior), L_T is the Gaussian KL in
    closed form, and L_0 is the mass of x*'s own bin under N(x*, beta-tilde_1)."""
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    x = x_star.double().flatten().numpy()
    abar_T = alpha_bar[-1]
    prior = 0.5 * (abar_T * x**2 + (1 - abar_T) - 1 - math.log(1 - abar_T))
    # Decoder variance at t=1 is beta-tilde at the paper's t=2 (beta-tilde_1 = 0 is clipped).
    sigma = math.sqrt(betas[1] * (1 - alpha_bar[0]) / (1 - alpha_bar[1]))
    half_bin = 1 / 255
    edge = (x <= -1 + 1e-6) | (x >= 1 - 1e-6)
    mass = np.where(
        edge,
        stats.norm.cdf(half_bin / sigma),
        stats.norm.cdf(half_bin / sigma) - stats.norm.cdf(-half_bin / sigma),
    )
    return prior - np.log(mass)


def test_exact_bound_equals_hand_derived_value_for_point_mass_data(linear_diffusion):
    x_star = _point_mass_image()
    model = PointMassDenoiser(linear_diffusion, x_star)
    x0 = x_star.unsqueeze(0).repeat(2, 1, 1, 1)
    bound = vlb_exact(linear_diffusion, model, x0, seeded_generator(0), max_batch=500)
    expected = _point_mass_bound_bits_per_dim(x_star)
    assert torch.allclose(
        bound.total_bits_per_dim, torch.full((2,), expected, dtype=torch.float64), rtol=1e-4
    )
    assert bound.denoising_nats.abs().max() < 1e-3  # each of the 999 KLs vanishes
    assert bound.denoising_stderr_nats is None


def test_exact_bound_per_dimension_equals_hand_derived_values_pixel_by_pixel(linear_diffusion):
    x_star = _point_mass_image()
    model = PointMassDenoiser(linear_diffusion, x_star)
    x0 = x_star.unsqueeze(0).repeat(2, 1, 1, 1)
    bound = vlb_exact(linear_diffusion, model, x0, seeded_generator(0), 500, per_dim=True)
    expected = torch.from_numpy(_point_mass_bound_nats_per_dim(x_star)).reshape(1, 1, 4, 4)
    assert bound.total_nats_per_dim is not None
    assert bound.total_nats_per_dim.shape == (2, 1, 4, 4)
    assert torch.allclose(bound.total_nats_per_dim, expected.expand(2, -1, -1, -1), atol=1e-3)


@pytest.mark.parametrize("k", [None, 2, 7])  # None: the exact sum
def test_the_bound_per_dimension_sums_to_the_bound_of_the_same_draws(linear_diffusion, k):
    """Every term, drawn denoising terms included with their stratum weights, per pixel; the
    per-image figures are the very ones the plain estimator gives."""
    x_star = _point_mass_image()
    model = PointMassDenoiser(linear_diffusion, x_star, bias=0.1)  # denoising terms > 0
    x0 = torch.stack([x_star, -x_star.flip(-1)])

    def bound(per_dim: bool):
        if k is None:
            return vlb_exact(linear_diffusion, model, x0, seeded_generator(3), 700, per_dim=per_dim)
        return vlb_monte_carlo(
            linear_diffusion, model, x0, k, seeded_generator(3), 5, per_dim=per_dim
        )

    plain, mapped = bound(False), bound(True)
    assert plain.total_nats_per_dim is None and mapped.total_nats_per_dim is not None
    assert torch.equal(plain.total_nats, mapped.total_nats)
    assert mapped.denoising_nats.min() > 0.1
    sums = mapped.total_nats_per_dim.flatten(1).sum(dim=1)
    assert torch.allclose(sums, mapped.total_nats, rtol=1e-6)


def test_exact_bound_batches_timesteps_into_few_network_calls(linear_diffusion):
    x_star = _point_mass_image()
    model = PointMassDenoiser(linear_diffusion, x_star)
    vlb_exact(
        linear_diffusion, model, x_star.repeat(4, 1, 1, 1), seeded_generator(0), max_batch=400
    )
    assert model.calls == 10  # 1000 timesteps x 4 images / 400 per call


def test_bound_of_the_wrong_image_is_larger(linear_diffusion):
    x_star = _point_mass_image()
    model = PointMassDenoiser(linear_diffusion, x_star)
    other = torch.flip(x_star, dims=[-1]).unsqueeze(0)
    right = vlb_exact(linear_diffusion, model, x_star.unsqueeze(0), seeded_generator(0))
    wrong = vlb_exact(linear_diffusion, model, other, seeded_generator(0))
    assert wrong.total_bits_per_dim.item() > right.total_bits_per_dim.item() + 1.0


def test_monte_carlo_estimate_agrees_with_exact_sum_within_standard_errors(linear_diffusion):
    x_star = _point_mass_image()
    model = PointMassDenoiser(linear_diffusion, x_star, bias=0.3)
    torch.manual_seed(0)
    x0 = (x_star + 0.05 * torch.randn(16, 1, 4, 4)).clamp(-1, 1)
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
    exact = vlb_exact(linear_diffusion, model, x0, seeded_generator(1), max_batch=4000)
    assert exact.denoising_nats.min() > 10  # the terms are far from zero: a real test

    def runs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        estimates = [
            vlb_monte_carlo(linear_diffusion, model, x0, k=k, generator=seeded_generator(seed))
            for seed in range(50)
        ]
        totals = torch.stack([e.total_nats for e in estimates])  # (runs, images)
        return totals, torch.stack([e.denoising_stderr_nats for e in estimates])

    totals, stderrs = runs(k=20)
    # Unbiased: the mean of 50 runs sits within a few of its own standard errors.
    mean_error = totals.mean(0) - exact.total_nats
    assert torch.all(mean_error.abs() < 4 * totals.std(0) / math.sqrt(50))
    # The variance estimate is unbiased: its root-mean-square matches the real spread.
    rms_ratio = stderrs.pow(2).mean(0).sqrt() / totals.std(0)
    assert torch.all(rms_ratio > 0.7) and torch.all(rms_ratio < 1.4)
    # With k = 50 single estimates land within three standard errors of the full sum.
    totals, stderrs = runs(k=50)
    z = (totals - exact.total_nats) / stderrs
    assert (z.abs() < 3).float().mean() > 0.9


def test_monte_carlo_shares_exact_prior_and_reconstruction_terms(linear_diffusion):
    x_star = _point_mass_image()
    model = PointMassDenoiser(linear_diffusion, x_star)
    x0 = x_star.unsqueeze(0)
    mc = vlb_monte_carlo(linear_diffusion, model, x0, k=8, generator=seeded_generator(0))
    expected = _point_mass_bound_bits_per_dim(x_star)
    assert mc.total_bits_per_dim.item() == pytest.approx(expected, rel=1e-4)
    assert model.calls == 1  # k + 1 = 9 rows of one image fit one call


def test_monte_carlo_rejects_too_few_or_too_many_timesteps(linear_diffusion):
    model = PointMassDenoiser(linear_diffusion, _point_mass_image())
    x0 = _point_mass_image().unsqueeze(0)
    with pytest.raises(ValueError, match="k must be"):
        vlb_monte_carlo(linear_diffusion, model, x0, k=1, generator=seeded_generator(0))
    with pytest.raises(ValueError, match="k must be"):
        vlb_monte_carlo(linear_diffusion, model, x0, k=1999, generator=seeded_generator(0))


def test_strata_cover_every_denoising_timestep_once_finest_at_small_t():
    edges = stratum_edges(1, 1000, 10)
    assert edges.tolist() == [1, 2, 4, 8, 16, 32, 63, 126, 251, 501, 1000]
    many = stratum_edges(1, 1000, 40)
    assert many[0] == 1 and many[-1] == 1000 and torch.all(many[1:] > many[:-1])
    every = stratum_edges(1, 20, 19)
    assert every.tolist() == list(range(1, 21))  # one stratum per timestep: an exact sum


def test_monte_carlo_with_one_stratum_per_timestep_has_no_timestep_noise(linear_diffusion):
    """With every timestep its own stratum only the x_t noise remains: it must agree with the
    full sum, for the same x_t draws, much more tightly than when strata are wide."""
    small = GaussianDiffusion(DiffusionConfig(num_timesteps=50))
    model = PointMassDenoiser(small, _point_mass_image(), bias=0.3)
    x0 = _point_mass_image().unsqueeze(0)
    mc = vlb_monte_carlo(small, model, x0, k=98, generator=seeded_generator(0))
    exact = [vlb_exact(small, model, x0, seeded_generator(s)).total_nats for s in range(20)]
    exact = torch.cat(exact)
    assert abs(mc.total_nats.item() - exact.mean().item()) < 4 * mc.denoising_stderr_nats.item()
    assert mc.denoising_stderr_nats.item() < 3 * exact.std().item()


def test_same_seed_gives_same_bound_and_batch_composition_does_not_matter(tiny_ddpm_config):
    torch.manual_seed(0)
    model = DDPM(tiny_ddpm_config(num_timesteps=50, num_heads=4)).eval()
    x = torch.round((torch.rand(3, 1, 8, 8) * 2 - 1) * 127.5) / 127.5
    other = torch.round((torch.rand(2, 1, 8, 8) * 2 - 1) * 127.5) / 127.5
    alone = vlb_monte_carlo(model.diffusion, model, x, 10, [seeded_generator(5)] * 3)
    gen_other = seeded_generator(9)
    batched = vlb_monte_carlo(
        model.diffusion,
        model,
        torch.cat([other, x]),
        10,
        [gen_other] * 2 + [seeded_generator(5)] * 3,
    )
    assert torch.allclose(alone.total_nats, batched.total_nats[2:], rtol=1e-5)
    again = vlb_monte_carlo(model.diffusion, model, x, 10, [seeded_generator(5)] * 3)
    assert torch.equal(alone.total_nats, again.total_nats)
