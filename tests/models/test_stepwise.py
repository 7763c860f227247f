"""Step-level loops: requests at different steps of different samplers share network calls,
and each comes out exactly as the whole-batch sampler gives it alone."""

import pytest
import torch

from models.core.noise import seeded_generator
from models.core.progressive import run_to_end
from models.core.stepwise import finished, step_together
from models.diffusion.kind import DDPMKind
from models.diffusion.samplers import (
    AncestralRows,
    DDIMInversionRows,
    DDIMRows,
    ddim_decode,
    ddim_invert,
    ddim_sample,
    ddpm_ancestral_sample,
)
from models.nn.batch_invariance import FixedChunkDenoiser

SHAPE = (2, 1, 8, 8)


def _latent(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=seeded_generator(seed))


def _requests(ddpm):
    """(rows of one request, the same request through its whole-batch sampler), for every
    sampler, each with its own step count and seed."""
    d = ddpm.diffusion
    g = seeded_generator
    return {
        "ddim_eta0": (
            lambda net: ddim_sample(d, net, SHAPE, 7, g(1), eta=0.0),
            lambda: DDIMRows.from_prior(d, SHAPE, 7, g(1), eta=0.0),
        ),
        "ddim_eta_half": (
            lambda net: ddim_sample(d, net, SHAPE, 4, g(2), eta=0.5),
            lambda: DDIMRows.from_prior(d, SHAPE, 4, g(2), eta=0.5),
        ),
        "ddim_eta1": (
            lambda net: ddim_sample(d, net, SHAPE, 11, g(3), eta=1.0),
            lambda: DDIMRows.from_prior(d, SHAPE, 11, g(3), eta=1.0),
        ),
        "ancestral": (
            lambda net: ddpm_ancestral_sample(d, net, SHAPE, g(4)),
            lambda: AncestralRows(d, SHAPE, g(4)),
        ),
        "ancestral_respaced": (
            lambda net: ddpm_ancestral_sample(d, net, SHAPE, g(5), steps=6),
            lambda: AncestralRows(d, SHAPE, g(5), steps=6),
        ),
        "inversion": (
            lambda net: ddim_invert(d, net, _latent(6).clamp(-1, 1), 5),
            lambda: DDIMInversionRows(d, _latent(6).clamp(-1, 1), 5),
        ),
        "decoding": (
            lambda net: ddim_decode(d, net, _latent(7), 9),
            lambda: DDIMRows(d, _latent(7), 9, clip_denoised=False),
        ),
    }


def _run_together(network, arrivals):
    """Step every request that has arrived in one network call per step; ``arrivals`` maps
    a name to (the step it joins at, its rows). Returns results and the calls made."""
    running, results, calls = {}, {}, 0
    while len(results) < len(arrivals):
        for name, (joins_at, make) in arrivals.items():
            if joins_at == calls and name not in running:
                running[name] = make()
        step_together(network, list(running.values()))
        calls += 1
        for name in [n for n, rows in running.items() if finished(rows)]:
            results[name] = running.pop(name).result()  # answered the moment it is done
    return results, calls


@pytest.fixture
def row_network(tiny_ddpm):
    """The network one row at a time: any row's output is independent of its companions."""
    return FixedChunkDenoiser(tiny_ddpm, 1)


def test_every_sampler_alone_is_its_whole_batch_sampler_bit_for_bit(tiny_ddpm, row_network):
    for name, (whole_batch, rows) in _requests(tiny_ddpm).items():
        results, calls = _run_together(row_network, {name: (0, rows)})
        assert torch.equal(results[name], whole_batch(row_network)), name
        assert calls == rows().total


def test_requests_of_every_sampler_sharing_calls_and_joining_mid_flight_are_unchanged(
    tiny_ddpm, row_network
):
    requests = _requests(tiny_ddpm)
    arrivals = {name: (3 * i, rows) for i, (name, (_, rows)) in enumerate(requests.items())}
    results, calls = _run_together(row_network, arrivals)
    for name, (whole_batch, _) in requests.items():
        assert torch.equal(results[name], whole_batch(row_network)), name
    # Shared calls: far fewer than the requests' steps one after the other.
    assert calls < sum(rows().total for _, rows in requests.values())


def test_a_short_request_finishes_after_its_own_steps_whatever_runs_beside_it(
    tiny_ddpm, row_network
):
    d = tiny_ddpm.diffusion
    long = AncestralRows(d, SHAPE, seeded_generator(0))  # all 50 steps
    step_together(row_network, [long])
    short = DDIMRows.from_prior(d, SHAPE, 3, seeded_generator(1))
    for _ in range(3):
        step_together(row_network, [long, short])
    assert finished(short) and long.done == 4 and not finished(long)


def test_the_kind_encodes_in_rows_exactly_as_its_whole_batch_encode(tiny_ddpm, row_network):
    kind, x = DDPMKind(), _latent(8).clamp(-1, 1)
    options = {"steps": 4}
    whole = run_to_end(kind.encode(tiny_ddpm, x, [seeded_generator(0)] * 2, options, 1))
    rows = kind.encode_rows(tiny_ddpm, x, [seeded_generator(0)] * 2, options)
    other = DDIMRows.from_prior(tiny_ddpm.diffusion, SHAPE, 5, seeded_generator(1))
    while not finished(rows):
        step_together(row_network, [other, rows] if not finished(other) else [rows])
    assert rows.total == 8 and rows.done == 8
    for name, value in rows.result().items():
        assert torch.equal(value, whole[name]), name


def test_a_kind_without_step_level_loops_says_so():
    from models.vae.kind import VAEKind

    kind = VAEKind()
    assert kind.stepwise_operations == frozenset()
    with pytest.raises(NotImplementedError, match="no step-level sampling"):
        kind.sample_rows(None, [seeded_generator(0)], {})
