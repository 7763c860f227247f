"""Sample quality: the Fréchet distance of a model's samples to the test set in the features of
the project's classifier, beside the real-data floor at the same sample size, and grids; or,
where that classifier means nothing (images other than Fashion-MNIST), grids alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from models.core.card import ClassifierInfo, SampleGrids, SampleQuality, SamplerQuality
from models.core.pixels import image_grid
from models.eval.context import EvalContext
from models.eval.frechet import FeatureStatistics, frechet_distance
from models.nn.classifier import FashionClassifier
from models.training.classifier import extract_features

Sampler = Callable[[int], torch.Tensor]  # n -> uint8 images (n, C, H, W)
GRID_IMAGES = 64


def sample_quality(
    samplers: Mapping[str, tuple[int, Sampler]],
    classifier: FashionClassifier,
    classifier_info: ClassifierInfo,
    ctx: EvalContext,
) -> SampleQuality:
    """Fréchet distance of each sampler's images to the test set, and of as many real training
    images (the floor: what a perfect sampler would score at that sample size). A sampler asked
    for fewer than 2 images is skipped (no covariance)."""
    if ctx.train is None:
        raise ValueError("the Fréchet distance's real-data floor needs the training images")
    test_stats = FeatureStatistics.of(extract_features(classifier, ctx.test))
    floors: dict[int, float] = {}
    figures: dict[str, SamplerQuality] = {}
    for name, (n, draw) in samplers.items():
        if n < 2:
            continue
        if n not in floors:
            real = ctx.train[torch.randperm(len(ctx.train), generator=ctx.generator)[:n]]
            floors[n] = frechet_distance(
                FeatureStatistics.of(extract_features(classifier, real)), test_stats
            )
        started = time.perf_counter()
        chunks = tqdm(torch.arange(n).split(ctx.sizes.batch_size), desc=name, leave=False)
        images = torch.cat([draw(len(c)) for c in chunks])  # (n, C, H, W) uint8
        seconds = time.perf_counter() - started
        distance = frechet_distance(
            FeatureStatistics.of(extract_features(classifier, images)), test_stats
        )
        grid_file = f"samples_{name}.png"
        save_grid(images[:GRID_IMAGES], ctx.out_dir / grid_file)
        figures[name] = SamplerQuality(
            num_samples=n,
            frechet_distance=distance,
            real_data_floor=floors[n],
            ratio_to_floor=distance / floors[n],
            seconds_per_image=seconds / n,
            grid=grid_file,
        )
    return SampleQuality(
        classifier=classifier_info,
        ddim_eta=ctx.ddim_eta,
        reference=f"all {len(ctx.test)} test images",
        samplers=figures,
    )


def sample_grids(
    samplers: Mapping[str, tuple[int, Sampler]], not_measured: str, ctx: EvalContext
) -> SampleGrids:
    """A grid of at most GRID_IMAGES samples of each sampler (a sampler asked for none is
    skipped), saved beside the card, and ``not_measured``: why there is no quality figure."""
    grids = {}
    for name, (n, draw) in samplers.items():
        n = min(n, GRID_IMAGES)
        if n < 1:
            continue
        chunks = torch.arange(n).split(ctx.sizes.batch_size)
        images = torch.cat([draw(len(c)) for c in tqdm(chunks, desc=name, leave=False)])
        grids[name] = f"samples_{name}.png"
        save_grid(images, ctx.out_dir / grids[name])
    return SampleGrids(not_measured=not_measured, grids=grids)


def save_grid(images: torch.Tensor, path: Path) -> None:
    """uint8 images (N, C, H, W) as one PNG grid: mode 'L' for C = 1, 'RGB' for C = 3."""
    channels = images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"a grid needs 1 or 3 channels, got {channels}")
    grid = image_grid(images).permute(1, 2, 0)  # (H', W', C)
    pixels = grid[..., 0] if channels == 1 else grid
    image = Image.fromarray(pixels.contiguous().numpy())
    image.save(path, optimize=True)
