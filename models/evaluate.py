"""Evaluation CLI: measure a VAE or DDPM checkpoint on Fashion-MNIST and write its model card.

    python -m models.evaluate checkpoints/ddpm --classifier checkpoints/classifier

Sections: test-set likelihood in bits/dim term by term; sample quality as the Fréchet distance
in the features of the project's classifier, beside the real-data floor at the same sample
size; anomaly detection (AUROC and FPR at 95% TPR of each score, raw and complexity-corrected)
against handwritten digits and corrupted test images; calibrated thresholds from held-out normal
test images. Every figure goes into ``model_card.json`` beside the weights with its sample size,
the command, the hardware and the runtime, and a table is printed.

Test-set split: images [0, 5000) are the normal side of the anomaly metrics (and the likelihood
subset when not all 10,000 are used); images [5000, 10000) are held out for calibration, so the
false-positive rate each threshold achieves on the first half checks the calibration.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.core.checkpoints import WEIGHTS_FILE, load_checkpoint, read_model_card, write_model_card
from models.core.device import resolve_device
from models.core.pixels import image_grid, pixels_to_signed_unit, signed_unit_to_pixels
from models.data import load_fashion_mnist
from models.diffusion.bound import vlb_exact
from models.diffusion.ddpm import DDPM
from models.diffusion.samplers import ddim_sample, ddpm_ancestral_sample
from models.eval.anomaly import (
    Calibration,
    auroc,
    complexity_corrected_score,
    fpr_at_tpr,
    png_bits_per_dim,
)
from models.eval.frechet import FeatureStatistics, frechet_distance
from models.eval.outliers import outlier_sets
from models.eval.scoring import (
    BoundFn,
    elbo_bits_per_dim,
    in_chunks,
    iwae_bits_per_dim,
    vlb_exact_bits_per_dim,
    vlb_mc_bits_per_dim,
)
from models.nn.classifier import FashionClassifier
from models.training.classifier import extract_features, hardware_description
from models.vae.model import VAE

CALIBRATION_START = 5000  # test images from here on are held out for calibration
REPORTED_FPRS = (0.01, 0.05)
GRID_IMAGES = 64


@dataclass(frozen=True)
class EvaluationSizes:
    """How many images each figure is measured on; the card records them beside the figures."""

    likelihood_images: int = 10_000  # VAE ELBO; DDPM exact bound (T network calls per image)
    iwae_images: int = 100
    iwae_k: int = 1000
    score_iwae_k: int = 32  # IWAE used as an anomaly score
    score_mc_k: int = 10  # DDPM Monte-Carlo bound used as an anomaly score
    fd_samples: int = 10_000  # VAE samples; DDPM DDIM samples
    ddim_steps: int = 50
    ancestral_samples: int = 100
    anomaly_images: int = 1000  # per set, for the cheap scores
    anomaly_exact_images: int = 20  # per set, for the exact DDPM bound
    calibration_images: int = 2000
    calibration_exact_images: int = 50
    batch_size: int = 250
    # Images per network call of the exact DDPM bound (several timesteps of a chunk share a
    # call); a GPU wants thousands, a CPU gains nothing past a few hundred.
    network_batch: int = 256
    # Images whose bound is measured twice, in strict float32 and in TF32, when --tf32 is on.
    precision_check_images: int = 50

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"{field.name} must be >= 0")
        for name in ("anomaly_images", "anomaly_exact_images"):
            if getattr(self, name) > CALIBRATION_START:
                raise ValueError(f"{name} must be <= {CALIBRATION_START}")


@dataclass
class Context:
    """What every section needs: data, device, one seeded generator, sizes."""

    test: torch.Tensor  # (10000, 1, 28, 28) uint8
    train: torch.Tensor  # (60000, 1, 28, 28) uint8
    device: torch.device
    generator: torch.Generator
    sizes: EvaluationSizes
    out_dir: Path
    # DDIM's eta for the sample-quality section (1: the service's default sampler).
    ddim_eta: float = 1.0

    def score(self, bound: BoundFn, images: torch.Tensor, label: str, chunk: int | None = None):
        bar = tqdm(total=images.shape[0], desc=label, leave=False, dynamic_ncols=True)
        try:
            return in_chunks(bound, images, self.device, chunk or self.sizes.batch_size, bar.update)
        finally:
            bar.close()


def _mean_and_stderr(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    stderr = values.std().item() / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return {"mean": values.mean().item(), "stderr": stderr}


# Likelihood ----------------------------------------------------------------------------------


def vae_likelihood(vae: VAE, ctx: Context) -> tuple[dict[str, Any], torch.Tensor]:
    """Negative ELBO term by term on the first N test images, and the IWAE bound with large k."""
    images = ctx.test[: ctx.sizes.likelihood_images]
    recon, kl, total = [], [], []
    for chunk in tqdm(images.split(ctx.sizes.batch_size), desc="elbo", leave=False):
        with torch.no_grad():
            bound = vae.negative_elbo(pixels_to_signed_unit(chunk).to(ctx.device), ctx.generator)
        recon.append(bound.reconstruction_nats.cpu())
        kl.append(bound.kl_nats.cpu())
        total.append(bound.total_bits_per_dim.double().cpu())
    dims = vae.num_dims
    to_bpd = 1.0 / (dims * np.log(2.0))
    elbo = torch.cat(total)
    report: dict[str, Any] = {
        "test_images": len(images),
        "elbo_bits_per_dim": _mean_and_stderr(elbo),
        "reconstruction_bits_per_dim": torch.cat(recon).double().mean().item() * to_bpd,
        "kl_bits_per_dim": torch.cat(kl).double().mean().item() * to_bpd,
    }
    n_iwae = ctx.sizes.iwae_images
    if n_iwae:
        k = ctx.sizes.iwae_k
        iwae = ctx.score(iwae_bits_per_dim(vae, k, ctx.generator), ctx.test[:n_iwae], "iwae", 4)
        report["iwae"] = {
            "k": k,
            "test_images": n_iwae,
            "iwae_bits_per_dim": _mean_and_stderr(iwae),
            "elbo_bits_per_dim_same_images": _mean_and_stderr(elbo[:n_iwae]),
        }
    return report, elbo


def ddpm_likelihood(ddpm: DDPM, ctx: Context) -> tuple[dict[str, Any], torch.Tensor]:
    """The exact bound over all T steps, split into L_T, the denoising terms and L_0."""
    images = ctx.test[: ctx.sizes.likelihood_images]
    prior, denoising, reconstruction = [], [], []
    bar = tqdm(total=len(images), desc="vlb_exact", leave=False, dynamic_ncols=True)
    for chunk in images.split(ctx.sizes.batch_size):
        with torch.no_grad():
            bound = vlb_exact(
                ddpm.diffusion,
                ddpm,
                pixels_to_signed_unit(chunk).to(ctx.device),
                ctx.generator,
                max_batch=ctx.sizes.network_batch,
            )
        prior.append(bound.bits_per_dim(bound.prior_nats))
        denoising.append(bound.bits_per_dim(bound.denoising_nats))
        reconstruction.append(bound.bits_per_dim(bound.reconstruction_nats))
        bar.update(len(chunk))
    bar.close()
    prior_bpd, denoising_bpd, recon_bpd = (
        torch.cat(p).double() for p in (prior, denoising, reconstruction)
    )
    total = prior_bpd + denoising_bpd + recon_bpd
    report = {
        "test_images": len(images),
        "num_timesteps": ddpm.diffusion.num_timesteps,
        "vlb_bits_per_dim": _mean_and_stderr(total),
        "prior_bits_per_dim": prior_bpd.mean().item(),
        "denoising_bits_per_dim": denoising_bpd.mean().item(),
        "reconstruction_bits_per_dim": recon_bpd.mean().item(),
    }
    return report, total


# Sample quality ------------------------------------------------------------------------------

Sampler = Callable[[int], torch.Tensor]  # n -> uint8 images (n, C, H, W)


def vae_samplers(vae: VAE, ctx: Context) -> dict[str, tuple[int, Sampler]]:
    def decoder_mean(n: int) -> torch.Tensor:
        return signed_unit_to_pixels(vae.sample(n, ctx.generator).cpu())

    def pixel_sample(n: int) -> torch.Tensor:
        return signed_unit_to_pixels(vae.sample(n, ctx.generator, sample_pixels=True).cpu())

    n = ctx.sizes.fd_samples
    return {"decoder_mean": (n, decoder_mean), "pixel_sample": (n, pixel_sample)}


def ddpm_samplers(ddpm: DDPM, ctx: Context) -> dict[str, tuple[int, Sampler]]:
    shape = ddpm.image_shape
    steps = ctx.sizes.ddim_steps

    def ddim(n: int) -> torch.Tensor:
        x = ddim_sample(ddpm.diffusion, ddpm, (n, *shape), steps, ctx.generator, ctx.ddim_eta)
        return signed_unit_to_pixels(x.cpu())

    def ancestral(n: int) -> torch.Tensor:
        x = ddpm_ancestral_sample(ddpm.diffusion, ddpm, (n, *shape), ctx.generator)
        return signed_unit_to_pixels(x.cpu())

    return {
        f"ddim_{steps}": (ctx.sizes.fd_samples, ddim),
        f"ancestral_{ddpm.diffusion.num_timesteps}": (ctx.sizes.ancestral_samples, ancestral),
    }


def sample_quality(
    samplers: dict[str, tuple[int, Sampler]], classifier: FashionClassifier, ctx: Context
) -> dict[str, Any]:
    """Fréchet distance of each sampler's images to the test set, and of as many real training
    images (the floor: what a perfect sampler would score at that sample size)."""
    test_stats = FeatureStatistics.of(extract_features(classifier, ctx.test))
    floors: dict[int, float] = {}
    report: dict[str, Any] = {"reference": f"all {len(ctx.test)} test images", "samplers": {}}
    for name, (n, draw) in samplers.items():
        if n < 2:
            continue
        if n not in floors:
            real = ctx.train[torch.randperm(len(ctx.train), generator=ctx.generator)[:n]]
            floors[n] = frechet_distance(
                FeatureStatistics.of(extract_features(classifier, real)), test_stats
            )
        started = time.perf_counter()
        images = torch.cat(
            [
                draw(len(c))
                for c in tqdm(torch.arange(n).split(ctx.sizes.batch_size), desc=name, leave=False)
            ]
        )
        seconds = time.perf_counter() - started
        distance = frechet_distance(
            FeatureStatistics.of(extract_features(classifier, images)), test_stats
        )
        grid_file = f"samples_{name}.png"
        save_grid(images[:GRID_IMAGES], ctx.out_dir / grid_file)
        report["samplers"][name] = {
            "num_samples": n,
            "frechet_distance": distance,
            "real_data_floor": floors[n],
            "ratio_to_floor": distance / floors[n],
            "seconds_per_image": seconds / n,
            "grid": grid_file,
        }
    return report


def save_grid(images: torch.Tensor, path: Path) -> None:
    Image.fromarray(image_grid(images)[0].numpy(), mode="L").save(path, optimize=True)


# Anomaly detection and calibration ---------------------------------------------------------


@dataclass(frozen=True)
class ScoreMethod:
    name: str  # the service's method name
    k: int | None
    bound: BoundFn
    normal_images: int  # per set, for AUROC / FPR@95
    calibration_images: int
    chunk: int | None = None


def _detection(normal: torch.Tensor, anomalous: torch.Tensor) -> dict[str, float]:
    return {"auroc": auroc(normal, anomalous), "fpr_at_95_tpr": fpr_at_tpr(normal, anomalous)}


def anomaly_and_calibration(
    method: ScoreMethod, ctx: Context, known_normal_scores: torch.Tensor | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """AUROC / FPR@95 against each outlier set, raw and minus PNG bits/dim (Serra et al. 2019),
    and the calibration on held-out normal images with the FPR it achieves on the others."""
    n = method.normal_images
    normal = ctx.test[:n]
    if known_normal_scores is not None and len(known_normal_scores) >= n:
        raw_normal = known_normal_scores[:n]
    else:
        raw_normal = ctx.score(method.bound, normal, f"{method.name} normal", method.chunk)
    png_normal = png_bits_per_dim(normal)
    detection: dict[str, Any] = {"normal_images": n, "sets": {}}
    for name, images in outlier_sets(normal, ctx.generator).items():
        raw = ctx.score(method.bound, images, f"{method.name} {name}", method.chunk)
        corrected = complexity_corrected_score(raw, png_bits_per_dim(images))
        detection["sets"][name] = {
            "mean_bits_per_dim": raw.mean().item(),
            "raw": _detection(raw_normal, raw),
            "minus_png": _detection(complexity_corrected_score(raw_normal, png_normal), corrected),
        }
    detection["normal_mean_bits_per_dim"] = raw_normal.mean().item()

    held_out = ctx.test[CALIBRATION_START : CALIBRATION_START + method.calibration_images]
    raw_held = ctx.score(method.bound, held_out, f"{method.name} calibration", method.chunk)
    source = (
        f"Fashion-MNIST test images {CALIBRATION_START}..{CALIBRATION_START + len(held_out) - 1}"
    )
    kinds = {
        "bits_per_dim": (raw_held, raw_normal),
        "bits_per_dim_minus_png": (
            complexity_corrected_score(raw_held, png_bits_per_dim(held_out)),
            complexity_corrected_score(raw_normal, png_normal),
        ),
    }
    calibration: dict[str, Any] = {"k": method.k, "scores": {}}
    for kind, (held, other_normal) in kinds.items():
        fitted = Calibration.of(held, source)
        fprs = [f for f in REPORTED_FPRS if f >= fitted.min_fpr]
        entry = fitted.to_dict(fprs)
        entry["observed_fpr_on_other_normal_images"] = {
            str(f): float((other_normal.numpy() > fitted.threshold(f)).mean()) for f in fprs
        }
        calibration["scores"][kind] = entry
    return detection, calibration


def vae_methods(vae: VAE, ctx: Context) -> list[ScoreMethod]:
    s = ctx.sizes
    return [
        ScoreMethod(
            "elbo",
            None,
            elbo_bits_per_dim(vae, ctx.generator),
            s.anomaly_images,
            s.calibration_images,
        ),
        ScoreMethod(
            "iwae",
            s.score_iwae_k,
            iwae_bits_per_dim(vae, s.score_iwae_k, ctx.generator),
            s.anomaly_images,
            s.calibration_images,
            chunk=max(1, 2048 // max(1, s.score_iwae_k)),
        ),
    ]


def ddpm_methods(ddpm: DDPM, ctx: Context) -> list[ScoreMethod]:
    s = ctx.sizes
    return [
        ScoreMethod(
            "vlb_exact",
            None,
            vlb_exact_bits_per_dim(ddpm, ctx.generator),
            s.anomaly_exact_images,
            s.calibration_exact_images,
        ),
        ScoreMethod(
            "vlb_mc",
            s.score_mc_k,
            vlb_mc_bits_per_dim(ddpm, s.score_mc_k, ctx.generator),
            s.anomaly_images,
            s.calibration_images,
        ),
    ]


# Card and table ------------------------------------------------------------------------------


def checkpoint_facts(directory: Path, model: torch.nn.Module) -> dict[str, Any]:
    weights = (directory / WEIGHTS_FILE).read_bytes()
    facts: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_bytes": len(weights),
        # Ties every figure to these exact weights: loading refuses them beside other weights.
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    training = directory / "training.json"
    if training.exists():
        facts["training"] = json.loads(training.read_text())
    return facts


def set_tf32(enabled: bool) -> None:
    """TF32 matrix units for float32 matmuls and convolutions on CUDA (no effect on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def precision_check(directory: Path, ctx: Context, seed: int) -> dict[str, Any]:
    """The likelihood of the first images in strict float32 and in TF32, same noise: how far
    the TF32 figures can be from the float32 ones."""
    model = load_checkpoint(directory, ctx.device).model.eval()
    n = ctx.sizes.precision_check_images
    sizes = dataclasses.replace(ctx.sizes, likelihood_images=n, iwae_images=0)
    per_image = {}
    for tf32 in (False, True):
        set_tf32(tf32)
        check = dataclasses.replace(ctx, sizes=sizes, generator=torch.Generator().manual_seed(seed))
        likelihood = vae_likelihood if isinstance(model, VAE) else ddpm_likelihood
        per_image[tf32] = likelihood(model, check)[1]
    difference = (per_image[True] - per_image[False]).abs()
    return {
        "images": n,
        "float32_bits_per_dim": per_image[False].mean().item(),
        "tf32_bits_per_dim": per_image[True].mean().item(),
        "max_abs_difference_bits_per_dim": difference.max().item(),
    }


def evaluate(directory: Path, classifier_dir: Path, ctx: Context) -> dict[str, Any]:
    """Every section for the checkpoint in ``directory``: the model card as a dict."""
    model = load_checkpoint(directory, ctx.device).model.eval()
    classifier = load_checkpoint(classifier_dir, ctx.device).model.eval()
    if isinstance(model, VAE):
        likelihood, per_image = vae_likelihood(model, ctx)
        samplers, methods, reused = vae_samplers(model, ctx), vae_methods(model, ctx), "elbo"
    elif isinstance(model, DDPM):
        likelihood, per_image = ddpm_likelihood(model, ctx)
        samplers, methods, reused = ddpm_samplers(model, ctx), ddpm_methods(model, ctx), "vlb_exact"
    else:
        raise SystemExit(f"{directory} holds a {type(model).__name__}; evaluate a VAE or a DDPM")
    classifier_card = read_model_card(classifier_dir)
    card: dict[str, Any] = {
        "kind": "vae" if isinstance(model, VAE) else "ddpm",
        "checkpoint": checkpoint_facts(directory, model),
        "likelihood": likelihood,
        "sample_quality": {
            "classifier": {
                "directory": str(classifier_dir),
                "test_accuracy": classifier_card.get("test_accuracy"),
                "feature_dim": classifier.config.feature_dim,
            },
            "ddim_eta": ctx.ddim_eta,
            **sample_quality(samplers, classifier, ctx),
        },
        "anomaly": {"outlier_sets": sorted(outlier_sets_description()), "methods": {}},
        "calibration": {},
    }
    for method in methods:
        known = per_image if method.name == reused else None
        detection, calibration = anomaly_and_calibration(method, ctx, known)
        card["anomaly"]["methods"][method.name] = {"k": method.k, **detection}
        card["calibration"][method.name] = calibration
    return card


def outlier_sets_description() -> dict[str, str]:
    return {
        "digits": "sklearn load_digits 8x8, scaled to 0..255, bilinear upsampled to 28x28",
        "gaussian_noise": "test images + N(0, 25.5^2) per pixel, rounded and clipped",
        "inverted": "255 - test image",
        "blurred": "test images, Gaussian blur sigma 1 pixel",
        "uniform_noise": "uniform random pixels",
    }


def _pm(figure: dict[str, float]) -> str:
    return f"{figure['mean']:.4f} ± {figure['stderr']:.4f} bits/dim"


def _likelihood_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    lik = card["likelihood"]
    if card["kind"] == "vae":
        rows = [
            (f"-ELBO, {lik['test_images']} test images", _pm(lik["elbo_bits_per_dim"])),
            (
                "  reconstruction / KL",
                f"{lik['reconstruction_bits_per_dim']:.4f} / {lik['kl_bits_per_dim']:.4f}",
            ),
        ]
        if "iwae" in lik:
            iwae = lik["iwae"]
            label = f"IWAE k={iwae['k']}, {iwae['test_images']} test images"
            rows.append((label, _pm(iwae["iwae_bits_per_dim"])))
        return rows
    terms = " / ".join(
        f"{lik[name]:.5f}"
        for name in ("prior_bits_per_dim", "denoising_bits_per_dim", "reconstruction_bits_per_dim")
    )
    label = f"exact VLB (T={lik['num_timesteps']}), {lik['test_images']} test images"
    return [(label, _pm(lik["vlb_bits_per_dim"])), ("  L_T / sum L_t / L_0", terms)]


def table_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """The card's headline figures as (figure, value) rows."""
    rows = _likelihood_rows(card)
    for name, s in card["sample_quality"]["samplers"].items():
        value = f"{s['frechet_distance']:.3f} ({s['real_data_floor']:.3f})"
        rows.append((f"FD {name}, {s['num_samples']} samples (floor)", value))
        rows.append((f"  seconds per image, {name}", f"{s['seconds_per_image']:.4f}"))
    for name, m in card["anomaly"]["methods"].items():
        for outlier, d in m["sets"].items():
            raw, corrected = d["raw"], d["minus_png"]
            value = (
                f"{raw['auroc']:.3f} / {corrected['auroc']:.3f}   FPR95 "
                f"{raw['fpr_at_95_tpr']:.3f} / {corrected['fpr_at_95_tpr']:.3f}"
            )
            rows.append((f"AUROC {name} vs {outlier} (raw / -PNG)", value))
    for name, c in card["calibration"].items():
        raw = c["scores"]["bits_per_dim"]
        thresholds = ", ".join(f"fpr {f}: {t:.4f}" for f, t in raw["thresholds"].items())
        rows.append((f"threshold {name} ({raw['num_images']} held-out)", thresholds or "-"))
    return rows


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for figure, value in rows:
        print(f"{figure:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint; write its model card.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--classifier", type=Path, default=Path("checkpoints/classifier"))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument(
        "--ddim-eta", type=float, default=1.0, help="DDIM eta for sample quality (served: 1)"
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="CUDA: TF32 matmuls and convolutions (several times faster); the card records "
        "the bound of the first images in both precisions. Default: strict float32.",
    )
    for field in dataclasses.fields(EvaluationSizes):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    sizes = EvaluationSizes(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(EvaluationSizes)}
    )
    device = resolve_device(args.device)
    test, _ = load_fashion_mnist("test", args.data_root)
    train, _ = load_fashion_mnist("train", args.data_root)
    ctx = Context(
        test,
        train,
        device,
        torch.Generator().manual_seed(args.seed),
        sizes,
        args.checkpoint,
        args.ddim_eta,
    )
    started = time.perf_counter()
    tf32_check = None
    if args.tf32 and device.type == "cuda" and sizes.precision_check_images:
        tf32_check = precision_check(args.checkpoint, ctx, args.seed)
    set_tf32(args.tf32)
    card = evaluate(args.checkpoint, args.classifier, ctx)
    if tf32_check is not None:
        card["likelihood"]["tf32_check"] = tf32_check
    card["evaluation"] = {
        "command": "python -m models.evaluate " + " ".join(sys.argv[1:] if argv is None else argv),
        "sizes": dataclasses.asdict(sizes),
        "seed": args.seed,
        "hardware": hardware_description(device),
        "tf32": bool(args.tf32 and device.type == "cuda"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_model_card(args.checkpoint, card)
    print_table(table_rows(card))
    card_path = args.checkpoint / "model_card.json"
    print(f"evaluated in {card['evaluation']['seconds']} s; card: {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
