import pytest

from models.core.config import DiffusionConfig
from models.diffusion.gaussian import GaussianDiffusion


@pytest.fixture
def linear_diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(num_timesteps=1000, schedule="linear"))
