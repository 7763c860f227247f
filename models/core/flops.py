"""Floating-point operations of one network call, counted by torch on the loaded weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def gflop_of(network: Callable[..., object], *inputs: torch.Tensor) -> float:
    """GFLOP of ``network(*inputs)`` (a multiply-add counts two), without gradients."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(*inputs)
    return counter.get_total_flops() / 1e9
