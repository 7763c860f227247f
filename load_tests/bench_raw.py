"""In-process parts of the benchmark: the model work behind the endpoints at the service's
batch sizes (no HTTP), its GFLOP per item, and this machine's matmul peak."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.core.checkpoints import Checkpoint
from models.core.progressive import run_to_end
from models.kinds import kind_of
from service import runners
from service.settings import Settings

Work = Callable[[torch.Tensor], Any]  # uint8 images (B, 1, 28, 28) -> anything


def workloads(vae: Checkpoint, ddpm: Checkpoint, ddim_steps: int = 50) -> dict[str, Work]:
    """The runner calls behind /score (VAE ELBO, DDPM vlb_mc at the calibrated k) and
    /sample (DDIM), exactly as the batcher makes them, with the service's default settings."""
    k = ddpm.card.get("calibration", {}).get("vlb_mc", {}).get("k") or 10
    settings = Settings()
    device = str(next(ddpm.model.parameters()).device)
    max_batch = settings.rows_per_bound_call(device)  # bound network calls of about this many
    chunk_rows = settings.chunk_rows(device)  # sampling calls of exactly this many

    elbo = kind_of(vae.model).method_for(vae.model, "elbo")
    vlb_mc = kind_of(ddpm.model).method_for(ddpm.model, "vlb_mc")
    ddim_options = {"sampler": "ddim", "steps": ddim_steps, "eta": 0.0}

    def vae_elbo(x: torch.Tensor) -> Any:
        jobs = [runners.ImagesJob(x)]
        return run_to_end(runners.bound(elbo, vae.model, jobs, None, max_batch))

    def ddpm_vlb_mc(x: torch.Tensor) -> Any:
        jobs = [runners.ImagesJob(x)]
        return run_to_end(runners.bound(vlb_mc, ddpm.model, jobs, k, max_batch))

    def ddim(x: torch.Tensor) -> Any:
        jobs = [runners.SampleJob(len(x), 0)]
        kind = kind_of(ddpm.model)
        return run_to_end(runners.sample(kind, ddpm.model, jobs, ddim_options, chunk_rows))

    return {"vae_elbo": vae_elbo, "ddpm_vlb_mc": ddpm_vlb_mc, f"ddim_{ddim_steps}": ddim}


def items_per_second(work: Work, x: torch.Tensor, min_seconds: float, lanes: int = 1) -> float:
    """Calls ``work(x)`` after one warm-up until ``min_seconds`` pass, from ``lanes`` threads
    at once (as the service's model lanes do); items per second, all threads together."""
    work(x)

    def calls_until(stop_at: float) -> int:
        calls = 0
        while calls == 0 or time.perf_counter() < stop_at:
            work(x)
            calls += 1
        return calls

    start = time.perf_counter()
    with ThreadPoolExecutor(lanes) as pool:
        counts = list(pool.map(calls_until, [start + min_seconds] * lanes))
    return sum(counts) * len(x) / (time.perf_counter() - start)


@torch.no_grad()
def gflop_per_item(work: Work, x: torch.Tensor) -> float:
    """Floating-point operations of one call, counted by torch (matmuls and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        work(x)
    return counter.get_total_flops() / len(x) / 1e9


def matmul_peak_gflops(
    size: int = 1024, min_seconds: float = 1.0, device: torch.device | str = "cpu"
) -> float:
    """Achieved GFLOP/s of a square float32 matmul on ``device`` (TF32 on a GPU, as cuDNN's
    convolutions use by default): the practical ceiling for the models."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)

    def product(m: torch.Tensor) -> torch.Tensor:
        with _tf32_matmuls():
            out = m @ b
        if out.is_cuda:  # time the product, not its launch
            torch.cuda.synchronize(out.device)
        return out

    rows_per_second = items_per_second(product, a, min_seconds)
    return 2 * size**3 * (rows_per_second / size) / 1e9


@contextmanager
def _tf32_matmuls():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def raw_throughput(
    work: dict[str, Work],
    images: torch.Tensor,
    batch_sizes: list[int],
    min_seconds: float,
    lanes: int = 1,
) -> dict[str, Any]:
    """Per workload: items/s per batch size from one thread and from ``lanes`` threads at
    once, GFLOP per item and the best achieved GFLOP/s."""
    report: dict[str, Any] = {}
    for name, run in work.items():
        rates = {b: items_per_second(run, images[:b], min_seconds) for b in batch_sizes}
        in_lanes = (
            {b: items_per_second(run, images[:b], min_seconds, lanes) for b in batch_sizes}
            if lanes > 1
            else rates
        )
        flops = gflop_per_item(run, images[: batch_sizes[-1]])
        report[name] = {
            "items_per_second": {str(b): rate for b, rate in rates.items()},
            "lanes": lanes,
            "items_per_second_in_lanes": {str(b): rate for b, rate in in_lanes.items()},
            "gflop_per_item": flops,
            "achieved_gflops": flops * max(rates.values()),
            "achieved_gflops_in_lanes": flops * max(in_lanes.values()),
        }
    return report
