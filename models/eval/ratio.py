"""The likelihood-ratio score: a model's bound minus its background model's, calibrated.

Ren et al. 2019 (arXiv 1906.02845, Eq. 5) score an input by the log-likelihood ratio of the
model and a background model trained on perturbed inputs (:mod:`models.training.background`).
As codelengths in bits/dim, with bounds in place of exact likelihoods:

    S(x) = L_foreground(x) - L_background(x)          (B,) bits/dim, higher is more anomalous

This module measures it on held-out normal images and ties the background to the foreground's
model card: a ``background`` section (its name in the model repository, the SHA-256 of its
weights, its bound, and AUROC / FPR@95 of the bound and of the ratio against the outlier sets)
and, for each foreground method, the ``bits_per_dim_minus_background`` calibration that
``/score`` with ``correction: "ratio"`` judges against. Nothing else in the card changes; run it
again after ``models.evaluate``, which writes a card afresh.

    python -m models.eval.ratio checkpoints/vae checkpoints/vae-background \\
        --calibration-images 2000 --normal-images 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models.core.card import (
    BITS_PER_DIM_MINUS_BACKGROUND,
    REPORTED_FPRS,
    BackgroundReference,
    Detection,
    RatioDetection,
    ScoreCalibration,
    calibrations_in,
)
from models.eval.anomaly import Calibration, auroc, fpr_at_tpr

if TYPE_CHECKING:
    from torch import nn

    from models.kinds import BoundMethod, ModelKind


def bound_bits_per_dim(
    method: BoundMethod,
    model: nn.Module,
    images: torch.Tensor,
    k: int | None,
    seed: int,
    chunk: int = 250,
) -> torch.Tensor:
    """``method``'s bound at ``k`` of uint8 images (N, C, H, W): (N,) float64 bits/dim, in
    chunks, the draws from one generator seeded with ``seed``."""
    from models.core.noise import seeded_generator
    from models.core.pixels import pixels_to_signed_unit
    from models.core.progressive import run_to_end

    generator = seeded_generator(seed)
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for part in images.split(chunk):
            x = pixels_to_signed_unit(part).to(device)
            terms = run_to_end(method.run(model, x, k, generator, chunk))
            out.append(terms["total_bits_per_dim"].double().cpu())
    return torch.cat(out)


def checked_calibration(
    held_out_scores: torch.Tensor, source: str, other_normal_scores: torch.Tensor
) -> ScoreCalibration:
    """The calibration of scores of held-out normal images (N,), with the false-positive rate
    its thresholds give on other normal images (M,)."""
    fitted = Calibration.of(held_out_scores, source)
    fprs = [f for f in REPORTED_FPRS if f >= fitted.min_fpr]
    entry = fitted.to_dict(fprs)
    observed = {
        str(f): float((other_normal_scores.numpy() > fitted.threshold(f)).mean()) for f in fprs
    }
    return ScoreCalibration(
        source=entry["source"],
        num_images=entry["num_images"],
        thresholds=entry["thresholds"],
        normal_scores=tuple(entry["normal_scores"]),
        observed_fpr_on_other_normal_images=observed,
    )


def with_ratio(
    card: Mapping[str, Any],
    foreground: tuple[ModelKind, nn.Module],
    background: tuple[str, ModelKind, nn.Module, str],
    held_out: torch.Tensor,
    held_out_source: str,
    normal: torch.Tensor,
    outlier_sets: Mapping[str, torch.Tensor],
    methods: Sequence[str] | None = None,
    background_method: str | None = None,
    background_k: int | None = None,
    seed: int = 0,
    training: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """``card`` with the ratio: the background section and, for each foreground method of
    ``methods`` (default: the kind's first) at its calibration's k, the calibration of the
    ratio on ``held_out`` (N, C, H, W) uint8 and its AUROC / FPR@95 against each outlier set
    with ``normal`` as the normal side. ``background`` is (name in the model repository,
    kind, network, SHA-256 of its weights). ValueError for another image shape."""
    started = time.perf_counter()
    fore_kind, fore_model = foreground
    name, back_kind, back_model, sha256 = background
    shape = tuple(fore_kind.image_shape(fore_model.config))
    if tuple(back_kind.image_shape(back_model.config)) != shape:
        raise ValueError(
            f"the background reads images (C, H, W) = "
            f"{tuple(back_kind.image_shape(back_model.config))}, the foreground {shape}"
        )
    back_method = back_kind.method_for(back_model, background_method)
    from models.kinds import check_k

    back_k = check_k(back_method, background_k)

    def back(images: torch.Tensor) -> torch.Tensor:
        return bound_bits_per_dim(back_method, back_model, images, back_k, seed)

    back_held, back_normal = back(held_out), back(normal)
    back_sets = {set_name: back(images) for set_name, images in outlier_sets.items()}
    calibrations = calibrations_in(card)
    out = {**card, "calibration": dict(card.get("calibration", {}))}
    detection: dict[str, dict[str, RatioDetection]] = {}
    for method_name in methods or [fore_kind.method_for(fore_model, None).name]:
        method = fore_kind.method_for(fore_model, method_name)
        entry = calibrations.get(method.name)
        k = entry.k if entry is not None else check_k(method, None)

        def fore(images: torch.Tensor, method=method, k=k) -> torch.Tensor:
            return bound_bits_per_dim(method, fore_model, images, k, seed)

        fore_normal = fore(normal)
        ratio_normal = fore_normal - back_normal
        calibration = checked_calibration(fore(held_out) - back_held, held_out_source, ratio_normal)
        detection[method.name] = {}
        for set_name, images in outlier_sets.items():
            raw = fore(images)
            ratio = raw - back_sets[set_name]
            detection[method.name][set_name] = RatioDetection(
                raw=Detection(auroc(fore_normal, raw), fpr_at_tpr(fore_normal, raw)),
                ratio=Detection(auroc(ratio_normal, ratio), fpr_at_tpr(ratio_normal, ratio)),
            )
        stored = dict(out["calibration"].get(method.name, {"k": k, "scores": {}}))
        stored["scores"] = {
            **stored.get("scores", {}),
            BITS_PER_DIM_MINUS_BACKGROUND: calibration.to_dict(),
        }
        out["calibration"][method.name] = stored
    reference = BackgroundReference(
        name=name,
        weights_sha256=sha256,
        method=back_method.name,
        k=back_k,
        image_shape=shape,
        training=training,
        detection=detection,
        detection_normal_images=len(normal),
        command=command,
        seconds=round(time.perf_counter() - started, 1),
    )
    out["background"] = reference.to_dict()
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    from models.core.checkpoints import (
        load_checkpoint,
        read_model_card,
        weights_path,
        weights_sha256,
        write_model_card,
    )
    from models.data import load_fashion_mnist
    from models.eval.context import CALIBRATION_START
    from models.eval.outliers import outlier_sets
    from models.kinds import kind_of

    parser = argparse.ArgumentParser(description="Add the likelihood ratio to a model card.")
    parser.add_argument("foreground", type=Path, help="checkpoint directory (its card is updated)")
    parser.add_argument("background", type=Path, help="the background's checkpoint directory")
    parser.add_argument(
        "--name",
        help="the background's name in the model repository (default: its directory's name; "
        "serving looks for it beside the foreground)",
    )
    parser.add_argument("--methods", nargs="+", help="foreground bounds (default: the first)")
    parser.add_argument("--background-method", help="the background's bound (default: first)")
    parser.add_argument("--background-k", type=int)
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument("--normal-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    fore = load_checkpoint(args.foreground)
    back = load_checkpoint(args.background)
    test = load_fashion_mnist("test", args.data_root)[0]
    end = CALIBRATION_START + args.calibration_images
    held_out = test[CALIBRATION_START:end]
    normal = test[: args.normal_images]
    sets = outlier_sets(normal, torch.Generator().manual_seed(args.seed))
    training_path = args.background / "training.json"
    training = json.loads(training_path.read_text()) if training_path.exists() else None
    card = with_ratio(
        read_model_card(args.foreground),
        (kind_of(fore.kind), fore.model.eval()),
        (
            args.name or args.background.resolve().name,
            kind_of(back.kind),
            back.model.eval(),
            weights_sha256(weights_path(args.background)),
        ),
        held_out,
        f"Fashion-MNIST test images {CALIBRATION_START}..{end - 1}",
        normal,
        sets,
        methods=args.methods,
        background_method=args.background_method,
        background_k=args.background_k,
        seed=args.seed,
        training=training,
        command="python -m models.eval.ratio " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    write_model_card(args.foreground, card)
    reference = BackgroundReference.from_dict(card["background"])
    print(f"AUROC / FPR@95, {len(normal)} normal test images per set ({reference.seconds} s):")
    for method, sets_detection in (reference.detection or {}).items():
        for set_name, found in sets_detection.items():
            print(
                f"{method} {set_name}: bound {found.raw.auroc:.3f} / {found.raw.fpr_at_95_tpr:.3f}"
                f", ratio {found.ratio.auroc:.3f} / {found.ratio.fpr_at_95_tpr:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
