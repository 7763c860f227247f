"""Seeded, batch-composition-invariant noise (models/core/noise.py)."""

from __future__ import annotations

import pytest
import torch

from models.core.noise import rand_rows, randn_rows, seeded_generator


def _reference_randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """What plain PyTorch draws from a fresh CPU generator with ``seed``."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return torch.randn(shape, generator=generator)


def _reference_rand(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return torch.rand(shape, generator=generator)


def test_seeded_generator_is_a_cpu_generator_that_reproduces_torch_manual_seed():
    generator = seeded_generator(123)
    assert generator.device == torch.device("cpu")
    assert torch.equal(torch.randn(7, generator=generator), _reference_randn(123, (7,)))


def test_randn_rows_with_one_generator_equals_torch_randn_with_the_same_seed():
    shape = (5, 3, 4, 4)
    noise = randn_rows(shape, seeded_generator(11))
    assert noise.shape == shape
    assert noise.dtype == torch.float32
    assert torch.equal(noise, _reference_randn(11, shape))


def test_randn_rows_honours_dtype():
    generator = torch.Generator(device="cpu")
    generator.manual_seed(5)
    expected = torch.randn((4, 6), generator=generator, dtype=torch.float64)
    noise = randn_rows((4, 6), seeded_generator(5), dtype=torch.float64)
    assert noise.dtype == torch.float64
    assert torch.equal(noise, expected)


def test_randn_rows_with_one_generator_advances_it_between_calls():
    generator = seeded_generator(3)
    first = randn_rows((2, 8), generator)
    second = randn_rows((2, 8), generator)
    assert not torch.equal(first, second)
    reference = torch.Generator(device="cpu")
    reference.manual_seed(3)
    assert torch.equal(first, torch.randn((2, 8), generator=reference))
    assert torch.equal(second, torch.randn((2, 8), generator=reference))


def test_randn_rows_draws_each_run_of_rows_sharing_a_generator_as_one_block():
    g_a, g_b, g_c = seeded_generator(1), seeded_generator(2), seeded_generator(3)
    shape_tail = (2, 5)
    noise = randn_rows((6, *shape_tail), [g_a, g_a, g_b, g_c, g_c, g_c])
    # Each group is exactly what its own seed gives for a block of the group's size.
    assert torch.equal(noise[0:2], _reference_randn(1, (2, *shape_tail)))
    assert torch.equal(noise[2:3], _reference_randn(2, (1, *shape_tail)))
    assert torch.equal(noise[3:6], _reference_randn(3, (3, *shape_tail)))


@pytest.mark.parametrize("draw", [randn_rows, rand_rows], ids=["randn", "rand"])
def test_rows_of_a_request_do_not_depend_on_the_requests_batched_with_it(draw):
    """Batch-composition invariance: request R (3 rows, seed 7) gets the same noise alone,
    first, in the middle or last of a batch, over several consecutive draws (steps)."""
    shape_tail = (4, 3, 3)
    steps = 3

    def request_rows(before: list[int], after: list[int]) -> list[torch.Tensor]:
        """Draw ``steps`` times for a batch [before..., R(3 rows), after...]; keep R's rows."""
        others_before = [seeded_generator(seed) for seed in before]
        request = seeded_generator(7)
        others_after = [seeded_generator(seed) for seed in after]
        rows: list[torch.Tensor] = []
        # Requests before and after R have 2 rows each; R has 3.
        generators = (
            [g for g in others_before for _ in range(2)]
            + [request] * 3
            + [g for g in others_after for _ in range(2)]
        )
        start = 2 * len(before)
        for _ in range(steps):
            batch = draw((len(generators), *shape_tail), generators)
            rows.append(batch[start : start + 3])
        return rows

    alone = request_rows([], [])
    for before, after in ([100], []), ([], [200, 201]), ([300, 301], [302]):
        mixed = request_rows(before, after)
        for step in range(steps):
            assert torch.equal(mixed[step], alone[step]), (before, after, step)
    # The steps themselves differ: the generator advances rather than repeating.
    assert not torch.equal(alone[0], alone[1])


def test_request_noise_in_a_batch_equals_drawing_the_request_with_its_seed_alone():
    mixed = randn_rows((5, 6), [seeded_generator(9)] * 2 + [seeded_generator(7)] * 3)
    assert torch.equal(mixed[2:], randn_rows((3, 6), seeded_generator(7)))
    assert torch.equal(mixed[:2], randn_rows((2, 6), seeded_generator(9)))


def test_distinct_generator_objects_are_distinct_groups_even_with_equal_seeds():
    """Grouping is by object identity: two generators with seed 4 each draw their own block."""
    first, second = seeded_generator(4), seeded_generator(4)
    noise = randn_rows((2, 10), [first, second])
    assert torch.equal(noise[0], noise[1])
    shared = seeded_generator(4)
    noise_shared = randn_rows((2, 10), [shared, shared])
    assert torch.equal(noise_shared, _reference_randn(4, (2, 10)))
    assert not torch.equal(noise_shared[0], noise_shared[1])


@pytest.mark.parametrize("draw", [randn_rows, rand_rows], ids=["randn", "rand"])
@pytest.mark.parametrize("num_generators", [2, 4])
def test_wrong_number_of_generators_raises(draw, num_generators):
    generators = [seeded_generator(i) for i in range(num_generators)]
    with pytest.raises(ValueError, match=f"{num_generators} generators for a batch of 3 rows"):
        draw((3, 2), generators)


def test_rand_rows_is_uniform_on_the_half_open_unit_interval():
    noise = rand_rows((200, 500), seeded_generator(21))
    assert noise.min() >= 0.0
    assert noise.max() < 1.0
    # Mean and variance of U[0, 1): 1/2 and 1/12; 10^5 draws give standard errors ~1e-3.
    assert abs(noise.mean().item() - 0.5) < 5e-3
    assert abs(noise.var().item() - 1.0 / 12.0) < 2e-3
    # Deciles hold 10% each.
    counts = torch.histc(noise, bins=10, min=0.0, max=1.0) / noise.numel()
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=5e-3)


def test_rand_rows_with_one_generator_equals_torch_rand_with_the_same_seed():
    assert torch.equal(rand_rows((3, 7), seeded_generator(8)), _reference_rand(8, (3, 7)))


def test_rand_rows_with_per_row_generators_stays_in_the_unit_interval():
    generators = [seeded_generator(1)] * 3 + [seeded_generator(2)] * 2
    noise = rand_rows((5, 1000), generators)
    assert noise.shape == (5, 1000)
    assert noise.min() >= 0.0
    assert noise.max() < 1.0
    assert torch.equal(noise[3:], _reference_rand(2, (2, 1000)))
