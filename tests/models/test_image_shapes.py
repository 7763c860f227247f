"""Every image shape a servable config allows, through the kind registry: grayscale or RGB,
8x8 to 64x64. Bounds divide by D = C*H*W; samples, latents and reconstructions keep (C, H, W)."""

from __future__ import annotations

import math

import pytest
import torch

from models.core.noise import seeded_generator
from models.core.progressive import run_to_end
from models.kinds import kind_of

SHAPES = [(1, 8), (3, 16), (1, 32)]  # (C, size): the configs reach 8..64, these stay quick


def _images(c: int, size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """n random 8-bit images (n, C, size, size) on the [-1, 1] grid."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g) / 127.5 - 1.0


@pytest.fixture(params=["vae", "ddpm"])
def build(request, tiny_vae_config, tiny_ddpm_config):
    """(C, size) -> a seeded tiny model of that kind, in eval mode."""

    def make(c: int, size: int):
        torch.manual_seed(0)
        if request.param == "vae":
            config = tiny_vae_config(channels=c, size=size)
        else:
            config = tiny_ddpm_config(channels=c, size=size, attention_resolutions=(size // 2,))
        return kind_of(request.param).build(config).eval()

    return make


@pytest.mark.parametrize("c, size", SHAPES)
def test_every_bound_is_in_bits_per_dim_of_d_equal_c_h_w(build, c, size):
    model = build(c, size)
    kind = kind_of(model)
    assert kind.image_shape(model.config) == (c, size, size)
    x = _images(c, size)
    for method in kind.methods(model).values():
        k = method.default_k if method.k_range is None else min(4, method.k_range[1])
        terms = run_to_end(method.run(model, x, k, [seeded_generator(1)] * 2, 64))
        expected = terms["total_nats"] / (c * size * size * math.log(2.0))
        assert terms["total_bits_per_dim"].shape == (2,)
        torch.testing.assert_close(terms["total_bits_per_dim"], expected)


def test_diffusion_prior_term_grows_with_the_number_of_dimensions(tiny_ddpm_config):
    # L_T = KL(q(x_T | x_0) || N(0, I)) is in closed form and the same for every pixel of an
    # all-white image, so its sum is proportional to D: 3*16*16 = 768 against 1*8*8 = 64. (A
    # 1000-step linear schedule keeps abar_T at 4e-5, so L_T is not zero.)
    kind = kind_of("ddpm")
    priors = {}
    for c, size in [(1, 8), (3, 16)]:
        model = kind.build(tiny_ddpm_config(c, size, num_timesteps=1000)).eval()
        method = kind.methods(model)["vlb_mc"]
        x = torch.ones(1, c, size, size)
        priors[c] = run_to_end(method.run(model, x, 2, [seeded_generator(0)], 64))["prior_nats"]
    assert (priors[3] / priors[1]).item() == pytest.approx(768 / 64, rel=1e-6)


@pytest.mark.parametrize("c, size", SHAPES)
def test_samples_have_the_configured_shape(build, c, size):
    model = build(c, size)
    kind = kind_of(model)
    options = kind.sample_options_for(model, None, {"steps": 3} if kind.name == "ddpm" else {})
    generators = [seeded_generator(i) for i in range(3)]
    images = run_to_end(kind.sample(model, generators, options, None))
    assert images.shape == (3, c, size, size)
    assert torch.isfinite(images).all()


@pytest.mark.parametrize("c, size", SHAPES)
def test_encoding_and_decoding_keep_shapes(build, c, size):
    model = build(c, size)
    kind = kind_of(model)
    given = {"steps": 3} if kind.name == "ddpm" else {}
    x = _images(c, size)
    encoded = run_to_end(
        kind.encode(model, x, [seeded_generator(0)] * 2, kind.encode_options_for(model, given), 1)
    )
    latent_name = "latents" if kind.name == "ddpm" else "means"
    latents = encoded[latent_name]
    assert latents.shape == (2, *kind.latent_shape(model))
    for name in kind.encode_pixels:  # the DDIM round trip back to images
        assert encoded[name].shape == (2, c, size, size)
    decoded = run_to_end(kind.decode(model, latents, kind.decode_options_for(model, given), 1))
    assert decoded.shape == (2, c, size, size)


@pytest.mark.parametrize("c, size", [(1, 8), (3, 16)])
def test_training_loss_backpropagates_for_every_shape(build, c, size):
    model = build(c, size).train()
    loss, logged = kind_of(model).training_loss(model, _images(c, size), seeded_generator(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.isfinite(value) for value in logged.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("c", [1, 3])
def test_largest_images_run_a_forward_pass(c, tiny_vae_config, tiny_ddpm_config):
    x = _images(c, 64, n=1)
    vae = kind_of("vae").build(tiny_vae_config(channels=c, size=64)).eval()
    ddpm = kind_of("ddpm").build(tiny_ddpm_config(channels=c, size=64)).eval()
    with torch.no_grad():
        assert vae.encode(x).mean.shape == (1, 4)
        assert vae.decode(torch.zeros(1, 4)).mean_image().shape == (1, c, 64, 64)
        assert ddpm(x, torch.tensor([5])).shape == (1, 2 * c, 64, 64)  # eps and v


def test_vae_refuses_images_of_another_shape(tiny_vae_config):
    vae = kind_of("vae").build(tiny_vae_config(channels=3, size=16))
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\), got \(1, 1, 16, 16\)"):
        vae.encode(torch.zeros(1, 1, 16, 16))
