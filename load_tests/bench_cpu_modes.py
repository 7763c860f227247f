"""CPU speed modes side by side: float32 eager, channels_last, bf16 autocast, torch.compile and
a combination, on the bundled checkpoints, interleaved in one run.

    python -m load_tests.bench_cpu_modes --out cpu_modes.json

Inference: the VAE -ELBO of 64 images (the service's CPU batch), one UNet call of 64 rows (a
DDPM vlb_mc network call at the CPU batch budget), one DDIM step of 4 rows (the service's
sampling chunk). Training: one Trainer.train_step at batch 64 for the VAE and the DDPM.
Exactness: VAE -ELBO and DDPM vlb_mc (k = 10, fixed seeds) in bits/dim on the same 64 test
images in every mode, against float32 eager. Each repeat times every mode once, in turn, so
that load from other jobs on the machine falls on all modes alike; medians are reported, as
speed-ups over float32 eager (above 1: faster).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from models.core.checkpoints import Checkpoint, load_checkpoint
from models.core.config import TrainConfig
from models.core.progressive import run_to_end
from models.data import load_fashion_mnist
from models.diffusion.samplers import ddim_step
from models.kinds import kind_of
from models.nn.acceleration import (
    Acceleration,
    accelerate,
    bf16_autocast_usable,
    native_bf16_supported,
)
from models.nn.mode_choice import ModeChoice, choose_mode, hot_calls
from models.training.experiment import Experiment
from models.training.trainer import Trainer
from service import runners
from service.settings import REPO_ROOT

BATCH = 64  # the service's CPU batch budget (Settings.cpu_max_batch_images)
CHUNK = 4  # the service's CPU sampling chunk (Settings.image_chunk_rows)
VLB_MC_K = 10  # the bundled DDPM card's calibrated k
ADOPTABLE_BITS_PER_DIM = 0.01

MODES = {
    "fp32_eager": Acceleration(),
    "channels_last": Acceleration(channels_last=True),
    "bf16": Acceleration(bf16_autocast=True),
    "compile": Acceleration(compile=True),
    "channels_last+compile": Acceleration(channels_last=True, compile=True),
}

Work = Callable[[], Any]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def inference_work(vae: Checkpoint, ddpm: Checkpoint, images: torch.Tensor) -> dict[str, Work]:
    """The three inference workloads, each a no-argument call on fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(BATCH, *ddpm.model.image_shape, generator=generator)
    t = torch.randint(0, ddpm.model.diffusion.num_timesteps, (BATCH,), generator=generator)
    x_chunk, t_step = x_t[:CHUNK], 500

    elbo = kind_of(vae.model).method_for(vae.model, "elbo")

    @torch.no_grad()
    def vae_elbo() -> Any:
        jobs = [runners.ImagesJob(images)]
        return run_to_end(runners.bound(elbo, vae.model, jobs, None, BATCH))

    @torch.no_grad()
    def ddpm_net() -> Any:
        return ddpm.model(x_t, t)

    @torch.no_grad()
    def ddim_step_chunk() -> Any:
        output = ddpm.model(x_chunk, torch.full((CHUNK,), t_step))
        return ddim_step(
            ddpm.model.diffusion, output, x_chunk, t_step, t_step - 20, 1.0, None, True
        )

    return {
        f"vae_elbo_b{BATCH}": vae_elbo,
        f"ddpm_unet_b{BATCH}": ddpm_net,
        f"ddim_step_b{CHUNK}": ddim_step_chunk,
    }


def training_work(
    checkpoint: Checkpoint, mode: Acceleration, train_images: torch.Tensor, out: Path
) -> Work:
    """One optimisation step at batch 64, starting from the bundled weights; bf16 goes through
    the Trainer's own autocast (TrainConfig.autocast_bf16), the rest through accelerate()."""
    experiment = Experiment(
        checkpoint.kind,
        checkpoint.model.config,
        TrainConfig(batch_size=BATCH, warmup_steps=0, autocast_bf16=mode.bf16_autocast),
    )
    trainer = Trainer(experiment, out, torch.device("cpu"))
    trainer.autocast_bf16 = mode.bf16_autocast  # measured even where emulated
    trainer.model.load_state_dict(checkpoint.model.state_dict())
    accelerate(trainer.model, replace(mode, bf16_autocast=False))
    return lambda: trainer.train_step(train_images)


def bounds_bits_per_dim(vae: Checkpoint, ddpm: Checkpoint, images: torch.Tensor) -> dict:
    """Per image (64,) bits/dim: VAE -ELBO and DDPM vlb_mc, both from seed 0."""
    job = [runners.ImagesJob(images, seed=0)]
    elbo = kind_of(vae.model).method_for(vae.model, "elbo")
    vlb_mc = kind_of(ddpm.model).method_for(ddpm.model, "vlb_mc")
    vae_terms = run_to_end(runners.bound(elbo, vae.model, job, None, BATCH))[0]
    ddpm_terms = run_to_end(runners.bound(vlb_mc, ddpm.model, job, VLB_MC_K, BATCH))[0]
    return {
        "vae_elbo": vae_terms["total_bits_per_dim"],
        "ddpm_vlb_mc": ddpm_terms["total_bits_per_dim"],
    }


# Which workloads are whose: the chooser's pick for a model is compared on these.
MODEL_WORKLOADS = {
    "vae": ("vae_elbo_", "train_vae_"),
    "ddpm": ("ddpm_unet_", "ddim_step_", "train_ddpm_"),
}


def start_up_choices(checkpoints: dict[str, Checkpoint], modes: dict[str, Acceleration]) -> dict:
    """What the service's start-up chooser picks for each model here, measured afresh."""
    candidates = {n: m for n, m in modes.items() if not m.compile}
    choices: dict[str, ModeChoice] = {}
    for name, checkpoint in checkpoints.items():
        print(f"[chooser] {name}", file=sys.stderr, flush=True)
        model = checkpoint.model
        choices[name] = choose_mode(
            model, lambda m=model: hot_calls(m, CHUNK), candidates, None, ""
        )
    return {name: choice.to_dict() for name, choice in choices.items()}


def seconds(work: Work, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - start) / calls


def run(modes: dict[str, Acceleration], repeats: int, train_calls: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    test_images = load_fashion_mnist("test")[0][:BATCH]
    train_images = load_fashion_mnist("train")[0]
    vae = load_checkpoint(REPO_ROOT / "checkpoints" / "vae")
    ddpm = load_checkpoint(REPO_ROOT / "checkpoints" / "ddpm")
    skipped = {}
    if not bf16_autocast_usable():
        skipped = {n: "torch has no CPU bf16 here" for n, m in modes.items() if m.bf16_autocast}
    modes = {n: m for n, m in modes.items() if n not in skipped}
    scratch = Path(tempfile.mkdtemp(prefix="bench_cpu_modes_"))
    chosen = start_up_choices({"vae": vae, "ddpm": ddpm}, modes)

    work: dict[str, dict[str, tuple[Work, int]]] = {}
    first_call_s: dict[str, dict[str, float]] = {}
    exactness: dict[str, dict[str, float]] = {}
    reference: dict[str, torch.Tensor] = {}
    for name, mode in modes.items():
        print(f"[{name}] preparing (compiles on first calls)", file=sys.stderr, flush=True)
        m_vae = replace(vae, model=accelerate(copy.deepcopy(vae.model), mode))
        m_ddpm = replace(ddpm, model=accelerate(copy.deepcopy(ddpm.model), mode))
        calls = {
            w: (fn, 10 if w.startswith("ddim") else 1)
            for w, fn in inference_work(m_vae, m_ddpm, test_images).items()
        }
        for kind, checkpoint in (("vae", vae), ("ddpm", ddpm)):
            fn = training_work(checkpoint, mode, train_images, scratch / f"{name}_{kind}")
            calls[f"train_{kind}_b{BATCH}"] = (fn, train_calls)
        work[name] = calls
        first_call_s[name] = {w: seconds(fn, 1) for w, (fn, _) in calls.items()}
        bounds = bounds_bits_per_dim(m_vae, m_ddpm, test_images)
        if not reference:
            reference = bounds
        exactness[name] = {
            f"{b}_max_abs_diff_bits_per_dim": (bounds[b] - reference[b]).abs().max().item()
            for b in bounds
        } | {f"{b}_mean_bits_per_dim": bounds[b].mean().item() for b in bounds}

    samples: dict[str, dict[str, list[float]]] = {n: {w: [] for w in work[n]} for n in work}
    for repeat in range(repeats):
        print(f"repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
        for workload in work["fp32_eager"]:
            for name in work:  # interleaved: every mode in turn for each workload
                fn, n_calls = work[name][workload]
                samples[name][workload].append(seconds(fn, n_calls))

    medians = {n: {w: statistics.median(s) for w, s in ws.items()} for n, ws in samples.items()}
    base = medians["fp32_eager"]
    speedups = {n: {w: base[w] / s for w, s in ws.items()} for n, ws in medians.items()}
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": threads,
        "repeats": repeats,
        "native_bf16": native_bf16_supported(),
        "skipped": skipped,
        "median_seconds_per_call": medians,
        "speedup_over_fp32_eager": speedups,
        "first_call_seconds": first_call_s,
        "exactness": exactness,
        "adoptable_bits_per_dim": ADOPTABLE_BITS_PER_DIM,
        "start_up_choice": chosen,
    }


def table(report: dict) -> str:
    speedups = report["speedup_over_fp32_eager"]
    workloads = list(next(iter(speedups.values())))
    header = ["mode", *workloads, "max |d bits/dim|", "compile s"]
    lines = [
        f"CPU: {report['cpu']}, torch {report['torch']}, {report['threads']} thread(s), "
        f"native bf16: {report['native_bf16']}, median of {report['repeats']} repeats, "
        f"{report['date']}; speed-up over fp32 eager (>1 is faster)",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, row in speedups.items():
        exact = report["exactness"][name]
        worst = max(v for k, v in exact.items() if k.endswith("max_abs_diff_bits_per_dim"))
        first = report["first_call_seconds"][name]
        base_first = report["first_call_seconds"]["fp32_eager"]
        compile_s = sum(first.values()) - sum(base_first.values()) if "compile" in name else 0.0
        cells = [f"{row[w]:.2f}x" for w in workloads]
        compile_cell = f"{compile_s:.0f}" if "compile" in name else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {worst:.4f} | {compile_cell} |")
    for name, why in report["skipped"].items():
        lines.append(f"| {name} | skipped: {why} |")
    return "\n".join(lines + ["", chosen_table(report)])


def chosen_table(report: dict) -> str:
    """Per model: the start-up chooser's pick, and its speed-up over each alternative on the
    model's workloads (the interleaved medians above; above 1: the choice is faster)."""
    medians = report["median_seconds_per_call"]
    lines = [
        "Start-up choice (models/nn/mode_choice.py, uncached) against each alternative, same run",
        "| model | chosen | probe s | alternative | chosen's speed-up per workload |",
        "|---|---|---|---|---|",
    ]
    for model, choice in report["start_up_choice"].items():
        mode = choice["mode"]
        workloads = [w for w in medians[mode] if w.startswith(MODEL_WORKLOADS[model])]
        for other in medians:
            if other == mode:
                continue
            cells = ", ".join(f"{w} {medians[other][w] / medians[mode][w]:.2f}x" for w in workloads)
            probe = f"{choice['measure_seconds']:.1f}"
            lines.append(f"| {model} | {mode} | {probe} | {other} | {cells} |")
        refused = {
            m: f"{d:.1e}"
            for m, d in choice["bound_diff_bits_per_dim"].items()
            if d > choice["tolerance_bits_per_dim"]
        }
        probe_speedups = {m: round(v, 2) for m, v in choice["speedup_over_fp32_eager"].items()}
        lines.append(
            f"| {model} | probe speed-ups over fp32_eager {probe_speedups}; refused by the "
            f"bound check (bits/dim moved) {refused or 'none'} | | | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-calls", type=int, default=2, help="timed steps per repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        help="fp32_eager always runs",
    )
    args = parser.parse_args(argv)
    modes = {n: MODES[n] for n in ["fp32_eager", *[m for m in args.modes if m != "fp32_eager"]]}
    report = run(modes, args.repeats, args.train_calls, args.threads)
    print(table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
