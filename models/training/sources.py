"""Where a training run's images come from, and which of them it holds out.

Two sources: the name ``fashion-mnist`` (the train split of the IDX files, all of it, as
before folders existed) or a folder of PNG and JPEG files (:mod:`models.folders`), read in the
mode and size of the model's config. From a folder a seeded ``validation_fraction`` is held
out; the run directory records the split so that a resumed run, and the evaluation, use
exactly the same held-out images:

    data.json         the source: folder, resize, validation fraction (a resume must match)
    validation.txt    the held-out files, one a line, relative to the folder (POSIX paths)

A resumed run reads its held-out files from ``validation.txt`` rather than drawing the split
again, so files added to the folder since are trained on and never leak into validation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.data import load_fashion_mnist
from models.folders import ImageFolder, holdout_split, load_image_folder
from models.kinds import ImageShape

FASHION_MNIST = "fashion-mnist"
DATA_FILE = "data.json"
VALIDATION_FILE = "validation.txt"
DEFAULT_VALIDATION_FRACTION = 0.1  # of a folder; Fashion-MNIST has its test split for that


class DataSourceError(ValueError):
    """The data asked for cannot be used for this run (wrong shape, another run's source,
    a held-out file gone); the message says what to do."""


@dataclass(frozen=True)
class TrainingData:
    """The images a run trains on (N, C, H, W) uint8, those it holds out (M, C, H, W) uint8
    or None, and what ``training.json`` records about them."""

    images: torch.Tensor
    validation: torch.Tensor | None
    description: dict[str, Any]


def load_training_data(
    source: str,
    shape: ImageShape,
    run_dir: Path,
    *,
    seed: int,
    validation_fraction: float | None = None,
    resize: bool = False,
    fashion_mnist_root: str | os.PathLike[str] | None = None,
    resuming: bool = False,
) -> TrainingData:
    """The training and held-out images of ``source`` (``fashion-mnist`` or a folder) for a
    model reading images of ``shape`` (C, H, W). A fresh run (``resuming`` False) draws the
    split with ``seed`` and writes ``data.json`` and ``validation.txt`` into ``run_dir``; a
    resumed one checks the source against ``data.json`` and reads the split back.

    Raises DataSourceError for data this run cannot use, DataFormatError naming every
    unreadable or mis-sized file, FileNotFoundError for a missing folder or IDX file.
    """
    if source == FASHION_MNIST:
        identity: dict[str, Any] = {"source": FASHION_MNIST}
        if validation_fraction:
            raise DataSourceError(
                "a validation fraction is for folders: Fashion-MNIST's held-out images are its "
                "test split"
            )
    else:
        fraction = (
            DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
        )
        if not 0.0 <= fraction < 1.0:
            raise DataSourceError(f"the validation fraction must be in [0, 1), got {fraction}")
        identity = {
            "source": "folder",
            "folder": str(Path(source).resolve()),
            "resize": resize,
            "validation_fraction": fraction,
        }
    if resuming:
        _check_same_source(run_dir, identity)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / DATA_FILE).write_text(json.dumps(identity, indent=2) + "\n")
        (run_dir / VALIDATION_FILE).unlink(missing_ok=True)
    if source == FASHION_MNIST:
        return _fashion_mnist(shape, fashion_mnist_root)
    return _folder(Path(identity["folder"]), shape, run_dir, identity, seed, resuming)


def _fashion_mnist(shape: ImageShape, root: str | os.PathLike[str] | None) -> TrainingData:
    images, _ = load_fashion_mnist("train", root)  # (60000, 1, 28, 28) uint8
    if tuple(images.shape[1:]) != shape:
        raise DataSourceError(
            f"Fashion-MNIST images are (C, H, W) = {tuple(images.shape[1:])}, this config "
            f"trains on {shape}: give a folder of images with --data"
        )
    description = {
        "source": FASHION_MNIST,
        "split": "train",
        "images": images.shape[0],
        "training_images": images.shape[0],
        "validation_images": 0,
    }
    return TrainingData(images, None, description)


def _folder(
    folder: Path,
    shape: ImageShape,
    run_dir: Path,
    identity: dict[str, Any],
    seed: int,
    resuming: bool,
) -> TrainingData:
    channels, height, width = shape
    if height != width:
        raise DataSourceError(f"folders are read as square images; this config is {height}x{width}")
    loaded = load_image_folder(folder, channels, height, resize=identity["resize"])
    if resuming:
        held = _read_split(run_dir, folder, loaded, identity["validation_fraction"])
        held_set = set(held.tolist())
        kept = torch.tensor(
            [i for i in range(len(loaded.paths)) if i not in held_set], dtype=torch.long
        )
    else:
        kept, held = holdout_split(len(loaded.paths), identity["validation_fraction"], seed)
        lines = [loaded.paths[i].relative_to(folder).as_posix() for i in held.tolist()]
        (run_dir / VALIDATION_FILE).write_text("".join(line + "\n" for line in lines))
    if len(kept) == 0:
        raise DataSourceError(f"{folder}: no images left to train on after the held-out split")
    description = {
        "source": "folder",
        "folder": identity["folder"],
        "images": len(loaded.paths),
        "training_images": len(kept),
        "validation_images": len(held),
        "validation_fraction": identity["validation_fraction"],
        "resized": identity["resize"],
        "validation_file": str((run_dir / VALIDATION_FILE).resolve()),
    }
    validation = loaded.images[held] if len(held) else None
    return TrainingData(loaded.images[kept], validation, description)


def _check_same_source(run_dir: Path, identity: dict[str, Any]) -> None:
    """A resumed run trains on what it started on (a run from before data.json existed
    trained on Fashion-MNIST)."""
    path = run_dir / DATA_FILE
    saved = json.loads(path.read_text()) if path.exists() else {"source": FASHION_MNIST}
    if saved != identity:
        raise DataSourceError(
            f"{run_dir} was started on other data ({_describe(saved)}), not {_describe(identity)}; "
            "use the same --data, --resize and --validation-fraction, or another --out"
        )


def _read_split(run_dir: Path, folder: Path, loaded: ImageFolder, fraction: float) -> torch.Tensor:
    """Indices into ``loaded`` (read from ``folder``) of the files ``validation.txt`` lists,
    each of which must still be there."""
    path = run_dir / VALIDATION_FILE
    if not path.exists():
        if fraction == 0:
            return torch.zeros(0, dtype=torch.long)
        raise DataSourceError(f"{path}: missing, so the held-out split cannot be restored")
    index = {p.relative_to(folder).as_posix(): i for i, p in enumerate(loaded.paths)}
    listed = [line for line in path.read_text().splitlines() if line]
    missing = [name for name in listed if name not in index]
    if missing:
        raise DataSourceError(
            f"{path}: {len(missing)} held-out files are no longer in {folder}: "
            + ", ".join(missing[:10])
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    return torch.tensor(sorted(index[name] for name in listed), dtype=torch.long)


def _describe(identity: dict[str, Any]) -> str:
    if identity["source"] == FASHION_MNIST:
        return FASHION_MNIST
    resize = ", resized" if identity.get("resize") else ""
    return f"{identity['folder']}{resize}, {identity.get('validation_fraction')} held out"
