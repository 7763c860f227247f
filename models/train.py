"""Train a model of any servable kind on a folder of images or Fashion-MNIST, resumably.

    python -m models.train vae  --config my_vae.json --data images/normal --out runs/mine
    python -m models.train ddpm --config configs/ddpm_fmnist.json --out runs/ddpm
    python -m models.train vae  --config configs/vae_fmnist.json  --out runs/vae

``--data`` is a folder (every PNG and JPEG under it, in the mode and size the config says;
``--resize`` resizes other sizes, which are otherwise an error naming the files) or the name
``fashion-mnist`` (the default: the train split of the IDX files). From a folder a seeded
``--validation-fraction`` (default 0.1) is held out: its files are listed in
``OUT/validation.txt`` for the evaluation, and its loss is logged at every saved step
(:mod:`models.training.sources`).

``--background-of RUN`` trains a background model for the likelihood-ratio score (Ren et al.
2019; :mod:`models.training.background`): by default the foreground's experiment (same kind,
model and training config; ``--config`` picks another, of any kind reading images of the same
shape) on the foreground's own training data, each value of each batch replaced by a uniform
draw with probability ``--mutation-rate`` (default 0.2; 0 without mutation when ``--data`` names
another folder). ``RUN`` is the foreground's run directory or exported checkpoint;
``training.json`` records it and its weights' SHA-256. Evaluate the background, then
``python -m models.eval.ratio FOREGROUND BACKGROUND`` ties the two in the foreground's card.

    python -m models.train vae --background-of runs/vae --out runs/vae-background

``--start-from DIR`` begins from the weights of an exported checkpoint of the same kind and
model config instead of a fresh initialisation: fine-tune the bundled model on your own
images, or train a checkpoint further (:meth:`Trainer.start_from`).

The kind is a name in the registry (:mod:`models.kinds`); the loop is
:class:`models.training.trainer.Trainer`. Run it again with the same --out to resume where it
stopped: ``state.pt`` (weights, EMA, optimizer and both random generators) is written every
``checkpoint_every`` steps, and the exportable checkpoint (config + safetensors; the EMA
weights where the kind exports them) goes to ``OUT/checkpoint``. The loss curve is appended to
``OUT/train_log.jsonl``. Given the seed, the run is deterministic on one device, interrupted
or not.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from models.core.device import resolve_device
from models.data import DataFormatError
from models.kinds import UnavailableKindError, refused_kinds, servable_kinds
from models.nn.acceleration import Acceleration, accelerate
from models.training.background import DEFAULT_MUTATION_RATE, BackgroundOf, read_foreground
from models.training.experiment import Experiment
from models.training.sources import (
    DEFAULT_VALIDATION_FRACTION,
    FASHION_MNIST,
    DataSourceError,
    load_training_data,
)
from models.training.trainer import STATE_FILE, Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train a model on a folder of images or Fashion-MNIST, resumably."
    )
    # A refused plug-in kind is a choice too, so that its name gets the reason, not a list.
    parser.add_argument("kind", choices=servable_kinds() + sorted(refused_kinds()))
    parser.add_argument(
        "--config",
        type=Path,
        help='JSON with "model" and "train" sections (with --background-of: default, the '
        "foreground's)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumes)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--data",
        help=f"a folder of PNG/JPEG images (searched recursively), or '{FASHION_MNIST}' (the "
        "default; a folder of that name is ./fashion-mnist)",
    )
    parser.add_argument(
        "--resize",
        action="store_true",
        help="resize images of another size to the config's (bilinear); otherwise an error",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        help=f"fraction of a folder held out for validation, seeded by the train seed "
        f"(default {DEFAULT_VALIDATION_FRACTION}; none for {FASHION_MNIST})",
    )
    parser.add_argument("--data-root", help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op CPU threads")
    parser.add_argument(
        "--stop-after", type=int, help="train at most this many more steps in this invocation"
    )
    parser.add_argument(
        "--time-limit-minutes",
        type=float,
        help="stop (saving and exporting) at the first logged step after this many minutes",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last convolutions on CPU (about 1.5x the steps/s at batch 64 here; "
        "python -m load_tests.bench_cpu_modes)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the networks (slow to start)"
    )
    parser.add_argument(
        "--start-from",
        type=Path,
        help="an exported checkpoint directory of the same kind and model config to start "
        "from instead of a fresh initialisation (fine-tuning, e.g. checkpoints/ddpm on your "
        "own images); a run that resumes --out keeps its own state",
    )
    background = parser.add_argument_group("background models (likelihood ratio, Ren et al. 2019)")
    background.add_argument(
        "--background-of",
        type=Path,
        metavar="RUN",
        help="train a background model of the foreground in RUN (its run directory or exported "
        "checkpoint): on its training data, mutated, unless --data names another folder",
    )
    background.add_argument(
        "--mutation-rate",
        type=float,
        help="probability that each value of a training image is replaced by a uniform draw "
        f"from 0..255 (default {DEFAULT_MUTATION_RATE} on the foreground's data, 0 on --data)",
    )
    args = parser.parse_args(argv)
    data_given = args.data is not None
    args.data = FASHION_MNIST if args.data is None else args.data
    if args.mutation_rate is not None and args.background_of is None:
        parser.error("--mutation-rate is for background models: add --background-of RUN")
    if args.background_of is None and args.config is None:
        parser.error("--config is required (or --background-of RUN, whose config is the default)")

    torch.set_num_threads(max(1, args.threads or 1))
    # TF32 matmuls (cuDNN's convolutions use TF32 by default already) and autotuned
    # convolution algorithms: training tolerates the rounding, the evaluation does not use it.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        if args.background_of is not None:
            try:
                experiment, args.data, args.resize = _background_experiment(args, data_given)
            except (ValueError, FileNotFoundError) as error:
                parser.error(f"--background-of: {error}")
        else:
            experiment = Experiment.from_file(args.kind, args.config)
    except UnavailableKindError as error:
        parser.error(str(error))
    try:
        data = load_training_data(
            args.data,
            experiment.image_shape,
            args.out,
            seed=experiment.train.seed,
            validation_fraction=args.validation_fraction,
            resize=args.resize,
            fashion_mnist_root=args.data_root,
            resuming=(args.out / STATE_FILE).exists(),
        )
    except (DataSourceError, DataFormatError, FileNotFoundError) as error:
        parser.error(f"{args.config}: {error}" if args.data == FASHION_MNIST else str(error))
    trainer = Trainer(experiment, args.out, resolve_device(args.device), data.description)
    if trainer.device.type == "cpu":  # speed only: parameter names and the maths are unchanged
        accelerate(trainer.model, Acceleration(args.channels_last, compile=args.compile))
    if trainer.try_resume():
        print(f"resuming {args.out} at step {trainer.step}", file=sys.stderr)
    elif args.start_from is not None:
        try:
            trainer.start_from(args.start_from)
        except (ValueError, FileNotFoundError) as error:  # CheckpointError is a ValueError
            parser.error(f"--start-from: {error}")
        print(f"starting from the weights of {args.start_from}", file=sys.stderr)
    described = data.description
    print(
        f"training on {described['training_images']} images of {args.data}, "
        f"{described['validation_images']} held out",
        file=sys.stderr,
    )
    trainer.run(
        data.images,
        args.stop_after,
        None if args.time_limit_minutes is None else 60.0 * args.time_limit_minutes,
        validation=data.validation,
    )
    print(f"exported {trainer.export()} at step {trainer.step}", file=sys.stderr)
    return 0


def _background_experiment(
    args: argparse.Namespace, data_given: bool
) -> tuple[Experiment, str, bool]:
    """The experiment of a background model of ``args.background_of``, and the data (source,
    resize) it trains on: the foreground's unless ``--data`` was given."""
    from models.core.checkpoints import WEIGHTS_FILE, weights_sha256

    foreground = read_foreground(args.background_of)
    fore = Experiment.from_dict(foreground.experiment)
    if args.config is not None:
        base = Experiment.from_file(args.kind, args.config)
    elif args.kind == fore.kind:
        base = fore
    else:
        raise ValueError(
            f"the foreground is a {fore.kind}; a {args.kind} background needs --config"
        )
    if base.image_shape != fore.image_shape:
        raise ValueError(
            f"a background reads the foreground's images, (C, H, W) = {fore.image_shape}; "
            f"this config reads {base.image_shape}"
        )
    rate = args.mutation_rate
    if rate is None:
        rate = 0.0 if data_given else DEFAULT_MUTATION_RATE
    of = BackgroundOf(
        foreground=str(foreground.checkpoint),
        foreground_sha256=weights_sha256(foreground.checkpoint / WEIGHTS_FILE),
        mutation_rate=rate,
    )
    experiment = Experiment(base.kind, base.model_config, base.train, background=of)
    if data_given:
        return experiment, args.data, args.resize
    return experiment, foreground.data, foreground.resize


if __name__ == "__main__":
    sys.exit(main())
