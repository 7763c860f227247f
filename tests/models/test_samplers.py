import pytest
import torch
from oracles import GaussianDataDenoiser

from models.core.config import DiffusionConfig
from models.core.noise import seeded_generator
from models.diffusion.ddpm import DDPM
from models.diffusion.gaussian import GaussianDiffusion
from models.diffusion.respacing import spaced_timesteps
from models.diffusion.samplers import (
    ddim_decode,
    ddim_invert,
    ddim_loop,
    ddim_sample,
    ddpm_ancestral_sample,
)

SHAPE = (3, 1, 8, 8)


def test_spaced_timesteps_span_the_whole_chain():
    assert spaced_timesteps(1000, 1).tolist() == [999]
    assert spaced_timesteps(1000, 1000).tolist() == list(range(1000))
    ten = spaced_timesteps(1000, 10)
    assert ten[0] == 0 and ten[-1] == 999 and torch.all(ten[1:] > ten[:-1])
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="steps must be in 1..1000"):
            spaced_timesteps(1000, bad)


def test_ddim_with_eta_zero_is_deterministic(tiny_ddpm):
    x_T = torch.randn(SHAPE, generator=seeded_generator(0))
    first = ddim_loop(
        tiny_ddpm.diffusion, tiny_ddpm, x_T, steps=10, eta=0.0, generator=seeded_generator(1)
    )
    second = ddim_loop(
        tiny_ddpm.diffusion, tiny_ddpm, x_T, steps=10, eta=0.0, generator=seeded_generator(2)
    )
    assert torch.equal(first, second)


@pytest.mark.parametrize("sampler", ["ddim_eta_half", "ancestral"])
def test_same_seed_same_samples_different_seed_different(tiny_ddpm, sampler):
    def draw(seed: int) -> torch.Tensor:
        generator = seeded_generator(seed)
        if sampler == "ancestral":
            return ddpm_ancestral_sample(tiny_ddpm.diffusion, tiny_ddpm, SHAPE, generator)
        return ddim_sample(tiny_ddpm.diffusion, tiny_ddpm, SHAPE, 10, generator, eta=0.5)

    assert torch.equal(draw(7), draw(7))
    assert (draw(7) - draw(8)).abs().mean() > 1e-2


def test_eta_draws_noise_only_when_positive(tiny_ddpm):
    x_T = torch.randn(SHAPE, generator=seeded_generator(0))
    a = ddim_loop(tiny_ddpm.diffusion, tiny_ddpm, x_T, 10, eta=1.0, generator=seeded_generator(1))
    b = ddim_loop(tiny_ddpm.diffusion, tiny_ddpm, x_T, 10, eta=1.0, generator=seeded_generator(2))
    assert (a - b).abs().mean() > 1e-2
    with pytest.raises(ValueError, match="pass a generator"):
        ddim_loop(tiny_ddpm.diffusion, tiny_ddpm, x_T, 10, eta=1.0)


def test_ddim_with_eta_one_over_every_step_is_ancestral_sampling(tiny_ddpm):
    """DDIM Eq. 16 with eta = 1 gives sigma_t^2 = beta-tilde_t and the posterior mean, i.e.
    the DDPM sampler with fixed_small variance; both draw their noise in the same order."""
    diffusion = tiny_ddpm.diffusion
    ancestral = ddpm_ancestral_sample(diffusion, tiny_ddpm, SHAPE, seeded_generator(3))
    ddim = ddim_sample(
        diffusion, tiny_ddpm, SHAPE, steps=50, generator=seeded_generator(3), eta=1.0
    )
    assert torch.allclose(ancestral, ddim, atol=1e-4)


def test_per_row_generators_make_samples_independent_of_batch_composition(tiny_ddpm):
    diffusion = tiny_ddpm.diffusion
    request = seeded_generator(11)
    alone = ddim_sample(diffusion, tiny_ddpm, (2, 1, 8, 8), 10, [request] * 2, eta=0.3)
    others_a, request, others_b = seeded_generator(1), seeded_generator(11), seeded_generator(2)
    generators = [others_a] * 3 + [request] * 2 + [others_b]
    batched = ddim_sample(diffusion, tiny_ddpm, (6, 1, 8, 8), 10, generators, eta=0.3)
    assert torch.allclose(alone, batched[3:5], atol=1e-5)


def test_progress_callback_counts_every_step(tiny_ddpm):
    seen: list[tuple[int, int]] = []
    ddim_sample(
        tiny_ddpm.diffusion,
        tiny_ddpm,
        SHAPE,
        7,
        seeded_generator(0),
        on_step=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(i, 7) for i in range(1, 8)]


@pytest.fixture(scope="module")
def gaussian_oracle():
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=1000))
    return diffusion, GaussianDataDenoiser(diffusion, mean=0.2, std=0.3)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim1000", "ddim1000_eta1"])
def test_samplers_reproduce_the_data_distribution_of_an_optimal_denoiser(gaussian_oracle, sampler):
    diffusion, model = gaussian_oracle
    shape = (4000, 1, 2, 2)
    generator = seeded_generator(0)
    if sampler == "ancestral":
        x = ddpm_ancestral_sample(diffusion, model, shape, generator, clip_denoised=False)
    else:
        eta = 1.0 if sampler.endswith("eta1") else 0.0
        x = ddim_sample(diffusion, model, shape, 1000, generator, eta=eta, clip_denoised=False)
    assert x.mean().item() == pytest.approx(0.2, abs=0.01)
    assert x.std().item() == pytest.approx(0.3, rel=0.03)


def test_ddim_discretisation_error_shrinks_with_more_steps(gaussian_oracle):
    """Coarse DDIM under-disperses Gaussian data; the error falls as the step count grows."""
    diffusion, model = gaussian_oracle
    std_errors = []
    for steps in (10, 50, 200, 1000):
        x = ddim_sample(
            diffusion, model, (4000, 1, 2, 2), steps, seeded_generator(0), clip_denoised=False
        )
        std_errors.append(abs(x.std().item() - 0.3))
    assert std_errors == sorted(std_errors, reverse=True)
    assert std_errors[-1] < 0.005


def _round_trip_rms(diffusion, model, x0: torch.Tensor, steps: int) -> float:
    latent = ddim_invert(diffusion, model, x0, steps)
    return (ddim_decode(diffusion, model, latent, steps) - x0).pow(2).mean().sqrt().item()


def test_inversion_round_trip_error_falls_with_steps_for_an_optimal_denoiser(gaussian_oracle):
    diffusion, model = gaussian_oracle
    x0 = 0.2 + 0.3 * torch.randn(64, 1, 4, 4, generator=seeded_generator(0))
    errors = [_round_trip_rms(diffusion, model, x0, steps) for steps in (5, 20, 100, 500)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01 < errors[0]
    # The latent is (approximately) standard normal, as x_T should be.
    latent = ddim_invert(diffusion, model, x0, 100)
    assert latent.std().item() == pytest.approx(1.0, rel=0.1)


def _toy_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """8x8 images of a bright square at one of four positions on a dark background."""
    images = torch.full((n, 1, 8, 8), -1.0)
    corners = torch.randint(0, 4, (n,), generator=generator)
    for i, corner in enumerate(corners.tolist()):
        r, c = divmod(corner, 2)
        images[i, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 0.8
    return images


@pytest.fixture(scope="module")
def trained_toy_ddpm(tiny_ddpm_config) -> DDPM:
    """A tiny UNet trained for a few seconds with L_simple on the four-square toy data."""
    torch.manual_seed(0)
    model = DDPM(tiny_ddpm_config(num_timesteps=100, variance="fixed_small", base_channels=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = seeded_generator(0)
    for _ in range(100):  # the 100-step round trip is 0.02 here (0.04 after 300 steps)
        x0 = _toy_images(64, generator)
        t = torch.randint(0, 100, (64,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = model.diffusion.training_losses(model, x0, t, noise).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_inversion_then_decoding_reconstructs_inputs_of_a_trained_toy_model(trained_toy_ddpm):
    diffusion = trained_toy_ddpm.diffusion
    x0 = _toy_images(16, seeded_generator(1))
    errors = [_round_trip_rms(diffusion, trained_toy_ddpm, x0, s) for s in (2, 10, 100)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.1  # pixels span 1.8; a tenth of that is a close reconstruction


@pytest.mark.parametrize("steps", [2, 3])
def test_few_step_ddim_with_eta_one_is_finite_where_abar_is_almost_zero(steps):
    # The first step starts at t = T-1, where abar_t ~ 0: 1 - abar_prev - sigma^2 is
    # mathematically >= 0 but rounded below zero in float32, and its square root made every
    # pixel NaN (then black images, or arbitrary bytes, depending on the CPU).
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=1000, schedule="cosine"))
    assert diffusion.alphas_cumprod[-1] < 1e-4

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * x  # any finite eps prediction

    x = ddim_sample(diffusion, denoiser, SHAPE, steps, seeded_generator(7), eta=1.0)
    assert torch.isfinite(x).all()
    other = ddim_sample(diffusion, denoiser, SHAPE, steps, seeded_generator(8), eta=1.0)
    assert not torch.equal(x, other)  # the seed still matters
