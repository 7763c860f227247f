import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from models.core.config import DiffusionConfig
from models.diffusion.gaussian import GaussianDiffusion, cosine_beta_schedule, linear_beta_schedule


def _numpy_linear_schedule(num_timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    betas = np.linspace(1e-4, 0.02, num_timesteps)
    return betas, np.cumprod(1.0 - betas)


def test_linear_schedule_matches_ho_et_al_endpoints():
    betas = linear_beta_schedule(1000)
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert torch.all(betas[1:] > betas[:-1])


def test_cosine_schedule_reproduces_its_alpha_bar_formula():
    T, s = 1000, 0.008
    betas = cosine_beta_schedule(T)
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    # beta is clipped at 0.999 only at the very end, where alpha-bar is ~0 either way.
    assert torch.allclose(alpha_bar[:-1], (f / f0)[:-1], rtol=1e-6, atol=1e-9)
    assert betas.max() <= 0.999


def test_q_sample_agrees_in_distribution_with_iterating_the_forward_kernel(linear_diffusion):
    """x_t drawn in one jump (Eq. 4) vs. t applications of q(x_t | x_{t-1}) (Eq. 2)."""
    torch.manual_seed(0)
    n, x0_value, t_index = 20_000, 0.7, 300
    x0 = torch.full((n, 1, 1, 1), x0_value, dtype=torch.float64)
    x = x0.clone()
    for beta in linear_diffusion.betas[: t_index + 1]:
        x = torch.sqrt(1 - beta) * x + torch.sqrt(beta) * torch.randn_like(x)
    t = torch.full((n,), t_index)
    jumped = linear_diffusion.q_sample(x0, t, torch.randn_like(x0))
    assert stats.ks_2samp(x.flatten().numpy(), jumped.flatten().numpy()).pvalue > 1e-3
    _, alpha_bar = _numpy_linear_schedule(1000)
    expected_std = math.sqrt(1 - alpha_bar[t_index])
    assert jumped.mean().item() == pytest.approx(math.sqrt(alpha_bar[t_index]) * x0_value, abs=0.02)
    assert jumped.std().item() == pytest.approx(expected_std, rel=0.02)


@pytest.mark.parametrize("t_index", [1, 10, 500, 999])
def test_posterior_matches_bayes_rule_on_a_grid(linear_diffusion, t_index):
    """q(x_{t-1} | x_t, x_0) proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0), by quadrature."""
    betas, alpha_bar = _numpy_linear_schedule(1000)
    x0 = 0.3
    # A typical x_t for this x_0, half a standard deviation above the mean of q(x_t | x_0).
    x_t = math.sqrt(alpha_bar[t_index]) * x0 + 0.5 * math.sqrt(1 - alpha_bar[t_index])
    grid = np.linspace(-6, 6, 2_000_001)
    log_prior = stats.norm.logpdf(
        grid, math.sqrt(alpha_bar[t_index - 1]) * x0, math.sqrt(1 - alpha_bar[t_index - 1])
    )
    log_likelihood = stats.norm.logpdf(
        x_t, math.sqrt(1 - betas[t_index]) * grid, math.sqrt(betas[t_index])
    )
    log_weights = log_prior + log_likelihood
    weights = np.exp(log_weights - log_weights.max())
    weights /= weights.sum()
    mean = (weights * grid).sum()
    variance = (weights * (grid - mean) ** 2).sum()

    posterior = linear_diffusion.q_posterior(
        torch.tensor([[[[x0]]]], dtype=torch.float64),
        torch.tensor([[[[x_t]]]], dtype=torch.float64),
        torch.tensor([t_index]),
    )
    assert posterior.mean.item() == pytest.approx(mean, rel=1e-4, abs=1e-7)
    assert posterior.variance.item() == pytest.approx(variance, rel=1e-3)


def test_prior_kl_matches_closed_form(linear_diffusion):
    _, alpha_bar = _numpy_linear_schedule(1000)
    x0 = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    abar = alpha_bar[-1]
    per_dim = 0.5 * (abar * x0.double().numpy() ** 2 + (1 - abar) - 1 - math.log(1 - abar))
    assert linear_diffusion.prior_kl_nats(x0).item() == pytest.approx(per_dim.sum(), rel=1e-4)


def test_predict_xstart_inverts_q_sample(linear_diffusion):
    torch.manual_seed(1)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 400, 900])
    x_t = linear_diffusion.q_sample(x0, t, noise)
    assert torch.allclose(linear_diffusion.predict_xstart_from_eps(x_t, t, noise), x0, atol=1e-3)
    assert torch.allclose(linear_diffusion.predict_eps_from_xstart(x_t, t, x0), noise, atol=1e-3)


def test_learned_range_interpolates_between_the_two_fixed_variances():
    learned = GaussianDiffusion(DiffusionConfig(num_timesteps=100, variance="learned_range"))
    small = GaussianDiffusion(DiffusionConfig(num_timesteps=100, variance="fixed_small"))
    x_t = torch.zeros(3, 1, 2, 2)
    t = torch.tensor([5, 50, 99])
    eps = torch.zeros_like(x_t)

    def log_var(v: float) -> torch.Tensor:
        output = torch.cat([eps, torch.full_like(x_t, v)], dim=1)
        return learned.p_mean_variance(output, x_t, t).log_variance[:, 0, 0, 0]

    expected_small = small.p_mean_variance(eps, x_t, t).log_variance[:, 0, 0, 0]
    assert torch.allclose(log_var(-1.0), expected_small)
    assert torch.allclose(log_var(1.0), torch.log(learned.betas[t]).float())
    assert torch.allclose(log_var(0.0), (expected_small + torch.log(learned.betas[t]).float()) / 2)


def test_fixed_large_variance_is_beta_t():
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=100, variance="fixed_large"))
    x_t = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([3, 70])
    step = diffusion.p_mean_variance(torch.zeros_like(x_t), x_t, t)
    assert torch.allclose(step.variance[:, 0, 0, 0], diffusion.betas[t].float())


class _ConstantOutput(nn.Module):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = nn.Parameter(output)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.output


def test_hybrid_loss_trains_the_variance_through_vlb_but_not_the_mean():
    """L_hybrid: the VLB term sees a stop-gradient mean (Nichol & Dhariwal Sec. 3.1)."""
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=100, variance="learned_range"))
    torch.manual_seed(2)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    model = _ConstantOutput(torch.randn(4, 2, 4, 4) * 0.1)
    t = torch.tensor([0, 1, 50, 99])
    losses = diffusion.training_losses(model, x0, t, torch.randn_like(x0))
    grad_of_vlb = torch.autograd.grad(
        losses.vlb_bits_per_dim.sum(), model.output, retain_graph=True
    )[0]
    assert torch.all(grad_of_vlb[:, :1] == 0)  # eps half: untouched by the VLB term
    assert grad_of_vlb[:, 1:].abs().sum() > 0  # variance half: trained by it
    expected = losses.mse + 0.001 * 100 * losses.vlb_bits_per_dim
    assert torch.allclose(losses.loss, expected)


def test_simple_loss_is_zero_for_the_true_noise(linear_diffusion):
    torch.manual_seed(3)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    model = _ConstantOutput(noise.clone())
    losses = linear_diffusion.training_losses(model, x0, torch.tensor([5, 500]), noise)
    assert torch.all(losses.mse == 0)
    assert torch.all(losses.vlb_bits_per_dim == 0)  # fixed variances: no VLB term
