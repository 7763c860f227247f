"""The serving benchmark: prints a table and writes JSON.

    python -m load_tests.benchmark --out runs/benchmark.json            # everything (long)
    python -m load_tests.benchmark --quick --out runs/benchmark-quick.json  # smoke, ~2 min
    python -m load_tests.benchmark --parts raw,ddim --ddim-steps 10,50 --ddim-samples 500

Parts: ``raw`` (in-process items/s at the service's batch sizes, GFLOP per item, achieved
GFLOP/s against a measured matmul peak), ``http`` (loopback throughput and latency at each
concurrency for BentoML batched, BentoML unbatched, a no-op endpoint and a FastAPI wrapper;
served/raw ratio, batching gain, peak server RSS), ``ddim`` (DDIM steps against time per
image and Fréchet distance) and ``soak`` (server RSS after warm-up and after a soak).
Checkpoints come from the service's settings (``ELBO_SERVE_*_CHECKPOINT``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from load_tests.bench_parts import run_part
from load_tests.bench_table import print_table
from load_tests.serving import REPO_ROOT

PARTS = ("raw", "http", "ddim", "soak")
QUICK = {
    "batch_sizes": "1,8",
    "raw_seconds": 0.3,
    "concurrency": "1,8",
    "http_seconds": 1.0,
    "ddim_steps": "10,25",
    "ddim_samples": 16,
    "ancestral_samples": 0,
    "soak_seconds": 5.0,
    "matmul_size": 256,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--parts", default=",".join(PARTS), help=f"Comma-separated subset of {PARTS}.")
    add("--quick", action="store_true", help="Small sizes for every part (a smoke run).")
    add("--out", type=Path, default=Path("runs/benchmark.json"), help="JSON output file.")
    add("--batch-sizes", default="1,8,64", help="Raw part: batch sizes (the service's max 64).")
    add("--raw-seconds", type=float, default=3.0, help="Raw part: seconds per measurement.")
    add("--matmul-size", type=int, default=1024, help="Raw part: square matmul for the peak.")
    add("--concurrency", default="1,8,32,64", help="HTTP part: closed-loop client counts.")
    add("--http-seconds", type=float, default=15.0, help="HTTP part: seconds per cell.")
    add("--raw-ddim-steps", type=int, default=50, help="Raw part: steps of the DDIM workload.")
    add("--ddim-steps", default="10,25,50,100,250,1000", help="DDIM part: step counts.")
    add("--ddim-samples", type=int, default=1000, help="DDIM part: images per step count.")
    add("--ddim-eta", type=float, default=0.0, help="DDIM part: eta of every DDIM sampler.")
    add("--ancestral-samples", type=int, default=100, help="DDIM part: ancestral images.")
    add(
        "--ancestral-steps",
        default="",
        help="DDIM part: step counts of respaced ancestral sampling with the model's variances "
        "(Nichol & Dhariwal 2021), on --ddim-samples images each; empty: none.",
    )
    add("--soak-seconds", type=float, default=600.0, help="Soak part: duration.")
    add("--soak-concurrency", type=int, default=8, help="Soak part: moderate load.")
    add(
        "--torch-threads",
        type=int,
        default=1,
        help="Torch threads here and in the servers; 0: torch's default (one per core, "
        "which on a busy 2-core machine made the VAE 100x slower).",
    )
    add(
        "--model-lanes",
        type=int,
        default=0,
        help="Model calls a server may run at once (ELBO_SERVE_MODEL_LANES); 0: the "
        "service's default, one per core on CPU.",
    )
    add("--classifier", type=Path, default=REPO_ROOT / "checkpoints" / "classifier")
    args = parser.parse_args(argv)
    if args.quick:  # only the options left at their defaults
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    args.parts = [p for p in args.parts.split(",") if p]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from {PARTS}")
    return args


def hardware() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    results: dict[str, Any] = {
        "command": "python -m load_tests.benchmark "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "hardware": hardware(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="elbo-bench-") as scratch:
        for part in args.parts:
            started = time.perf_counter()
            results[part] = run_part(part, args, results, Path(scratch))
            results[part]["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print_table(results)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
