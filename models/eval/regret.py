"""The Likelihood Regret as a calibrated anomaly score (Xiao, Yan & Amit 2020, arXiv
2003.02977; the maths is the kind's: models/vae/regret.py for a VAE).

Measured like the other scores: AUROC and FPR at 95% TPR of the regret against each outlier
set, beside the raw bound's on the same images, and its thresholds from held-out normal
images, with the false-positive rate they give on the other normal images. The optimisation's
steps and learning rate go into the card with it, since /score must run the same ones for its
thresholds to hold. ``models.evaluate`` measures it for every kind that offers a regret; this
CLI adds it to an existing card without re-running the evaluation:

    python -m models.eval.regret checkpoints/vae --normal-images 500 --per-set 500
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models.core.card import (
    Detection,
    MethodCalibration,
    RegretCalibration,
    RegretDetection,
)
from models.kinds import OPTIMISED_TOTAL_BITS_PER_DIM, ModelKind, RegretMethod


def regret_bits_per_dim(
    regret: RegretMethod,
    model: torch.nn.Module,
    images: torch.Tensor,
    steps: int,
    learning_rate: float,
    generator: torch.Generator,
    batch_size: int = 250,
    max_batch: int = 256,
    label: str = "regret",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the bound, its regret) of uint8 images (N, C, H, W), each (N,) float64 bits/dim on
    the CPU, in chunks of ``batch_size`` images with one generator for all of them."""
    from models.core.pixels import pixels_to_signed_unit
    from models.core.progressive import run_to_end

    device = next(model.parameters()).device
    bounds, regrets = [], []
    bar = tqdm(total=len(images), desc=label, leave=False, dynamic_ncols=True)
    try:
        for chunk in images.split(batch_size):
            x = pixels_to_signed_unit(chunk).to(device)
            loop = regret.run(model, x, steps, learning_rate, generator, max_batch)
            terms = run_to_end(loop)
            bound = terms["total_bits_per_dim"].double().cpu()
            bounds.append(bound)
            regrets.append(bound - terms[OPTIMISED_TOTAL_BITS_PER_DIM].double().cpu())
            bar.update(len(chunk))
    finally:
        bar.close()
    empty = torch.zeros(0, dtype=torch.float64)
    return (torch.cat(bounds) if bounds else empty), (torch.cat(regrets) if regrets else empty)


def measure_regret(
    regret: RegretMethod,
    model: torch.nn.Module,
    normal: torch.Tensor,
    outliers: Mapping[str, torch.Tensor],
    held_out: torch.Tensor,
    source: str,
    generator: torch.Generator,
    steps: int | None = None,
    learning_rate: float | None = None,
    batch_size: int = 250,
    max_batch: int = 256,
) -> RegretCalibration:
    """The regret's card record: AUROC / FPR@95 of the raw bound and of the regret, normal
    uint8 images (N, C, H, W) against each outlier set's, and the calibration on the
    ``held_out`` images (``source`` says which), checked on ``normal``. Steps and learning
    rate: the kind's defaults unless given."""
    from models.eval.anomaly import auroc, fpr_at_tpr
    from models.eval.ratio import checked_calibration

    steps = regret.default_steps if steps is None else steps
    rate = regret.learning_rate if learning_rate is None else learning_rate

    def scores(images: torch.Tensor, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        return regret_bits_per_dim(
            regret, model, images, steps, rate, generator, batch_size, max_batch, label
        )

    def detection(normal_scores: torch.Tensor, anomalous: torch.Tensor) -> Detection:
        return Detection(auroc(normal_scores, anomalous), fpr_at_tpr(normal_scores, anomalous))

    raw_normal, regret_normal = scores(normal, "regret normal")
    detections = {}
    for name, images in outliers.items():
        raw, regret_set = scores(images, f"regret {name}")
        detections[name] = RegretDetection(
            raw=detection(raw_normal, raw), regret=detection(regret_normal, regret_set)
        )
    _, regret_held = scores(held_out, "regret calibration")
    return RegretCalibration(
        steps=steps,
        learning_rate=rate,
        calibration=checked_calibration(regret_held, source, regret_normal),
        detection=detections or None,
        detection_normal_images=len(normal) if detections else None,
    )


def with_regret_calibration(
    card: Mapping[str, Any], method: str, record: RegretCalibration
) -> dict[str, Any]:
    """``card`` with ``record`` as ``calibration[method].likelihood_regret``; every other key
    and number as it was (a method without a calibration gets one with no score kinds)."""
    calibration = dict(card.get("calibration", {}))
    entry = dict(calibration.get(method, {"k": None, "scores": {}}))
    entry["likelihood_regret"] = record.to_dict()
    calibration[method] = MethodCalibration.from_dict(entry).to_dict()  # checks the layout
    return {**card, "calibration": calibration}


def regret_of(kind: ModelKind, model: torch.nn.Module, where: str) -> RegretMethod:
    """The kind's regret; SystemExit naming ``where`` and what the model lacks otherwise."""
    regret = kind.likelihood_regret(model)
    if regret is None:
        raise SystemExit(f"{where}: offers no likelihood regret: {kind.lacks_regret(model)}")
    return regret


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure a checkpoint's Likelihood Regret against the outlier sets and add "
        "its calibration on held-out normal images to the model card."
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (kind's default)")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--normal-images", type=int, default=500, help="test images 0..N-1")
    parser.add_argument("--per-set", type=int, default=500, help="images per outlier set")
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument(
        "--no-write", action="store_true", help="print the figures, leave the card alone"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import dataclasses

    from models.core.checkpoints import load_checkpoint, read_model_card, write_model_card
    from models.data import load_fashion_mnist
    from models.eval.context import CALIBRATION_START
    from models.eval.outliers import outlier_sets
    from models.kinds import kind_of

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint, args.device)
    model, kind = checkpoint.model.eval(), kind_of(checkpoint.kind)
    regret = regret_of(kind, model, str(args.checkpoint))
    test = load_fashion_mnist("test", args.data_root)[0]
    end = CALIBRATION_START + args.calibration_images
    if end > len(test):
        raise SystemExit(f"need {end} test images, have {len(test)}")
    generator = torch.Generator().manual_seed(args.seed)
    sets = outlier_sets(test[: args.per_set], generator)
    record = measure_regret(
        regret,
        model,
        test[: args.normal_images],
        sets,
        test[CALIBRATION_START:end],
        f"Fashion-MNIST test images {CALIBRATION_START}..{end - 1}",
        generator,
        args.steps,
        args.learning_rate,
        args.batch_size,
    )
    seconds = round(time.perf_counter() - started, 1)
    command = "python -m models.eval.regret " + " ".join(sys.argv[1:] if argv is None else argv)
    record = dataclasses.replace(record, command=command, seconds=seconds)
    print(
        f"{args.checkpoint} {regret.bound}: Likelihood Regret, {record.steps} Adam steps at "
        f"learning rate {record.learning_rate:g}; AUROC / FPR@95 on {args.normal_images} "
        f"normal test images and {args.per_set} per set"
    )
    print("| set | bits/dim | regret |")
    print("|---|---|---|")
    assert record.detection is not None
    for name, found in record.detection.items():
        print(
            f"| {name} | {found.raw.auroc:.3f} / {found.raw.fpr_at_95_tpr:.3f} | "
            f"{found.regret.auroc:.3f} / {found.regret.fpr_at_95_tpr:.3f} |"
        )
    means = [
        sum(getattr(d, column).auroc for d in record.detection.values()) / len(record.detection)
        for column in ("raw", "regret")
    ]
    print(f"| mean AUROC | {means[0]:.3f} | {means[1]:.3f} |")
    fitted = record.calibration
    print(
        f"calibration: {fitted.num_images} images ({fitted.source}), thresholds "
        f"{dict(fitted.thresholds)}, observed FPR on the normal images "
        f"{fitted.observed_fpr_on_other_normal_images}"
    )
    print(f"in {seconds} s")
    if not args.no_write:
        card = read_model_card(args.checkpoint)
        write_model_card(args.checkpoint, with_regret_calibration(card, regret.bound, record))
        print(f"wrote the regret calibration of {regret.bound} into {args.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
