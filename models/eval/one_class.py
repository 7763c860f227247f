"""The Fashion-MNIST one-class protocol: one model per class, trained on that class alone.

For each of the 10 classes, the class's training images are exported to a PNG folder and a
model is trained on that folder (so the folder path is what is exercised), holding out a
validation split; every one of the 10,000 test images is then scored, the class's own test
images being normal and the other nine classes' anomalous, and AUROC is reported per class and
as the mean over classes (Golan & El-Yaniv 2018, whose GEOM reaches a mean of 93.5; Ruff et
al. 2018, Deep SVDD).

    python -m models.eval.one_class --out runs/one_class --config configs/vae_one_class.json

Per class, the per-image terms of every score are kept in ``OUT/class_<c>/scores.npz`` (test
and validation images), so a new score method can be measured without training again;
``OUT/results.json`` holds the AUROCs, the configs and the runtimes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.core.checkpoints import load_checkpoint
from models.core.pixels import pixels_to_signed_unit
from models.core.progressive import run_to_end
from models.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from models.eval.anomaly import auroc, complexity_corrected_score, png_bits_per_dim
from models.eval.codecs import codec_bits_per_dim
from models.kinds import kind_of
from models.training.experiment import Experiment
from models.training.sources import load_training_data

CHUNK = 500
# Stronger complexity corrections than PNG (Serra et al. 2019 name PNG, JPEG2000 and FLIF;
# issue 24 item 3 measured WebP lossless and LZMA best on the bundled VAE's outlier sets).
EXTRA_CODECS = ("webp", "lzma")


def export_class_folder(images: torch.Tensor, folder: Path) -> Path:
    """uint8 (N, 1, H, W) -> ``folder/00000.png`` ... (skipped when already complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == len(images):
        return folder
    for index, image in enumerate(images):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{index:05d}.png")
    return folder


def train_on_folder(
    config: Path, folder: Path, run: Path, threads: int
) -> tuple[Path, torch.Tensor]:
    """``python -m models.train vae --data folder`` (resumable; it holds out a seeded
    validation split); the exported checkpoint and the held-out images (M, C, H, W) uint8."""
    from models import train

    experiment = Experiment.from_file("vae", config)
    if _steps_done(run) < experiment.train.steps:
        command = ["vae", "--config", str(config), "--data", str(folder), "--out", str(run)]
        if train.main([*command, "--threads", str(threads)]) != 0:
            raise SystemExit(f"training on {folder} failed")
    shape = experiment.model_kind.image_shape(experiment.model_config)
    held_out = load_training_data(
        str(folder), shape, run, seed=experiment.train.seed, resuming=True
    )
    assert held_out.validation is not None, "a folder run holds images out"
    return run / "checkpoint", held_out.validation


def train_background(run: Path, mutation_rate: float, threads: int) -> Path:
    """``python -m models.train vae --background-of RUN --mutation-rate R`` (resumable): the
    class model's background (Ren et al. 2019), same config, trained on its class's images
    with each value replaced by a uniform draw with probability R; its exported checkpoint."""
    from models import train

    background = run.parent / f"{run.name}_background"
    if _steps_done(background) < _steps_done(run):
        command = ["vae", "--background-of", str(run), "--out", str(background)]
        command += ["--mutation-rate", str(mutation_rate), "--threads", str(threads)]
        if train.main(command) != 0:
            raise SystemExit(f"training the background of {run} failed")
    return background / "checkpoint"


def _steps_done(run: Path) -> int:
    training = run / "checkpoint" / "training.json"
    return json.loads(training.read_text())["steps_done"] if training.exists() else 0


@torch.no_grad()
def per_image_terms(checkpoint: Path, images: torch.Tensor, iwae_k: int) -> dict[str, np.ndarray]:
    """(N,) arrays of the model's terms: -ELBO bits/dim with its reconstruction and KL terms
    in nats, and the IWAE bound in bits/dim (when ``iwae_k`` > 0); seeded, chunked. The
    images' codelengths, which need no model, are :func:`codec_terms`."""
    model = load_checkpoint(checkpoint).model
    kind = kind_of(model)
    elbo, iwae = kind.method_for(model, "elbo"), kind.method_for(model, "iwae")
    columns: dict[str, list[torch.Tensor]] = {}
    generator = torch.Generator().manual_seed(0)
    for chunk in images.split(CHUNK):
        x = pixels_to_signed_unit(chunk)
        terms = run_to_end(elbo.run(model, x, None, generator, 4096))
        found = {
            "elbo_bits_per_dim": terms["total_bits_per_dim"],
            "reconstruction_nats": terms["reconstruction_nats"],
            "kl_nats": terms["kl_nats"],
        }
        if iwae_k > 0:
            bound = run_to_end(iwae.run(model, x, iwae_k, generator, 4096))
            found["iwae_bits_per_dim"] = bound["total_bits_per_dim"]
        for name, values in found.items():
            columns.setdefault(name, []).append(values.double())
    return {name: torch.cat(parts).numpy() for name, parts in columns.items()}


def codec_terms(images: torch.Tensor) -> dict[str, np.ndarray]:
    """uint8 (N, C, H, W) -> each codec's codelength, ``<codec>_bits_per_dim``: (N,)."""
    terms = {"png_bits_per_dim": png_bits_per_dim(images)}
    terms.update({f"{c}_bits_per_dim": codec_bits_per_dim(images, c) for c in EXTRA_CODECS})
    return {name: values.double().numpy() for name, values in terms.items()}


def background_terms(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    """The background model's -ELBO in bits/dim per image: (N,), the same draws as the
    foreground's (:func:`per_image_terms`, seed 0)."""
    return per_image_terms(checkpoint, images, iwae_k=0)["elbo_bits_per_dim"]


# Score methods: per-image terms -> score (higher is more anomalous). Each sees the test
# terms and the class's validation terms (normal images the model never trained on).
ScoreFn = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], np.ndarray]


def _corrected(name: str, codec: str = "png") -> ScoreFn:
    return lambda test, _: np.asarray(
        complexity_corrected_score(
            torch.from_numpy(test[name]), torch.from_numpy(test[f"{codec}_bits_per_dim"])
        )
    )


TERMS = ("reconstruction_nats", "kl_nats")


def _term_density(estimator: str) -> ScoreFn:
    """-log density of the (reconstruction, KL) vector, fitted on the validation images
    (models.eval.typicality, in the spirit of DoSE, Morningstar et al. 2021)."""
    from models.eval.typicality import Density

    def score(test: dict[str, np.ndarray], validation: dict[str, np.ndarray]) -> np.ndarray:
        fit = np.stack([validation[name] for name in TERMS], axis=1)
        density = Density.fit(fit, TERMS, estimator)  # type: ignore[arg-type]
        return density.score(np.stack([test[name] for name in TERMS], axis=1))

    return score


# name -> (the test terms it needs, the score)
SCORES: dict[str, tuple[tuple[str, ...], ScoreFn]] = {
    "elbo": (("elbo_bits_per_dim",), lambda test, _: test["elbo_bits_per_dim"]),
    "iwae": (("iwae_bits_per_dim",), lambda test, _: test["iwae_bits_per_dim"]),
    **{
        f"{bound}_minus_{codec}": (
            (f"{bound}_bits_per_dim", f"{codec}_bits_per_dim"),
            _corrected(f"{bound}_bits_per_dim", codec),
        )
        for bound in ("elbo", "iwae")
        for codec in ("png", *EXTRA_CODECS)
    },
    # Ren et al. 2019, Eq. 5 as codelengths: the foreground's bound minus its background's.
    "elbo_ratio": (
        ("elbo_bits_per_dim", "background_elbo_bits_per_dim"),
        lambda test, _: test["elbo_bits_per_dim"] - test["background_elbo_bits_per_dim"],
    ),
    "terms_gaussian": (TERMS, _term_density("gaussian")),
    "terms_kde": (TERMS, _term_density("kde")),
}


def class_aurocs(test: dict[str, np.ndarray], validation, labels: np.ndarray, normal: int):
    """AUROC of every score whose terms were measured, the class's test images normal and
    the rest anomalous."""
    is_normal = labels == normal
    scores = {
        name: fn(test, validation)
        for name, (needs, fn) in SCORES.items()
        if all(term in test for term in needs)
    }
    return {name: auroc(score[is_normal], score[~is_normal]) for name, score in scores.items()}


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    methods = list(next(iter(results.values())))
    lines = ["| class | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for c, row in results.items():
        name = FASHION_MNIST_CLASSES[int(c)]
        lines.append(f"| {c} {name} | " + " | ".join(f"{100 * row[m]:.1f}" for m in methods) + " |")
    means = {m: np.mean([row[m] for row in results.values()]) for m in methods}
    lines.append("| **mean** | " + " | ".join(f"**{100 * means[m]:.1f}**" for m in methods) + " |")
    return "\n".join(lines)


def _train_and_score(
    args: argparse.Namespace,
    c: int,
    run: Path,
    class_images: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
) -> dict:
    started = time.perf_counter()
    folder = export_class_folder(class_images, args.out / "data" / f"class_{c}")
    checkpoint, validation_images = train_on_folder(args.config, folder, run, args.threads)
    trained = time.perf_counter()
    test_terms = {**per_image_terms(checkpoint, test, args.iwae_k), **codec_terms(test)}
    validation_terms = {
        **per_image_terms(checkpoint, validation_images, args.iwae_k),
        **codec_terms(validation_images),
    }
    if args.background_mutation_rate is not None:
        background = train_background(run, args.background_mutation_rate, args.threads)
        test_terms["background_elbo_bits_per_dim"] = background_terms(background, test)
        validation_terms["background_elbo_bits_per_dim"] = background_terms(
            background, validation_images
        )
    np.savez(
        run / "scores.npz",
        labels=test_labels.numpy(),
        **{f"test_{n}": v for n, v in test_terms.items()},
        **{f"validation_{n}": v for n, v in validation_terms.items()},
    )
    return {
        "auroc": class_aurocs(test_terms, validation_terms, test_labels.numpy(), c),
        "train_images": len(class_images) - len(validation_images),
        "validation_images": len(validation_images),
        "train_seconds": round(trained - started, 1),
        "score_seconds": round(time.perf_counter() - trained, 1),
    }


def _saved_terms(args: argparse.Namespace, run: Path, test: torch.Tensor):
    """A scored class's saved terms (test, validation, labels), with the test terms a later
    score needs added and saved: the extra codecs, and the background's bound when asked."""
    saved = np.load(run / "scores.npz")
    arrays = {name: saved[name] for name in saved.files}
    added = {}
    if any(f"test_{codec}_bits_per_dim" not in arrays for codec in EXTRA_CODECS):
        added = {f"test_{k}": v for k, v in codec_terms(test).items()}
    wanted = "test_background_elbo_bits_per_dim"
    if args.background_mutation_rate is not None and wanted not in arrays:
        background = train_background(run, args.background_mutation_rate, args.threads)
        added[wanted] = background_terms(background, test)
    added = {name: values for name, values in added.items() if name not in arrays}
    if added:
        arrays.update(added)
        np.savez(run / "scores.npz", **arrays)
    test_terms = {n[5:]: v for n, v in arrays.items() if n.startswith("test_")}
    validation_terms = {n[11:]: v for n, v in arrays.items() if n.startswith("validation_")}
    return test_terms, validation_terms, arrays["labels"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fashion-MNIST one-class protocol.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/vae_one_class.json"))
    parser.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--iwae-k", type=int, default=0, help="0: no IWAE scores")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    parser.add_argument(
        "--background-mutation-rate",
        type=float,
        default=None,
        help="also train each class model's background (Ren et al. 2019) on its class's "
        "images mutated at this rate, and score the likelihood ratio (elbo_ratio)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    train, train_labels = load_fashion_mnist("train", args.data_root)
    test, test_labels = load_fashion_mnist("test", args.data_root)
    test, test_labels = test[: args.test_images], test_labels[: args.test_images]
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("classes", {})
    for c in args.classes:
        run = args.out / f"class_{c}"
        if (run / "scores.npz").exists():  # trained and scored: measure the scores again
            test_terms, validation_terms, labels = _saved_terms(args, run, test)
            entry = results["classes"][str(c)]
            entry["auroc"] = class_aurocs(test_terms, validation_terms, labels, c)
        else:
            entry = _train_and_score(args, c, run, train[train_labels == c], test, test_labels)
            results["classes"][str(c)] = entry
        print(f"class {c}: " + ", ".join(f"{m} {100 * a:.1f}" for m, a in entry["auroc"].items()))
        results.update(
            config=json.loads(args.config.read_text()),
            iwae_k=args.iwae_k,
            command="python -m models.eval.one_class "
            + " ".join(sys.argv[1:] if argv is None else argv),
            hardware=platform.processor() or platform.machine(),
            torch=torch.__version__,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    table = {c: entry["auroc"] for c, entry in sorted(results["classes"].items())}
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
