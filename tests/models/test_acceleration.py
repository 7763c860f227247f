import copy

import pytest
import torch

from models.core.config import DDPMConfig, DiffusionConfig, UNetConfig, VAEConfig
from models.core.noise import seeded_generator
from models.diffusion.ddpm import DDPM
from models.nn.acceleration import Acceleration, accelerate, bf16_autocast_usable, networks
from models.vae.model import VAE


def _tiny_ddpm() -> DDPM:
    torch.manual_seed(0)
    unet = UNetConfig(
        image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), num_heads=2,
    )  # fmt: skip
    return DDPM(DDPMConfig(unet, DiffusionConfig(num_timesteps=20, variance="learned_range")))


def _tiny_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(image_size=8, latent_dim=4, channels=(8, 16), num_mixtures=2)).eval()


def _unet_output(model: DDPM) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, 1, 8, 8, generator=generator)
    with torch.no_grad():
        return model(x_t, torch.tensor([0, 7, 19]))


def _elbo_bits_per_dim(model: VAE) -> torch.Tensor:
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        return model.negative_elbo(x, seeded_generator(3)).total_bits_per_dim


def test_eager_options_change_nothing_but_rounding_and_keep_the_state_dict():
    ddpm, vae = _tiny_ddpm().eval(), _tiny_vae()
    options = Acceleration(channels_last=True)
    fast_ddpm, fast_vae = (
        accelerate(copy.deepcopy(ddpm), options),
        accelerate(copy.deepcopy(vae), options),
    )
    assert fast_ddpm.state_dict().keys() == ddpm.state_dict().keys()
    assert torch.allclose(_unet_output(fast_ddpm), _unet_output(ddpm), atol=1e-5)
    assert torch.allclose(_elbo_bits_per_dim(fast_vae), _elbo_bits_per_dim(vae), atol=1e-5)


@pytest.mark.skipif(not bf16_autocast_usable(), reason="no CPU bf16 in this torch build")
def test_bf16_autocast_returns_float32_within_bf16_rounding():
    vae = _tiny_vae()
    fast = accelerate(copy.deepcopy(vae), Acceleration(bf16_autocast=True))
    ddpm = _tiny_ddpm().eval()
    out = _unet_output(accelerate(copy.deepcopy(ddpm), Acceleration(bf16_autocast=True)))
    assert out.dtype == torch.float32
    assert torch.allclose(out, _unet_output(ddpm), atol=0.05)
    assert torch.allclose(_elbo_bits_per_dim(fast), _elbo_bits_per_dim(vae), atol=0.01)


@pytest.mark.slow
def test_compiled_networks_match_eager():
    ddpm = _tiny_ddpm().eval()
    fast = accelerate(copy.deepcopy(ddpm), Acceleration(compile=True))
    assert torch.allclose(_unet_output(fast), _unet_output(ddpm), atol=1e-5)


def test_options_reach_the_networks_and_name_themselves():
    vae = _tiny_vae()
    assert [type(n).__name__ for n in networks(vae)] == ["_ConvStack", "_ConvStack", "Sequential"]
    accelerate(vae, Acceleration(channels_last=True))
    conv = vae.encoder.modules().__next__()
    assert any(
        p.is_contiguous(memory_format=torch.channels_last) and p.ndim == 4
        for p in conv.parameters()
    )
    assert Acceleration().name == "fp32_eager"
    assert Acceleration(channels_last=True, compile=True).name == "channels_last+compile"
