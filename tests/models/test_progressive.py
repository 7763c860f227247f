"""Progressive loops yield after every network call, give exactly what their plain functions
give, and stop calling the network when closed."""

import pytest
import torch

from models.core.noise import seeded_generator
from models.core.progressive import reported, run_to_end
from models.diffusion.bound import (
    vlb_exact,
    vlb_exact_progressive,
    vlb_monte_carlo,
    vlb_monte_carlo_progressive,
)
from models.diffusion.ddpm import DDPM
from models.diffusion.samplers import (
    ddim_decode,
    ddim_decode_progressive,
    ddim_invert,
    ddim_invert_progressive,
    ddim_sample,
    ddim_sample_progressive,
    ddpm_ancestral_sample,
    ddpm_ancestral_sample_progressive,
)
from models.vae.model import VAE

SHAPE = (3, 1, 8, 8)


class CountingNetwork:
    """The network, counting its calls."""

    def __init__(self, network):
        self.network, self.calls = network, 0

    def __call__(self, *inputs):
        self.calls += 1
        return self.network(*inputs)


@pytest.fixture(scope="module")
def tiny_ddpm(tiny_ddpm_config) -> DDPM:
    torch.manual_seed(0)
    # The middle block attends with 4 heads; no other stage does.
    model = DDPM(tiny_ddpm_config(num_heads=4)).eval()
    with torch.no_grad():  # the output layer starts at zero: make the output depend on x
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def tiny_vae(tiny_vae_config) -> VAE:
    torch.manual_seed(0)
    return VAE(tiny_vae_config(size=8, num_mixtures=1)).eval()


def _drive(loop):
    """Every yield of ``loop`` and its result."""
    yields = []
    while True:
        try:
            yields.append(next(loop))
        except StopIteration as end:
            return yields, end.value


def _sampler_cases(ddpm, x):
    d = ddpm.diffusion
    return {
        "ancestral": (
            lambda net: ddpm_ancestral_sample(d, net, SHAPE, seeded_generator(1)),
            lambda net: ddpm_ancestral_sample_progressive(d, net, SHAPE, seeded_generator(1)),
            20,
        ),
        "ddim": (
            lambda net: ddim_sample(d, net, SHAPE, 7, seeded_generator(2), eta=1.0),
            lambda net: ddim_sample_progressive(d, net, SHAPE, 7, seeded_generator(2), eta=1.0),
            7,
        ),
        "invert": (
            lambda net: ddim_invert(d, net, x, 5),
            lambda net: ddim_invert_progressive(d, net, x, 5),
            5,
        ),
        "decode": (
            lambda net: ddim_decode(d, net, x, 6),
            lambda net: ddim_decode_progressive(d, net, x, 6),
            6,
        ),
    }


@pytest.mark.parametrize("name", ["ancestral", "ddim", "invert", "decode"])
def test_sampling_loops_yield_once_per_network_call_and_match_the_plain_function(tiny_ddpm, name):
    x = torch.randn(SHAPE, generator=seeded_generator(0)).clamp(-1, 1)
    plain, progressive, steps = _sampler_cases(tiny_ddpm, x)[name]
    net = CountingNetwork(tiny_ddpm)
    yields, result = _drive(progressive(net))
    assert yields == [(i, steps) for i in range(1, steps + 1)]
    assert net.calls == steps
    assert torch.equal(result, plain(tiny_ddpm))


def test_bound_loops_yield_once_per_network_call_and_match_the_plain_function(tiny_ddpm):
    x = torch.randn(SHAPE, generator=seeded_generator(0)).clamp(-1, 1)
    d = tiny_ddpm.diffusion
    net = CountingNetwork(tiny_ddpm)
    # 20 timesteps x 3 images in calls of 12 images: 4 timesteps per call, 5 calls.
    yields, exact = _drive(vlb_exact_progressive(d, net, x, seeded_generator(3), max_batch=12))
    assert yields == [(4, 20), (8, 20), (12, 20), (16, 20), (20, 20)] and net.calls == 5
    plain = vlb_exact(d, tiny_ddpm, x, seeded_generator(3), max_batch=12)
    assert torch.equal(exact.total_nats, plain.total_nats)
    net.calls = 0
    yields, mc = _drive(vlb_monte_carlo_progressive(d, net, x, 6, seeded_generator(4), 9))
    assert yields == [(3, 7), (6, 7), (7, 7)] and net.calls == 3  # k + 1 = 7 rows, 3 per call
    plain = vlb_monte_carlo(d, tiny_ddpm, x, 6, seeded_generator(4), 9)
    assert torch.equal(mc.total_nats, plain.total_nats)
    assert torch.equal(mc.denoising_stderr_nats, plain.denoising_stderr_nats)


def test_iwae_yields_once_per_decoder_call_and_matches_the_plain_bound(tiny_vae):
    x = torch.randn(SHAPE, generator=seeded_generator(0)).clamp(-1, 1)
    # 10 samples of 3 images in calls of 12 images: 4 samples per call, 3 calls.
    loop = tiny_vae.iwae_bound_progressive(x, 10, seeded_generator(5), max_batch=12)
    yields, bound = _drive(loop)
    assert yields == [(4, 10), (8, 10), (10, 10)]
    plain = tiny_vae.iwae_bound(x, 10, seeded_generator(5), max_batch=12)
    assert torch.equal(bound.total_nats, plain.total_nats)


def test_a_closed_loop_calls_the_network_no_more(tiny_ddpm):
    net = CountingNetwork(tiny_ddpm)
    loop = ddim_sample_progressive(tiny_ddpm.diffusion, net, SHAPE, 10, seeded_generator(0))
    assert next(loop) == (1, 10) and next(loop) == (2, 10)
    loop.close()
    assert net.calls == 2
    with pytest.raises(StopIteration):
        next(loop)


def test_reported_and_run_to_end_tell_the_callback_every_step(tiny_ddpm):
    def loop():
        for done in range(1, 4):
            yield done, 3
        return "result"

    told = []
    assert run_to_end(loop(), lambda done, total: told.append((done, total))) == "result"
    assert told == [(1, 3), (2, 3), (3, 3)]
    assert _drive(reported(loop(), None)) == ([(1, 3), (2, 3), (3, 3)], "result")
