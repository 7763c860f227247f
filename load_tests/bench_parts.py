"""The benchmark's parts: each takes the parsed options and returns its JSON section."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from load_tests import bench_http, bench_raw
from load_tests.bench_http import Request
from load_tests.payloads import image_pool
from load_tests.serving import free_port, running_process, running_server, server_environment
from models.core.checkpoints import load_checkpoint
from models.data import load_fashion_mnist
from service.settings import Settings

# Which raw workload each HTTP workload serves (for the served/raw ratio).
RAW_OF = {"score_vae_1": "vae_elbo", "score_vae_64": "vae_elbo", "score_ddpm_1": "ddpm_vlb_mc"}
RAW_OF["ddim_50"] = "ddim_50"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def run_part(part: str, args: Any, results: dict[str, Any], scratch: Path) -> dict[str, Any]:
    return {"raw": raw, "http": http, "ddim": ddim, "soak": soak}[part](args, results, scratch)


def _checkpoints(device: str):
    settings = Settings.from_env()
    return (
        load_checkpoint(settings.served_directories()["vae"], device),
        load_checkpoint(settings.served_directories()["ddpm"], device),
    )


def raw(args: Any, results: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """On the service's device (ELBO_SERVE_DEVICE; CUDA when there is one)."""
    device = Settings.from_env().resolve_device()
    vae, ddpm = _checkpoints(device)
    sizes = ints(args.batch_sizes)
    images = load_fashion_mnist("test")[0][: max(sizes)]
    lanes = Settings(model_lanes=args.model_lanes).lanes(device)
    report = bench_raw.raw_throughput(
        bench_raw.workloads(vae, ddpm, args.raw_ddim_steps), images, sizes, args.raw_seconds, lanes
    )
    peak = bench_raw.matmul_peak_gflops(args.matmul_size, args.raw_seconds, device)
    for entry in report.values():
        entry["share_of_matmul_peak"] = entry["achieved_gflops"] / peak
    return {"device": device, "workloads": report, "matmul_peak_gflops": peak}


def _requests() -> dict[str, Request]:
    images = image_pool(64).normal
    return {
        "score_vae_1": Request("/score", {"model": "vae", "images": images[:1]}, 1),
        "score_vae_64": Request("/score", {"model": "vae", "images": images}, 64),
        "score_ddpm_1": Request("/score", {"model": "ddpm", "images": images[:1]}, 1),
        "ddim_50": Request("/sample", {"model": "ddpm", "n": 1, "steps": 50, "seed": 0}, 1),
        "noop_1": Request("/noop", {"model": "vae", "images": images[:1]}, 1),
    }


# Server -> the workloads it is measured on.
SERVERS = {
    "bentoml": ("score_vae_1", "score_vae_64", "score_ddpm_1", "ddim_50", "noop_1"),
    "bentoml_unbatched": ("score_vae_1", "score_ddpm_1", "ddim_50"),
    "fastapi_unbatched": ("score_vae_1", "score_ddpm_1"),
}


@contextmanager
def _server(kind: str, args: Any, scratch: Path):
    overrides = {"ELBO_SERVE_TORCH_THREADS": str(args.torch_threads)}
    overrides["ELBO_SERVE_MODEL_LANES"] = str(args.model_lanes)
    overrides["ELBO_SERVE_BATCHING"] = "false" if kind == "bentoml_unbatched" else "true"
    overrides["ELBO_SERVE_NOOP_ENDPOINT"] = "true"
    env = server_environment(overrides, scratch / f"bentoml-home-{kind}")
    log = scratch / f"{kind}.log"
    if kind == "fastapi_unbatched":
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "load_tests.fastapi_baseline:app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        with running_process(command, port, env, log) as served:
            yield served
    else:
        with running_server(env, log) as served:
            yield served


def http(args: Any, results: dict[str, Any], scratch: Path) -> dict[str, Any]:
    requests, levels = _requests(), ints(args.concurrency)
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    peak_rss, cuda_memory = {}, {}
    for kind, names in SERVERS.items():
        with _server(kind, args, scratch) as (url, process):
            idle_cuda = cuda_memory_gauges(url)
            with bench_http.PeakRss(process.pid) as rss:
                cells[kind] = {
                    name: [
                        bench_http.measure(url, requests[name], c, args.http_seconds)
                        for c in levels
                    ]
                    for name in names
                }
            peak_rss[kind] = rss.peak
            if idle_cuda is not None:
                cuda_memory[kind] = {"idle": idle_cuda, "after_load": cuda_memory_gauges(url)}
    return {
        "cells": cells,
        "peak_rss_bytes": peak_rss,
        "cuda_memory_bytes": cuda_memory,
        **_ratios(cells, results.get("raw")),
    }


CUDA_GAUGES = ("elbo_serve_cuda_memory_allocated_bytes", "elbo_serve_cuda_memory_peak_bytes")


def cuda_memory_gauges(url: str) -> dict[str, float] | None:
    """The server's CUDA memory gauges, each summed over its series: the memory held between
    calls and the last call's peak (None: no such series, e.g. CPU, or no /metrics at all,
    as on the FastAPI baseline)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise
    gauges = {
        name: [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{")
        ]
        for name in CUDA_GAUGES
    }
    return (
        {name: sum(values) for name, values in gauges.items()} if gauges[CUDA_GAUGES[0]] else None
    )


def _per_level(a: list[dict], b: list[dict], key: str) -> dict[str, float]:
    """{concurrency: a[key] / b[key]} over matching cells."""
    ratios = {}
    for x, y in zip(a, b, strict=True):
        ratios[str(x["concurrency"])] = x[key] / y[key] if y[key] else float("nan")
    return ratios


def _ratios(cells: dict, raw_part: dict | None) -> dict[str, Any]:
    served = cells["bentoml"]
    ratios: dict[str, Any] = {
        "score_over_noop": _per_level(
            served["score_vae_1"], served["noop_1"], "requests_per_second"
        ),
        "batching_gain": {
            name: _per_level(served[name], cells["bentoml_unbatched"][name], "items_per_second")
            for name in SERVERS["bentoml_unbatched"]
        },
        "bentoml_over_fastapi": {
            name: _per_level(served[name], cells["fastapi_unbatched"][name], "requests_per_second")
            for name in SERVERS["fastapi_unbatched"]
        },
    }
    if raw_part:  # served items/s over the best raw items/s of the same work, same lanes
        best = {
            name: max(work["items_per_second_in_lanes"].values())
            for name, work in raw_part["workloads"].items()
        }
        ratios["served_over_raw"] = {
            name: {
                str(c["concurrency"]): c["items_per_second"] / best[RAW_OF[name]]
                for c in served[name]
            }
            for name in RAW_OF
        }
    return ratios


def ddim(args: Any, results: dict[str, Any], scratch: Path) -> dict[str, Any]:
    from load_tests.bench_quality import ddim_steps_report

    _, ddpm = _checkpoints(Settings.from_env().resolve_device())
    steps = ints(args.ddim_steps)
    samplers = ddim_steps_report(
        ddpm,
        args.classifier,
        steps,
        args.ddim_samples,
        args.ancestral_samples,
        250,
        args.ddim_eta,
        ints(args.ancestral_steps) if args.ancestral_steps else [],
    )
    return {"samplers": samplers}


def soak(args: Any, results: dict[str, Any], scratch: Path) -> dict[str, Any]:
    request = _requests()["score_vae_1"]
    warm_up_s = min(60.0, max(2.0, args.soak_seconds / 10))
    with _server("bentoml", args, scratch) as (url, process):
        bench_http.measure(url, request, args.soak_concurrency, warm_up_s)
        after_warm_up = bench_http.tree_rss_bytes(process.pid)
        with bench_http.PeakRss(process.pid) as rss:
            load = bench_http.measure(url, request, args.soak_concurrency, args.soak_seconds)
        after_soak = bench_http.tree_rss_bytes(process.pid)
    return {
        "warm_up_seconds": warm_up_s,
        "rss_after_warm_up_bytes": after_warm_up,
        "rss_after_soak_bytes": after_soak,
        "rss_growth": after_soak / after_warm_up - 1,
        "peak_rss_bytes": rss.peak,
        "load": load,
    }
