import pytest
import torch

from models.core.config import DiffusionConfig
from models.diffusion.ddpm import DDPM
from models.diffusion.gaussian import GaussianDiffusion


@pytest.fixture
def linear_diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(num_timesteps=1000, schedule="linear"))


@pytest.fixture(scope="module")
def tiny_ddpm(tiny_ddpm_config) -> DDPM:
    """A T = 50 DDPM with fixed_small variances (8x8 images) whose output depends on x_t."""
    torch.manual_seed(0)
    config = tiny_ddpm_config(
        num_timesteps=50, variance="fixed_small", attention_resolutions=(4,), num_heads=2
    )
    model = DDPM(config).eval()
    # The output layer starts at zero; perturb it so the network's output depends on its input.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model
