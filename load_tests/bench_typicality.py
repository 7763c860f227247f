"""Does a density over the bound's terms beat the bound? AUROC and FPR at 95% TPR of three
scores on the same forward passes: the bound in bits/dim, the bound minus the image's PNG
codelength (Serra et al. 2019), and -log density of the term vector (models.eval.typicality),
with the card's fitted density and, given the fit vectors the CLI saved, each estimator refitted
on them.

Normal images are Fashion-MNIST test images 0..N-1 (never used for fitting or calibration);
the outlier sets are models.eval.outliers' plus two with normal texture and wrong content:
``patch_shuffled`` (each image's 4 x 4 grid of patches permuted) and ``spliced`` (the top half
of one test image over the bottom half of another of a different class).

    python -m load_tests.bench_typicality checkpoints/vae --normal-images 500 --per-set 500 \\
        --fit-vectors /tmp/typ_vae.npz
    python -m load_tests.bench_typicality checkpoints/ddpm --normal-images 60 --per-set 60 \\
        --fit-vectors /tmp/typ_ddpm.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from models.core.card import calibrations_in
from models.core.checkpoints import load_checkpoint
from models.core.noise import seeded_generator
from models.data import load_fashion_mnist
from models.eval.anomaly import auroc, fpr_at_tpr, png_bits_per_dim
from models.eval.outliers import outlier_sets
from models.eval.typicality import ESTIMATORS, Density, bound_bits_per_dim, term_vectors
from models.kinds import kind_of


def patch_shuffled(images: torch.Tensor, generator: torch.Generator, grid: int = 4):
    """Each image's grid x grid patches in a random order: (N, C, H, W), H and W divisible."""
    n, c, h, w = images.shape
    ph, pw = h // grid, w // grid
    patches = images.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(n, grid * grid, c, ph, pw)
    order = torch.stack([torch.randperm(grid * grid, generator=generator) for _ in range(n)])
    shuffled = patches[torch.arange(n)[:, None], order]
    shuffled = shuffled.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return shuffled.reshape(n, c, h, w).contiguous()


def spliced(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """The top half of image i over the bottom half of an image of another class."""
    n, _, h, _ = images.shape
    partner = torch.randperm(n, generator=generator)
    for _ in range(10):  # re-draw partners of the same class
        same = labels[partner] == labels
        if not same.any():
            break
        partner[same] = torch.randint(0, n, (int(same.sum()),), generator=generator)
    out = images.clone()
    out[:, :, h // 2 :] = images[partner, :, h // 2 :]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--normal-images", type=int, default=500)
    parser.add_argument("--per-set", type=int, default=500)
    parser.add_argument("--fit-vectors", type=Path, default=None, help="npz from the CLI")
    parser.add_argument("--cache", type=Path, default=None, help="npz of this run's vectors")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    checkpoint = load_checkpoint(args.checkpoint)
    model, kind = checkpoint.model, kind_of(checkpoint.kind)
    stored = calibrations_in(checkpoint.card)[kind.term_method].term_density
    if stored is None:
        raise SystemExit(f"{args.checkpoint}: no term density; run models.eval.typicality")
    densities = {f"terms ({stored.estimator}, card)": Density.from_dict(stored)}
    if args.fit_vectors is not None:
        fit = np.load(args.fit_vectors)["fit"]
        for estimator in ESTIMATORS:
            densities[f"terms ({estimator}, refit)"] = Density.fit(
                fit, stored.term_names, estimator
            )

    test, labels = load_fashion_mnist("test")
    generator = seeded_generator(args.seed)
    normal = test[: args.normal_images]
    sets = {
        name: images[: args.per_set] for name, images in outlier_sets(normal, generator).items()
    }
    sets["patch_shuffled"] = patch_shuffled(normal[: args.per_set], generator)
    sets["spliced"] = spliced(normal[: args.per_set], labels[: args.per_set], generator)

    vectors: dict[str, np.ndarray] = {}
    if args.cache is not None and args.cache.exists():
        vectors = dict(np.load(args.cache))
    start = time.perf_counter()
    for name, images in {"normal": normal, **sets}.items():
        if name not in vectors:
            noise = seeded_generator(args.seed + 1)
            vectors[name] = term_vectors(model, images, stored.k, noise, args.batch_size)
            print(f"{name}: {len(images)} images, {time.perf_counter() - start:.0f} s so far")
    if args.cache is not None:
        np.savez(args.cache, **vectors)

    def scores(name: str, images: torch.Tensor) -> dict[str, np.ndarray]:
        v = vectors[name]
        bpd = bound_bits_per_dim(torch.from_numpy(v), images[0].numel()).numpy()
        out = {"bits/dim": bpd, "minus PNG": bpd - png_bits_per_dim(images).numpy()}
        return out | {label: d.score(v) for label, d in densities.items()}

    normal_scores = scores("normal", normal)
    columns = list(normal_scores)
    print(
        f"\n{args.checkpoint} ({kind.term_method}, k={stored.k}, terms: "
        f"{', '.join(stored.term_names)}); {len(normal)} normal images, {args.per_set} per set; "
        "AUROC / FPR@95%TPR"
    )
    print(f"| set | {' | '.join(columns)} |")
    print("|---" * (len(columns) + 1) + "|")
    for name, images in sets.items():
        outlier = scores(name, images)
        pairs = [(normal_scores[c], outlier[c]) for c in columns]
        cells = [f"{auroc(*pair):.3f} / {fpr_at_tpr(*pair):.3f}" for pair in pairs]
        print(f"| {name} | {' | '.join(cells)} |")
    card_label = columns[2]
    for fpr, threshold in stored.calibration.thresholds.items():
        observed = float((normal_scores[card_label] > threshold).mean())
        print(f"card's terms threshold at FPR {fpr}: {observed:.3f} of the normal images above it")


if __name__ == "__main__":
    main()
