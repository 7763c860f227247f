"""Speed options for a model's networks on CPU: channels_last memory format, bf16 autocast and
torch.compile, applied in place to the convolutional networks inside a VAE or a DDPM.

The bounds, samplers and losses around the networks stay float32 and eager: only the
networks (VAE encoder/decoder stacks, the DDPM's UNet) change. ``load_tests.bench_cpu_modes``
measures each option against float32 eager, speed and bits/dim.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Acceleration:
    # Convolution weights (and so activations) in NHWC order, which oneDNN often prefers.
    channels_last: bool = False
    # bf16 autocast of the networks' forward passes; outputs are cast back to float32.
    bf16_autocast: bool = False
    # torch.compile (Inductor, default mode) of each network; the first calls compile.
    compile: bool = False

    @property
    def name(self) -> str:
        parts = [
            label
            for label, on in (
                ("channels_last", self.channels_last),
                ("bf16", self.bf16_autocast),
                ("compile", self.compile),
            )
            if on
        ]
        return "+".join(parts) or "fp32_eager"


def native_bf16_supported() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16).

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is also true on plain AVX-512, where
    oneDNN emulates bf16 (slower than float32); this asks for the real instructions.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, check, lambda: False)()) for check in checks)


def bf16_autocast_usable() -> bool:
    """Whether CPU bf16 autocast runs here at all (natively or emulated by oneDNN)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def networks(model: nn.Module) -> list[nn.Module]:
    """The convolutional networks inside ``model`` that the options apply to."""
    from models.kinds import KindError, kind_of

    try:
        return kind_of(model).networks(model)
    except KindError:  # not a servable kind (the classifier): the module itself
        return [model]


def accelerate(model: nn.Module, options: Acceleration) -> nn.Module:
    """Apply ``options`` to ``model``'s networks in place; returns ``model``.

    Parameter names and the state dict are unchanged, so checkpoints and optimizers work as
    before. Raises ValueError for bf16 autocast on a CPU where torch cannot run it.
    """
    if options.bf16_autocast and not bf16_autocast_usable():
        raise ValueError("bf16 autocast: this CPU/torch build has no bf16 support in oneDNN")
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    for network in networks(model):
        if options.bf16_autocast:
            network.forward = _in_bf16_autocast(network.forward)  # type: ignore[method-assign]
        if options.compile:
            network.compile()
    return model


def _in_bf16_autocast(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        with torch.autocast("cpu", torch.bfloat16):
            out = forward(*args, **kwargs)
        return out.float()

    return run
