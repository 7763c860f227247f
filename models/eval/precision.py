"""TF32 against strict float32: how far the figures of a TF32 evaluation can be from exact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from models.core.card import PrecisionCheck
from models.core.checkpoints import load_checkpoint
from models.eval.context import EvalContext
from models.kinds import kind_of


def set_tf32(enabled: bool) -> None:
    """TF32 matrix units for float32 matmuls and convolutions on CUDA (no effect on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def precision_check(directory: Path, ctx: EvalContext, seed: int) -> PrecisionCheck:
    """The headline bound of the first images in strict float32 and in TF32, same noise."""
    model = load_checkpoint(directory, ctx.device).model.eval()
    kind = kind_of(model)
    n = ctx.sizes.precision_check_images
    sizes = dataclasses.replace(ctx.sizes, likelihood_images=n, iwae_images=0)
    per_image = {}
    for tf32 in (False, True):
        set_tf32(tf32)
        check = dataclasses.replace(ctx, sizes=sizes, generator=torch.Generator().manual_seed(seed))
        per_image[tf32] = kind.likelihood_report(model, check)[1]  # (n,) bits/dim
    difference = (per_image[True] - per_image[False]).abs()
    return PrecisionCheck(
        images=n,
        float32_bits_per_dim=per_image[False].mean().item(),
        tf32_bits_per_dim=per_image[True].mean().item(),
        max_abs_difference_bits_per_dim=difference.max().item(),
    )
