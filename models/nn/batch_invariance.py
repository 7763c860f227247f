"""Network calls whose output for a row does not depend on the batch around it, bit for bit.

CPU kernels (oneDNN convolutions, GEMMs) choose their algorithm by batch size, so one image
can come out a few ulps apart alone and inside a batch; over 50 denoising steps that flips
pixels. Calling the network on chunks of exactly ``rows`` rows, the last one padded with copies
of its first row, fixes the algorithm. Measured on the shipped VAE decoder and DDPM UNet on this
CPU (with :class:`models.nn.layers.RowwiseLinear` for the dense layers): with chunks of 4 or 8
rows, a row's output is identical at every position and with any companions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def in_fixed_chunks(
    fn: Callable[..., torch.Tensor], rows: int | None, *inputs: torch.Tensor
) -> torch.Tensor:
    """fn(*inputs) computed ``rows`` rows at a time (all inputs share dim 0); None: one call."""
    if rows is None:
        return fn(*inputs)
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    n = inputs[0].shape[0]
    outputs = []
    for start in range(0, n, rows):
        chunk = [tensor[start : start + rows] for tensor in inputs]
        filled = chunk[0].shape[0]
        if filled < rows:
            chunk = [
                torch.cat([part, part[:1].expand(rows - filled, *part.shape[1:])]) for part in chunk
            ]
        outputs.append(fn(*chunk)[:filled])
    return torch.cat(outputs)


class FixedChunkDenoiser:
    """A denoiser (x_t (B, C, H, W), t (B,)) -> output evaluated in fixed-size chunks, for the
    samplers in :mod:`models.diffusion.samplers` when a seed must give the same image in any
    batch."""

    def __init__(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rows: int):
        self.model, self.rows = model, rows

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return in_fixed_chunks(self.model, self.rows, x_t, t)
