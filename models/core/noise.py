"""Seeded noise that does not depend on how rows are batched together.

Every stochastic function in :mod:`models` takes ``generator``: either one
``torch.Generator`` for the whole batch, or one generator per row of the batch. In the
per-row form, consecutive rows that share one generator object form a *group* whose noise is
drawn as one block, in the same order at every step. A request's images therefore depend only
on its own seed and size, not on which other requests share its forward passes.

Noise is drawn on the generator's device (CPU by default) and then moved, so the same seed
gives the same noise on CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator with ``seed``; CPU so results do not depend on the compute device."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def randn_rows(
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` = (B, ...), row groups drawn from their generator."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand_rows(
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) noise of ``shape`` = (B, ...), row groups drawn from their generator."""
    return _draw(torch.rand, shape, generator, device, dtype)


def _draw(
    draw: Callable[..., torch.Tensor],
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    shape = tuple(shape)
    if isinstance(generator, torch.Generator):
        noise = draw(shape, generator=generator, device=generator.device, dtype=dtype)
        return noise.to(device) if device is not None else noise
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} rows")
    if shape[0] == 0:
        return torch.empty(shape, device=device, dtype=dtype)
    blocks = []
    for group_generator, rows in _row_groups(generator):
        block_shape = (rows, *shape[1:])
        blocks.append(
            draw(
                block_shape, generator=group_generator, device=group_generator.device, dtype=dtype
            ).to(device or group_generator.device)
        )
    return torch.cat(blocks, dim=0)


def _row_groups(generators: Sequence[torch.Generator]) -> list[tuple[torch.Generator, int]]:
    """Runs of consecutive rows that share one generator object, as (generator, rows)."""
    groups: list[tuple[torch.Generator, int]] = []
    for generator in generators:
        if groups and groups[-1][0] is generator:
            groups[-1] = (generator, groups[-1][1] + 1)
        else:
            groups.append((generator, 1))
    return groups
