import pytest
import torch
from oracles import GaussianDataDenoiser

from models.core.config import DiffusionConfig
from models.core.noise import seeded_generator
from models.diffusion.gaussian import GaussianDiffusion
from models.diffusion.respacing import respaced, spaced_timesteps
from models.diffusion.samplers import ddim_sample, ddpm_ancestral_sample

DATA_MEAN, DATA_STD = 0.2, 0.3


def _transition_variances(diffusion: GaussianDiffusion, timesteps: list[int]) -> torch.Tensor:
    """Var(x_{S_i} | x_{S_{i-1}}) = 1 - prod of (1 - beta_t) over S_{i-1} < t <= S_i: the
    forward chain's steps composed one by one, not through alpha-bar."""
    variances, previous = [], -1
    for t in timesteps:
        kept = torch.prod(1.0 - diffusion.betas[previous + 1 : t + 1])
        variances.append(1.0 - kept)
        previous = t
    return torch.stack(variances)


@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_respaced_betas_compose_the_original_forward_steps(steps):
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=1000))
    timesteps = spaced_timesteps(1000, steps)
    chain = respaced(diffusion, timesteps)
    expected = _transition_variances(diffusion, timesteps.tolist())
    assert chain.num_timesteps == steps
    assert torch.allclose(chain.betas, expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(chain.alphas_cumprod, diffusion.alphas_cumprod[timesteps], rtol=1e-9)


def test_respacing_every_timestep_gives_back_the_original_chain():
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=200, variance="learned_range"))
    chain = respaced(diffusion, torch.arange(200))
    for name, buffer in diffusion.named_buffers():
        assert torch.allclose(getattr(chain, name), buffer, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("steps", [3, 10])
def test_respaced_ancestral_with_posterior_variances_is_ddim_at_eta_one(tiny_ddpm, steps):
    """DDIM Eq. 16 with eta = 1 over a subsequence is sigma^2 = beta-tilde' of the respaced
    chain and its posterior mean: the respaced DDPM sampler with fixed_small variances."""
    model, shape = tiny_ddpm, (3, 1, 8, 8)
    ancestral = ddpm_ancestral_sample(
        model.diffusion, model, shape, seeded_generator(5), steps=steps
    )
    ddim = ddim_sample(model.diffusion, model, shape, steps, seeded_generator(5), eta=1.0)
    assert torch.allclose(ancestral, ddim, atol=1e-4)


class GaussianDataWithVariance(GaussianDataDenoiser):
    """The optimal eps for data x_0 ~ N(m, s^2 I) and the learned-range value v that makes the
    respaced step's variance the true Var(x_{S_{i-1}} | x_{S_i}) = V_s - (abar_t / abar_s)
    V_s^2 / V_t, with V = abar s^2 + 1 - abar (the forward marginals' variance)."""

    def __init__(self, diffusion: GaussianDiffusion, timesteps: torch.Tensor):
        super().__init__(diffusion, DATA_MEAN, DATA_STD)
        self.index = {t: i for i, t in enumerate(timesteps.tolist())}
        self.chain = respaced(diffusion, timesteps)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = self.index[int(t[0])]
        abar_t = self.chain.alphas_cumprod[i]
        abar_s = self.chain.alphas_cumprod_prev[i]
        marginal_t, marginal_s = (a * DATA_STD**2 + 1 - a for a in (abar_t, abar_s))
        variance = marginal_s - abar_t / abar_s * marginal_s**2 / marginal_t
        low, high = self.chain.posterior_log_variance_clipped[i], torch.log(self.chain.betas[i])
        fraction = (torch.log(variance) - low) / (high - low) if i > 0 else torch.tensor(0.0)
        v = torch.full_like(x_t, float(2 * fraction - 1))
        return torch.cat([super().__call__(x_t, t), v], dim=1)


def test_respaced_ancestral_sampling_uses_the_learned_variances():
    """With the true reverse variances a 5-step respaced chain reproduces Gaussian data
    exactly; DDIM at eta = 1 (the posterior variance beta-tilde') under-disperses it."""
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=1000, variance="learned_range"))
    steps, shape = 5, (8000, 1, 2, 2)
    model = GaussianDataWithVariance(diffusion, spaced_timesteps(1000, steps))
    ancestral = ddpm_ancestral_sample(
        diffusion, model, shape, seeded_generator(0), clip_denoised=False, steps=steps
    )
    ddim = ddim_sample(
        diffusion, model, shape, steps, seeded_generator(0), eta=1.0, clip_denoised=False
    )
    assert ancestral.mean().item() == pytest.approx(DATA_MEAN, abs=0.01)
    assert ancestral.std().item() == pytest.approx(DATA_STD, rel=0.02)
    assert ddim.std().item() < 0.9 * DATA_STD
