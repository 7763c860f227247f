import copy
from pathlib import Path

import pytest
import torch

from models.core.checkpoints import load_checkpoint
from models.core.config import VAEConfig
from models.core.noise import seeded_generator
from models.diffusion.ddpm import DDPM
from models.nn.acceleration import Acceleration, accelerate
from models.nn.batch_invariance import FixedChunkDenoiser, in_fixed_chunks
from models.nn.layers import RowwiseLinear
from models.vae.model import VAE


def _rows(n: int, *shape: int) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))


def test_rowwise_linear_matches_nn_linear_and_ignores_the_batch_around_a_row():
    torch.manual_seed(0)
    rowwise = RowwiseLinear(300, 40)
    plain = torch.nn.Linear(300, 40)
    plain.load_state_dict(rowwise.state_dict())
    x = _rows(33, 300)
    alone = rowwise(x[:1])
    assert torch.allclose(rowwise(x), plain(x), atol=1e-5)
    for batch in (x[:2], x[:7], x, torch.cat([x[5:9], x[:1]])):
        row = 0 if torch.equal(batch[0], x[0]) else -1
        assert torch.equal(rowwise(batch)[row], alone[0])


def test_fixed_chunks_pad_the_last_chunk_and_keep_row_order():
    calls = []

    def network(a, b):
        calls.append(a.shape[0])
        return a * 10 + b

    a, b = torch.arange(10.0), torch.ones(10)
    out = in_fixed_chunks(network, 4, a, b)
    assert torch.equal(out, a * 10 + 1) and calls == [4, 4, 4]
    assert torch.equal(in_fixed_chunks(network, None, a, b), out) and calls[-1] == 10
    with pytest.raises(ValueError, match="rows"):
        in_fixed_chunks(network, 0, a, b)


@pytest.fixture(scope="module")
def ddpm() -> DDPM:
    # The shipped network: its 32-channel 14x14 convolutions are where oneDNN was seen to
    # change algorithm between a batch of one and of two.
    return load_checkpoint(
        Path(__file__).resolve().parents[2] / "checkpoints" / "ddpm"
    ).model.eval()


@torch.no_grad()
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_a_row_of_the_unet_is_bit_identical_in_any_batch_in_fixed_chunks(ddpm, channels_last):
    if channels_last:  # the service's ELBO_SERVE_CHANNELS_LAST
        ddpm = accelerate(copy.deepcopy(ddpm), Acceleration(channels_last=True))
    net = FixedChunkDenoiser(ddpm, 4)
    x, t = _rows(20, 1, 28, 28), torch.arange(20) * 50
    alone = net(x[:1], t[:1])
    for order in (torch.arange(20), torch.arange(20).roll(7), torch.arange(20).flip(0)):
        out = net(x[order], t[order])
        assert torch.equal(out[(order == 0).nonzero().item()], alone[0])


@torch.no_grad()
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_vae_samples_in_fixed_chunks_do_not_depend_on_their_batch(channels_last):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=8, channels=(16, 32))).eval()
    accelerate(vae, Acceleration(channels_last=channels_last))

    def crowd():  # nine requests' generators; row 6 carries seed 5, as the lone request does
        return [seeded_generator(5 if row == 6 else row) for row in range(9)]

    for pixels in (False, True):
        alone = vae.sample(1, [seeded_generator(5)], sample_pixels=pixels, chunk_rows=4)
        batched = vae.sample(9, crowd(), sample_pixels=pixels, chunk_rows=4)
        assert torch.equal(batched[6], alone[0]), pixels
