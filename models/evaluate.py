"""Evaluation CLI: measure a checkpoint on Fashion-MNIST and write its model card.

    python -m models.evaluate checkpoints/ddpm --classifier checkpoints/classifier

Sections (models/eval/, each measured through the checkpoint's kind in models/kinds.py):
test-set likelihood in bits/dim term by term; sample quality as the Fréchet distance in the
features of the project's classifier, beside the real-data floor at the same sample size;
anomaly detection (AUROC and FPR at 95% TPR of each score, raw and complexity-corrected) against
handwritten digits and corrupted test images; calibrated thresholds from held-out normal test
images. Every figure goes into ``model_card.json`` (models/core/card.py) beside the weights with
its sample size, the command, the hardware and the runtime, and a table is printed.
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

from models.core.card import EvaluationInfo
from models.core.checkpoints import CARD_FILE, write_model_card
from models.core.device import resolve_device
from models.data import load_fashion_mnist
from models.eval.context import EvalContext, EvaluationSizes
from models.eval.measure import measure
from models.eval.precision import precision_check, set_tf32
from models.eval.table import print_table, table_rows
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
    ctx = EvalContext(
        test=load_fashion_mnist("test", args.data_root)[0],
        train=load_fashion_mnist("train", args.data_root)[0],
        device=device,
        generator=torch.Generator().manual_seed(args.seed),
        sizes=sizes,
        out_dir=args.checkpoint,
        ddim_eta=args.ddim_eta,
    )
    started = time.perf_counter()
    tf32 = bool(args.tf32 and device.type == "cuda")
    tf32_check = None
    if tf32 and sizes.precision_check_images:
        tf32_check = precision_check(args.checkpoint, ctx, args.seed)
    set_tf32(args.tf32)
    measured = measure(args.checkpoint, args.classifier, ctx)
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
        )
    )
    write_model_card(args.checkpoint, card.to_dict())
    print_table(table_rows(card))
    print(f"evaluated in {card.evaluation.seconds} s; card: {args.checkpoint / CARD_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
