"""Your own images for the evaluation: a folder of normal images split into the part that
measures (likelihood, the normal side of AUROC) and the part held out for calibration, outlier
folders, and the card's record of which images were used for what.

When the checkpoint's training run wrote ``RUN/validation.txt`` (the images it held out from
training, one path per line; the checkpoint is ``RUN/checkpoint``) and ``--normal`` is the
folder it trained on, only those images are used: the model never saw them. Otherwise the card
warns that the normal images may include training images.

A path in validation.txt is absolute, relative to the normal folder, or relative to the working
directory, tried in that order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from models.core.card import EvaluationData, ImageSet
from models.folders import ImageFolder, holdout_split, load_image_folder

VALIDATION_FILE = "validation.txt"
# Held-out images below which a 1% false-positive threshold cannot be resolved.
_FEW_HELD_OUT = 100


@dataclass(frozen=True)
class FolderData:
    """Normal images to measure (seeded order), held out for calibration, and outlier folders
    (each in a seeded order), with the card's record of them."""

    measured: ImageFolder
    held_out: ImageFolder
    outliers: dict[str, ImageFolder]
    record: EvaluationData


def outlier_spec(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named by the directory's name) -> (name, directory)."""
    name, sep, directory = spec.partition("=")
    if sep and name and "/" not in name:
        return name, Path(directory)
    return Path(spec).resolve().name, Path(spec)


def paths_sha256(folder: Path, paths: tuple[Path, ...]) -> str:
    """SHA-256 of the paths relative to ``folder``, sorted, one per line (POSIX separators)."""
    relative = sorted(path.relative_to(folder).as_posix() for path in paths)
    return hashlib.sha256("\n".join(relative).encode()).hexdigest()


def image_set(folder: Path, images: ImageFolder) -> ImageSet:
    return ImageSet(str(folder), len(images.paths), paths_sha256(folder, images.paths))


def _shuffled(images: ImageFolder, seed: int) -> ImageFolder:
    """The images in a seeded order, so that the first N of them are a random N."""
    generator = torch.Generator().manual_seed(seed)
    return images.subset(torch.randperm(len(images.paths), generator=generator))


def _validation_indices(folder: ImageFolder, normal: Path, listed: list[str]) -> list[int]:
    """Indices in ``folder`` of the listed validation images: all of them, or none when the
    folder is not the one the run trained on; SystemExit when only some are in it."""
    index = {path.resolve(): i for i, path in enumerate(folder.paths)}
    found, missing = [], []
    for line in listed:
        path = Path(line)
        candidates = [path] if path.is_absolute() else [normal / path, path]
        matches = [index[c.resolve()] for c in candidates if c.resolve() in index]
        if matches:
            found.append(matches[0])
        else:
            missing.append(line)
    if found and missing:
        raise SystemExit(
            f"{len(missing)} of the {len(listed)} validation images are not in {normal} "
            f"(first: {missing[0]}); evaluate on the folder the run trained on, unchanged"
        )
    return sorted(set(found))


def load_folders(
    normal: Path,
    outliers: list[str],
    image_shape: tuple[int, int, int],
    resize: bool,
    held_out_fraction: float,
    seed: int,
    run_dir: Path,
) -> FolderData:
    """The normal folder in ``image_shape`` (C, H, W), split into measured and held-out parts
    by a seeded draw of ``held_out_fraction`` (of the run's validation images, when it wrote
    them and ``normal`` is its training folder), and each outlier folder."""
    channels, height, width = image_shape
    if height != width:
        raise SystemExit(f"folders are read as square images; the model reads {height}x{width}")
    folder = load_image_folder(normal, channels, height, resize)
    warnings = []
    validation = run_dir / VALIDATION_FILE
    if validation.is_file():
        listed = [line.strip() for line in validation.read_text().splitlines() if line.strip()]
        indices = _validation_indices(folder, normal, listed)
        if indices:
            pool = folder.subset(torch.tensor(indices, dtype=torch.long))
            origin = f"the {len(indices)} images {validation} holds out from training"
        else:
            pool, origin = folder, f"all {len(folder.paths)} images of {normal}"
            warnings.append(
                f"{validation} names none of the images of {normal}: it is not the folder the "
                "model trained on, so whether the model saw these images is unknown"
            )
    else:
        pool, origin = folder, f"all {len(folder.paths)} images of {normal}"
        warnings.append(
            f"no {validation}: the normal images may include training images, which makes the "
            "likelihood optimistic and the thresholds low (more false positives on new images)"
        )
    if len(pool.paths) < 2:
        raise SystemExit(f"{origin}: need at least 2 normal images, one to measure, one held out")
    kept, held = holdout_split(len(pool.paths), held_out_fraction, seed)
    measured, held_out = _shuffled(pool.subset(kept), seed), pool.subset(held)
    if len(held_out.paths) < _FEW_HELD_OUT:
        warnings.append(
            f"{len(held_out.paths)} held-out images resolve false-positive rates down to "
            f"1/{len(held_out.paths)} only"
        )
    named = {}
    for spec in outliers:
        name, directory = outlier_spec(spec)
        if name in named:
            raise SystemExit(f"two outlier folders are named {name!r}; name them NAME=DIR")
        images = load_image_folder(directory, channels, height, resize)
        named[name] = (directory, _shuffled(images, seed))
    record = EvaluationData(
        normal_folder=str(normal),
        normal_images=len(folder.paths),
        split=f"{origin}, a seeded draw (seed {seed}) of {held_out_fraction:g} held out",
        measured=image_set(normal, measured),
        held_out=image_set(normal, held_out),
        outliers={name: image_set(d, images) for name, (d, images) in named.items()},
        warnings=tuple(warnings),
    )
    return FolderData(
        measured, held_out, {name: images for name, (_, images) in named.items()}, record
    )
