"""A Fréchet-distance measurement that survives sessions: samples drawn in fixed seeded chunks,
each chunk kept as the sufficient statistics of its classifier features (a small file), the
distance computed from their sums (identical to computing it from all features at once).

    python -m models.eval.fd_resumable checkpoints/ddpm \\
        --sampler ddim_50 sampler=ddim steps=50 eta=0 \\
        --sampler ancestral_50 sampler=ancestral steps=50

Each ``--sampler NAME KEY=VALUE ...`` is a sampling request as ``/sample`` takes it, resolved by
the checkpoint's kind (``sample_options_for``), so the figures are those of what the service
draws. Chunk c of sampler NAME is drawn with a generator seeded by crc32("NAME:c"), so a chunk
is the same images whoever draws it, whenever. The samplers take turns chunk by chunk: at any
moment they have (nearly) the same number of samples, and ``results.json`` gives each one's
distance at its current sample size beside the real-data floor at that size (the first n of a
fixed seeded draw of training images), rewritten after every chunk.

The folder (default CHECKPOINT/fd10k) holds ``manifest.json`` (weights and classifier hashes,
sizes, each sampler's resolved options: a rerun with anything else is refused), one
``NAME/chunk_NNNN.safetensors`` per finished chunk (written atomically), and ``results.json``.
A rerun skips finished chunks; commit the folder to carry the measurement to the next session.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from models.core.checkpoints import WEIGHTS_FILE, load_checkpoint, weights_sha256
from models.core.noise import seeded_generator
from models.core.pixels import signed_unit_to_pixels
from models.core.progressive import run_to_end
from models.core.serving_defaults import ServingDefaults, write_serving_defaults
from models.eval.frechet import FeatureSums, frechet_distance
from models.kinds import ModelKind, kind_of
from models.nn.classifier import FashionClassifier
from models.training.classifier import extract_features

MANIFEST, RESULTS = "manifest.json", "results.json"
FLOOR_SEED = 0  # the draw of training images the real-data floor is measured on
Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one measurement is: every field must match for finished chunks to be reused."""

    weights_sha256: str
    classifier_sha256: str
    samples: int  # per sampler
    chunk_size: int
    reference: str  # what the samples are compared with
    samplers: Mapping[str, Mapping[str, Any]]  # name -> resolved sampling options

    @property
    def num_chunks(self) -> int:
        return -(-self.samples // self.chunk_size)

    def chunk_rows(self, chunk: int) -> int:
        return min(self.chunk_size, self.samples - chunk * self.chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_sha256": self.weights_sha256,
            "classifier_sha256": self.classifier_sha256,
            "samples": self.samples,
            "chunk_size": self.chunk_size,
            "reference": self.reference,
            "samplers": {name: dict(options) for name, options in self.samplers.items()},
        }


def chunk_seed(sampler: str, chunk: int) -> int:
    """The seed of chunk ``chunk`` of ``sampler``: the same in every process and session."""
    return zlib.crc32(f"{sampler}:{chunk}".encode())


def chunk_path(out: Path, sampler: str, chunk: int) -> Path:
    return out / sampler / f"chunk_{chunk:04d}.safetensors"


def save_sums(path: Path, sums: FeatureSums, metadata: Mapping[str, str]) -> None:
    """The sums in float64, the symmetric outer-product sum as its upper triangle; written to
    a temporary file and renamed, so a killed run never leaves half a chunk."""
    rows, cols = torch.triu_indices(*sums.outer.shape)
    tensors = {
        "count": torch.tensor([sums.count], dtype=torch.int64),
        "total": sums.total.double().contiguous(),
        "outer_upper": sums.outer[rows, cols].double().contiguous(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    safetensors.torch.save_file(tensors, str(partial), metadata=dict(metadata))
    partial.chmod(0o644)  # safetensors writes 0600; the folder is committed and shared
    os.replace(partial, path)


def load_sums(path: Path) -> FeatureSums:
    tensors = safetensors.torch.load_file(str(path))
    total = tensors["total"]
    rows, cols = torch.triu_indices(len(total), len(total))
    outer = torch.zeros(len(total), len(total), dtype=torch.float64)
    outer[rows, cols] = tensors["outer_upper"]
    outer[cols, rows] = tensors["outer_upper"]
    return FeatureSums(int(tensors["count"].item()), total, outer)


def draw_chunk(
    kind: ModelKind, model: torch.nn.Module, options: Mapping[str, Any], rows: int, seed: int
) -> torch.Tensor:
    """``rows`` uint8 images (rows, C, H, W) sampled with ``options``, all rows from one
    generator seeded with ``seed`` (one noise block, as one request of that seed draws)."""
    generator = seeded_generator(seed)
    with torch.no_grad():
        images = run_to_end(kind.sample(model, [generator] * rows, options, None))
    return signed_unit_to_pixels(images)


def read_manifest(out: Path, plan: Plan) -> None:
    """Write the plan's manifest in a new folder; refuse a folder measured under another."""
    path = out / MANIFEST
    if path.exists():
        found = json.loads(path.read_text())
        if found != plan.to_dict():
            differs = sorted(k for k in found.keys() | plan.to_dict().keys()
                             if found.get(k) != plan.to_dict().get(k))  # fmt: skip
            raise SystemExit(
                f"{path} was measured with other {', '.join(differs)}; use another --out "
                "or delete that folder to start again"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan.to_dict(), indent=1) + "\n")


def summed(out: Path, plan: Plan, sampler: str) -> tuple[FeatureSums | None, int, float]:
    """The sum of the sampler's finished chunks, how many there are and their seconds."""
    sums, chunks, seconds = None, 0, 0.0
    for chunk in range(plan.num_chunks):
        path = chunk_path(out, sampler, chunk)
        if path.exists():
            part = load_sums(path)
            sums = part if sums is None else sums + part
            chunks += 1
            seconds += float(safetensors.safe_open(str(path), "pt").metadata()["seconds"])
    return sums, chunks, seconds


def results(
    out: Path, plan: Plan, reference: torch.Tensor, floor_features: torch.Tensor
) -> dict[str, Any]:
    """Each sampler's Fréchet distance at the samples it has, beside the floor at as many
    real images (the first n of the floor's draw), and the seconds per image its chunks took."""
    reference_stats = FeatureSums.of(reference).statistics()
    figures: dict[str, Any] = {}
    for sampler, options in plan.samplers.items():
        sums, chunks, seconds = summed(out, plan, sampler)
        entry: dict[str, Any] = {"options": dict(options), "chunks_done": chunks,
                                 "num_samples": 0 if sums is None else sums.count}  # fmt: skip
        if sums is not None and sums.count >= 2:
            distance = frechet_distance(sums.statistics(), reference_stats)
            floor_stats = FeatureSums.of(floor_features[: sums.count]).statistics()
            floor = frechet_distance(floor_stats, reference_stats)
            entry |= {
                "complete": sums.count == plan.samples,
                "frechet_distance": distance,
                "real_data_floor": floor,
                "ratio_to_floor": distance / floor,
                "seconds_per_image": seconds / sums.count,
            }
        figures[sampler] = entry
    return {
        "reference": plan.reference,
        "real_data_floor": f"the first n of {len(floor_features)} training images drawn with "
        f"seed {FLOOR_SEED} (n: each sampler's num_samples)",
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "samplers": figures,
    }


def best_sampler(plan: Plan, figures: Mapping[str, Any]) -> ServingDefaults | None:
    """The serving defaults the finished measurement chooses: the sampler with the lowest
    Fréchet distance, once every sampler has all its samples (None before: a ranking at
    part of the samples is what this measurement exists to replace)."""
    samplers = figures["samplers"]
    if not all(entry.get("complete") for entry in samplers.values()):
        return None
    best = min(samplers, key=lambda name: samplers[name]["frechet_distance"])
    floor = samplers[best]["real_data_floor"]
    compared = "; ".join(
        f"{name} {entry['frechet_distance']:.2f}" for name, entry in samplers.items()
    )
    return ServingDefaults(
        sample=dict(plan.samplers[best]),
        measured=f"lowest Fréchet distance at {plan.samples} samples against {plan.reference}"
        f" (real-data floor {floor:.2f}): {compared}; {figures['updated']}",
        weights_sha256=plan.weights_sha256,
    )


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(partial, path)


def measure_in_chunks(
    kind: ModelKind,
    model: torch.nn.Module,
    classifier: FashionClassifier,
    plan: Plan,
    out: Path,
    reference: torch.Tensor,
    floor_images: torch.Tensor,
    log: Log = print,
    max_chunks: int | None = None,
) -> dict[str, Any]:
    """Draw every missing chunk (at most ``max_chunks`` this call), samplers taking turns,
    keeping each chunk's feature sums and rewriting ``results.json`` after each; the results.

    reference, floor_images: uint8 (N, C, H, W); the floor uses the first n of floor_images."""
    read_manifest(out, plan)
    reference_features = extract_features(classifier, reference)
    floor_features = extract_features(classifier, floor_images)
    todo = [(c, s) for c in range(plan.num_chunks) for s in plan.samplers
            if not chunk_path(out, s, c).exists()]  # fmt: skip
    if max_chunks is not None:
        todo = todo[:max_chunks]
    log(f"{out}: {len(todo)} chunks to draw of {plan.num_chunks * len(plan.samplers)}")
    spent: dict[str, list[float]] = {s: [0.0, 0] for s in plan.samplers}  # seconds, images
    for done, (chunk, sampler) in enumerate(todo, start=1):
        rows, seed = plan.chunk_rows(chunk), chunk_seed(sampler, chunk)
        started = time.perf_counter()
        images = draw_chunk(kind, model, plan.samplers[sampler], rows, seed)
        seconds = time.perf_counter() - started
        meta = {"sampler": sampler, "chunk": str(chunk), "seed": str(seed),
                "seconds": f"{seconds:.3f}", "torch_threads": str(torch.get_num_threads()),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        save_sums(chunk_path(out, sampler, chunk), FeatureSums.of(
            extract_features(classifier, images)), meta)  # fmt: skip
        write_json(out / RESULTS, results(out, plan, reference_features, floor_features))
        spent[sampler][0] += seconds
        spent[sampler][1] += rows
        log(_progress(out, plan, sampler, chunk, rows, seconds, spent, todo[done:]))
    final = results(out, plan, reference_features, floor_features)
    write_json(out / RESULTS, final)
    return final


def _progress(out, plan, sampler, chunk, rows, seconds, spent, left) -> str:
    """One line: the chunk just drawn, its rate, and the time left per sampler at this
    session's rate of each."""
    etas, total = [], 0.0
    for name, (total_seconds, images) in spent.items():
        remaining = sum(plan.chunk_rows(c) for c, s in left if s == name)
        if images:
            total += remaining * total_seconds / images
            etas.append(f"{name} {_hours(remaining * total_seconds / images)}")
    end = time.strftime("%a %H:%M UTC", time.gmtime(time.time() + total))
    finished = sum(chunk_path(out, s, c).exists()
                   for s in plan.samplers for c in range(plan.num_chunks))  # fmt: skip
    return (
        f"{time.strftime('%H:%M:%S')} {sampler} chunk {chunk + 1}/{plan.num_chunks}: "
        f"{rows} images in {seconds:.0f} s ({rows / seconds:.3f} images/s); "
        f"{finished}/{plan.num_chunks * len(plan.samplers)} chunks done; "
        f"left at this run's rates: {', '.join(etas)} (all done about {end})"
    )


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE words -> options, each value an int, a float or else a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"sampler options are KEY=VALUE, got {pair!r}")
        for convert in (int, float, str):
            try:
                options[key] = convert(value)
                break
            except ValueError:
                continue
    return options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--classifier", type=Path, default=Path("checkpoints/classifier"))
    parser.add_argument(
        "--sampler",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "KEY=VALUE"),
        help="a sampler to measure: its name, then its /sample options (sampler=ddim steps=50)",
    )
    parser.add_argument("--samples", type=int, default=10_000, help="per sampler")
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--out", type=Path, help="default: CHECKPOINT/fd10k")
    parser.add_argument("--max-chunks", type=int, help="stop after this many chunks")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument(
        "--write-serving-defaults",
        action="store_true",
        help="once every sampler is complete, write the best one as CHECKPOINT's "
        "serving_defaults.json (what /sample draws when a request names no sampler)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from models.data import load_fashion_mnist

    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    if args.samples < 2 or args.chunk_size < 1:
        raise SystemExit("--samples must be >= 2 and --chunk-size >= 1")
    model = load_checkpoint(args.checkpoint).model.eval()
    kind = kind_of(model)
    classifier = load_checkpoint(args.classifier).model.eval()
    samplers = {}
    for name, *pairs in args.sampler:
        options = parse_options(pairs)
        samplers[name] = kind.sample_options_for(model, options.pop("sampler", None), options)
    test, _ = load_fashion_mnist("test", args.data_root)
    train, _ = load_fashion_mnist("train", args.data_root)
    draw = torch.randperm(len(train), generator=torch.Generator().manual_seed(FLOOR_SEED))
    plan = Plan(
        weights_sha256=weights_sha256(args.checkpoint / WEIGHTS_FILE),
        classifier_sha256=weights_sha256(args.classifier / WEIGHTS_FILE),
        samples=args.samples,
        chunk_size=args.chunk_size,
        reference=f"all {len(test)} Fashion-MNIST test images",
        samplers=samplers,
    )
    out = args.out or args.checkpoint / "fd10k"
    final = measure_in_chunks(
        kind, model, classifier, plan, out, test, train[draw[: args.samples]],
        lambda line: print(line, flush=True), args.max_chunks,
    )  # fmt: skip
    json.dump(final, sys.stdout, indent=1)
    print()
    if args.write_serving_defaults:
        chosen = best_sampler(plan, final)
        if chosen is None:
            print("not every sampler is complete: no serving defaults written", file=sys.stderr)
        else:
            path = write_serving_defaults(args.checkpoint, chosen)
            print(f"{path}: {chosen.sample} ({chosen.measured})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
