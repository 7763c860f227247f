"""Evaluation CLI: measure a checkpoint on Fashion-MNIST, or on your own folders of images, and
write its model card.

    python -m models.evaluate checkpoints/ddpm --classifier checkpoints/classifier
    python -m models.evaluate RUN/checkpoint --normal DIR [--outliers [NAME=]DIR ...] [--resize]

Sections on Fashion-MNIST (models/eval/, each measured through the checkpoint's kind in
models/kinds.py): test-set likelihood in bits/dim term by term; sample quality as the Fréchet
distance in the features of the project's classifier, beside the real-data floor at the same
sample size; anomaly detection (AUROC and FPR at 95% TPR of each score, raw and
complexity-corrected) against handwritten digits and corrupted test images; calibrated
thresholds from held-out normal test images. Every figure goes into ``model_card.json``
(models/core/card.py) beside the weights with its sample size, the command, the hardware and the
runtime, and a table is printed.

On a folder (``--normal``; models/eval/folder_data.py): the images are read in the checkpoint's
image shape and split by a seeded draw into the part that measures (likelihood, the normal side
of AUROC) and the part held out for calibration, using only the images the training run held
out (``RUN/validation.txt``) when it wrote them. Each ``--outliers`` folder is an outlier set;
without any, the corrupted normal images are (Gaussian noise, inverted, blurred, and uniform
noise; not the handwritten digits, which are Fashion-MNIST's near neighbour). There is no
Fréchet distance (it needs the Fashion-MNIST classifier); sample grids are saved. The card's
``data`` section names the images, so the checkpoint directory can be served as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

from models.core.card import OUTLIER_SETS, EvaluationData, EvaluationInfo
from models.core.checkpoints import CARD_FILE, read_config, write_model_card
from models.core.device import resolve_device
from models.data import load_fashion_mnist
from models.eval.context import EvalContext, EvaluationSizes
from models.eval.folder_data import load_folders
from models.eval.measure import measure
from models.eval.precision import precision_check, set_tf32
from models.eval.table import print_table, table_rows
from models.kinds import KindError, kind_of
from models.training.classifier import hardware_description

__all__ = ["EvaluationSizes", "main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    folders = parser.add_argument_group("your own images (instead of Fashion-MNIST)")
    folders.add_argument("--normal", type=Path, help="folder of normal images (PNG, JPEG)")
    folders.add_argument(
        "--outliers",
        action="extend",
        nargs="+",
        default=[],
        metavar="[NAME=]DIR",
        help="folders of anomalous images, one outlier set each (default name: the folder's)",
    )
    folders.add_argument("--resize", action="store_true", help="resize images of another size")
    folders.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.5,
        help="of the normal images, held out for calibration (the rest measure)",
    )
    for field in dataclasses.fields(EvaluationSizes):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    sizes = EvaluationSizes(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(EvaluationSizes)}
    )
    device = resolve_device(args.device)
    if args.outliers and args.normal is None:
        raise SystemExit("--outliers needs --normal (the Fashion-MNIST outlier sets are fixed)")
    data = None
    if args.normal is None:
        ctx = EvalContext(
            test=load_fashion_mnist("test", args.data_root)[0],
            train=load_fashion_mnist("train", args.data_root)[0],
            device=device,
            generator=torch.Generator().manual_seed(args.seed),
            sizes=sizes,
            out_dir=args.checkpoint,
            ddim_eta=args.ddim_eta,
        )
    else:
        ctx, data = _folder_context(args, sizes, device)
    started = time.perf_counter()
    tf32 = bool(args.tf32 and device.type == "cuda")
    tf32_check = None
    if tf32 and sizes.precision_check_images:
        tf32_check = precision_check(args.checkpoint, ctx, args.seed)
    set_tf32(args.tf32)
    if data is None:
        measured = measure(args.checkpoint, args.classifier, ctx)
    else:
        reason = (
            "the Fréchet distance is measured in the features of the Fashion-MNIST classifier, "
            f"which mean nothing for the images of {args.normal}; the grids show the samples"
        )
        measured = measure(args.checkpoint, None, ctx, reason)
    if tf32_check is not None:
        likelihood = dataclasses.replace(measured.likelihood, tf32_check=tf32_check)
        measured = dataclasses.replace(measured, likelihood=likelihood)
    card = measured.card(
        EvaluationInfo(
            command="python -m models.evaluate " + " ".join(sys.argv[1:] if argv is None else argv),
            sizes=dataclasses.asdict(sizes),
            seed=args.seed,
            hardware=hardware_description(device),
            tf32=tf32,
            torch=torch.__version__,
            python=platform.python_version(),
            seconds=round(time.perf_counter() - started, 1),
            date=time.strftime("%Y-%m-%d"),
        ),
        data,
    )
    write_model_card(args.checkpoint, card.to_dict())
    print_table(table_rows(card))
    for warning in () if data is None else data.warnings:
        print(f"warning: {warning}")
    print(f"evaluated in {card.evaluation.seconds} s; card: {args.checkpoint / CARD_FILE}")
    return 0


def _folder_context(
    args: argparse.Namespace, sizes: EvaluationSizes, device: torch.device
) -> tuple[EvalContext, EvaluationData]:
    """The context of an evaluation on ``--normal`` (and ``--outliers``) in the checkpoint's
    image shape, and the card's record of which images it uses."""
    kind_name, config = read_config(args.checkpoint)
    try:
        image_shape = kind_of(kind_name).image_shape(config)
    except KindError as error:
        raise SystemExit(f"{args.checkpoint}: {error}; evaluate a servable model") from error
    folders = load_folders(
        args.normal,
        args.outliers,
        image_shape,
        args.resize,
        args.held_out_fraction,
        args.seed,
        run_dir=args.checkpoint.resolve().parent,
    )
    ctx = EvalContext(
        test=folders.measured.images,
        train=None,
        device=device,
        generator=torch.Generator().manual_seed(args.seed),
        sizes=sizes,
        out_dir=args.checkpoint,
        ddim_eta=args.ddim_eta,
        held_out=folders.held_out.images,
        held_out_source=f"held-out normal images of {args.normal}",
        outliers={name: f.images for name, f in folders.outliers.items()} or None,
        synthetic_sets=tuple(name for name in OUTLIER_SETS if name != "digits"),
    )
    return ctx, folders.record


if __name__ == "__main__":
    raise SystemExit(main())
