"""Anomaly scores that see more than one number: a density over the bound's term vectors.

A likelihood bound is a sum of terms (VAE: distortion and rate; DDPM: L_T, bands of denoising
terms, L_0). Inputs the model finds *too* likely (simple images), or whose terms are each
ordinary but combined oddly, hide in the sum. Following DoSE (Morningstar et al. 2021,
"Density of States Estimation for Out-of-Distribution Detection", AISTATS, Sec. 3) and the
typicality test of Nalisnick et al. 2019 (arXiv 1906.02994), we fit a density to the term
vectors of held-out normal images and score an input by its negative log density: higher is
more anomalous, in either direction from the typical set.

Two estimators on standardised vectors z = (v - mean) / scale, (F,) each:

- ``gaussian``: N(0, S) with S the sample covariance shrunk towards the identity by the
  Ledoit-Wolf coefficient (Ledoit & Wolf 2004), so that a few hundred images fit it.
- ``kde``: the Gaussian kernel density of the fit vectors with covariance C h^2, C their
  sample covariance and h = n^(-1 / (F + 4)) (Scott 1992, Eq. 6.42; scipy's gaussian_kde).

The score is -log p(z) in nats (the standardisation's constant Jacobian is left out). Its
thresholds come from other held-out normal images than the fit's, so they are honest.

CLI: add a fitted and calibrated density to an existing checkpoint's model card, changing
nothing else in it::

    python -m models.eval.typicality checkpoints/vae --fit-images 2000 --calibration-images 2000
    python -m models.eval.typicality checkpoints/ddpm --k 10 --fit-images 250 \\
        --calibration-images 250
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.core.card import (
    REPORTED_FPRS,
    MethodCalibration,
    ScoreCalibration,
    TermDensity,
)
from models.eval.anomaly import Calibration

Estimator = Literal["gaussian", "kde"]
ESTIMATORS: tuple[Estimator, ...] = ("gaussian", "kde")
FIRST_HELD_OUT = 5000  # Fashion-MNIST test images from here on are held out (models.eval.context)
_LOG_2PI = math.log(2.0 * math.pi)


def _whiten(cholesky: np.ndarray, z: np.ndarray) -> np.ndarray:
    """L^-1 z for rows z (N, F) and the lower Cholesky factor L (F, F): (N, F).

    torch in float64 rather than scipy: the service scores with this, and scipy is a test-only
    dependency (not in the image)."""
    solved = torch.linalg.solve_triangular(
        torch.from_numpy(np.asarray(cholesky, np.float64)),
        torch.from_numpy(np.ascontiguousarray(np.asarray(z, np.float64).T)),
        upper=False,
    )
    return solved.T.numpy()


@dataclass(frozen=True)
class Density:
    """A fitted density over term vectors (F,); see the module docstring."""

    estimator: Estimator
    term_names: tuple[str, ...]
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    covariance: np.ndarray  # (F, F) of standardised vectors: the Gaussian's or the kernel's
    shrinkage: float = 0.0
    points: np.ndarray | None = None  # (N, F) standardised fit vectors, KDE only

    @classmethod
    def fit(
        cls, vectors: np.ndarray, term_names: Sequence[str], estimator: Estimator = "gaussian"
    ) -> Density:
        """Fit on term vectors (N, F) of normal images."""
        v = np.asarray(vectors, dtype=np.float64)
        n, f = v.shape
        if f != len(term_names) or n < f + 2:
            raise ValueError(f"need (N > F + 1, F = {len(term_names)}) vectors, got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("term vectors must be finite")
        mean = v.mean(axis=0)
        scale = v.std(axis=0, ddof=1)
        scale = np.where(scale > 0, scale, 1.0)  # a constant term standardises to 0
        z = (v - mean) / scale
        if estimator == "gaussian":
            from sklearn.covariance import ledoit_wolf

            covariance, shrinkage = ledoit_wolf(z, assume_centered=True)
            return cls(estimator, tuple(term_names), mean, scale, covariance, float(shrinkage))
        if estimator == "kde":
            factor = n ** (-1.0 / (f + 4))  # Scott's rule
            covariance = np.atleast_2d(np.cov(z, rowvar=False)) * factor**2
            return cls(estimator, tuple(term_names), mean, scale, covariance, 0.0, z)
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")

    @property
    def num_terms(self) -> int:
        return len(self.term_names)

    def standardise(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != self.num_terms:
            raise ValueError(f"expected term vectors (B, {self.num_terms}), got {v.shape}")
        return (v - self.mean) / self.scale

    def log_density(self, vectors: np.ndarray, chunk: int = 512) -> np.ndarray:
        """log p(z) in nats of the standardised term vectors (B, F) -> (B,)."""
        z = self.standardise(vectors)
        cholesky = np.linalg.cholesky(self.covariance)
        log_norm = -0.5 * self.num_terms * _LOG_2PI - np.log(np.diag(cholesky)).sum()
        w = _whiten(cholesky, z)  # (B, F)
        if self.estimator == "gaussian":
            return log_norm - 0.5 * (w**2).sum(axis=1)
        assert self.points is not None, "a KDE needs its points"
        centres = _whiten(cholesky, self.points)  # (N, F)
        out = np.empty(len(w))
        for start in range(0, len(w), chunk):
            rows = w[start : start + chunk]
            d2 = ((rows[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)  # (b, N)
            out[start : start + chunk] = torch.logsumexp(torch.from_numpy(-0.5 * d2), dim=1)
        return log_norm + out - math.log(len(centres))

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """The anomaly score -log p(z), nats: (B,); higher is more anomalous."""
        return -self.log_density(vectors)

    def to_dict(self, decimals: int | None = None) -> dict[str, Any]:
        """The parameters, as the card's :class:`~models.core.card.TermDensity` spells them;
        the KDE's points rounded to ``decimals`` when given."""
        out: dict[str, Any] = {
            "estimator": self.estimator,
            "term_names": list(self.term_names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "covariance": self.covariance.tolist(),
            "shrinkage": self.shrinkage,
        }
        if self.points is not None:
            points = self.points if decimals is None else np.round(self.points, decimals)
            out["points"] = points.tolist()
        return out

    @classmethod
    def from_dict(cls, payload: Any) -> Density:
        """From :meth:`to_dict`, or a card's TermDensity record (or its dict)."""
        if isinstance(payload, TermDensity):
            payload = payload.to_dict()
        points = payload.get("points")
        return cls(
            estimator=payload["estimator"],
            term_names=tuple(payload["term_names"]),
            mean=np.asarray(payload["mean"], dtype=np.float64),
            scale=np.asarray(payload["scale"], dtype=np.float64),
            covariance=np.asarray(payload["covariance"], dtype=np.float64),
            shrinkage=float(payload["shrinkage"]),
            points=None if points is None else np.asarray(points, dtype=np.float64),
        )


def bound_bits_per_dim(vectors: torch.Tensor, num_dims: int) -> torch.Tensor:
    """The bound in bits/dim from its term vectors (B, F) in nats, which add up to it: (B,)."""
    from models.core.likelihood import nats_to_bits_per_dim

    return nats_to_bits_per_dim(vectors.double().sum(dim=1), num_dims)


# Measuring and calibrating on a checkpoint ---------------------------------------------------


@torch.no_grad()
def term_vectors(
    model: torch.nn.Module,
    images: torch.Tensor,
    k: int | None,
    generator: torch.Generator,
    batch_size: int = 250,
    network_batch: int = 256,
    on_chunk: Any = None,
) -> np.ndarray:
    """The kind's term vectors of uint8 images (N, C, H, W): (N, F) float64 nats."""
    from models.core.pixels import pixels_to_signed_unit
    from models.core.progressive import run_to_end
    from models.kinds import kind_of

    kind = kind_of(model)
    device = next(model.parameters()).device
    rows = []
    for chunk in images.split(batch_size):
        x = pixels_to_signed_unit(chunk).to(device)
        rows.append(run_to_end(kind.term_vector(model, x, generator, network_batch, k)).cpu())
        if on_chunk is not None:
            on_chunk(chunk.shape[0])
    return torch.cat(rows).double().numpy()


def fit_and_calibrate(
    fit_vectors: np.ndarray,
    calibration_vectors: np.ndarray,
    term_names: Sequence[str],
    k: int | None,
    estimator: Estimator,
    fit_source: str,
    calibration_source: str,
    check_vectors: np.ndarray | None = None,
    decimals: int = 6,
) -> TermDensity:
    """The card entry: a density fitted on ``fit_vectors`` (N, F), the calibration of its score
    on ``calibration_vectors`` (M, F), and, given ``check_vectors`` of other normal images, the
    false-positive rate each threshold gives on them. The density scores as stored (its points
    rounded to ``decimals``), so the card's thresholds are those of the stored density."""
    fitted = Density.fit(fit_vectors, term_names, estimator)
    density = Density.from_dict(fitted.to_dict(decimals))
    calibration = Calibration.of(density.score(calibration_vectors), calibration_source)
    fprs = [f for f in REPORTED_FPRS if f >= calibration.min_fpr]
    entry = calibration.to_dict(fprs)
    observed = None
    if check_vectors is not None and len(check_vectors):
        other = density.score(check_vectors)
        observed = {str(f): float((other > calibration.threshold(f)).mean()) for f in fprs}
    params = density.to_dict()
    return TermDensity(
        estimator=estimator,
        k=k,
        term_names=tuple(term_names),
        source=fit_source,
        num_images=len(fit_vectors),
        mean=tuple(params["mean"]),
        scale=tuple(params["scale"]),
        covariance=tuple(tuple(row) for row in params["covariance"]),
        shrinkage=params["shrinkage"],
        calibration=ScoreCalibration(
            source=entry["source"],
            num_images=entry["num_images"],
            thresholds=entry["thresholds"],
            normal_scores=tuple(entry["normal_scores"]),
            observed_fpr_on_other_normal_images=observed,
        ),
        points=None if density.points is None else tuple(map(tuple, params["points"])),
    )


def with_term_density(card: dict[str, Any], method: str, density: TermDensity) -> dict[str, Any]:
    """``card`` with ``density`` as ``calibration[method].term_density``; every other key and
    number as it was (a method without a calibration gets one with no score kinds)."""
    calibration = dict(card.get("calibration", {}))
    entry = dict(calibration.get(method, {"k": density.k, "scores": {}}))
    entry["term_density"] = density.to_dict()
    calibration[method] = MethodCalibration.from_dict(entry).to_dict()  # checks the layout
    return {**card, "calibration": calibration}


def _source(first: int, count: int) -> str:
    return f"Fashion-MNIST test images {first}..{first + count - 1}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fit a density over a checkpoint's per-image bound terms on held-out normal "
        "images, calibrate its score on others, and add both to the model card."
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--fit-images", type=int, default=2000)
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument(
        "--first-image",
        type=int,
        default=FIRST_HELD_OUT,
        help="first Fashion-MNIST test image used; fit images come first, then calibration",
    )
    parser.add_argument(
        "--check-images",
        type=int,
        default=0,
        help="test images 0..N-1 (not held out) on which to report each threshold's FPR",
    )
    parser.add_argument("--estimator", choices=ESTIMATORS, default="gaussian")
    parser.add_argument("--k", type=int, default=None, help="the bound's k (default: the card's)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--network-batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--save-vectors", type=Path, default=None, help="an .npz of the vectors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from models.core.checkpoints import load_checkpoint, read_model_card, write_model_card
    from models.core.noise import seeded_generator
    from models.data import load_fashion_mnist
    from models.kinds import check_k, kind_of

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint, args.device)
    model, kind = checkpoint.model, kind_of(checkpoint.kind)
    method = kind.method_for(model, kind.term_method)
    card = read_model_card(args.checkpoint)
    card_k = card.get("calibration", {}).get(method.name, {}).get("k")
    k = check_k(method, args.k if args.k is not None else card_k)
    test, _ = load_fashion_mnist("test", args.data_root)
    first, n_fit, n_cal = args.first_image, args.fit_images, args.calibration_images
    if first + n_fit + n_cal > len(test):
        raise SystemExit(f"need {first + n_fit + n_cal} test images, have {len(test)}")
    generator = seeded_generator(args.seed)

    def vectors(images: torch.Tensor, label: str) -> np.ndarray:
        t0 = time.perf_counter()
        out = term_vectors(model, images, k, generator, args.batch_size, args.network_batch)
        seconds = time.perf_counter() - t0
        print(f"{label}: {len(images)} images, {seconds:.1f} s ({len(images) / seconds:.1f}/s)")
        return out

    fit = vectors(test[first : first + n_fit], "fit")
    held = vectors(test[first + n_fit : first + n_fit + n_cal], "calibration")
    check = vectors(test[: args.check_images], "check") if args.check_images else None
    names = kind.term_names(model, k)
    density = fit_and_calibrate(
        fit,
        held,
        names,
        k,
        args.estimator,
        _source(first, n_fit),
        _source(first + n_fit, n_cal),
        check,
    )
    if args.save_vectors is not None:
        extra = {} if check is None else {"check": check}
        np.savez(args.save_vectors, fit=fit, calibration=held, names=np.array(names), **extra)
    write_model_card(args.checkpoint, with_term_density(card, method.name, density))
    fitted = density.calibration
    thresholds = ", ".join(f"FPR {f}: {t:.3f}" for f, t in fitted.thresholds.items())
    checked = (
        f"; observed FPR on test images 0..{args.check_images - 1}: "
        f"{fitted.observed_fpr_on_other_normal_images}"
        if check is not None
        else ""
    )
    print(
        f"{args.checkpoint}: {args.estimator} density over {len(names)} terms of {method.name}"
        f" (k={k}) on {n_fit} images, calibrated on {n_cal}; thresholds {thresholds}"
        f"{checked}; {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
