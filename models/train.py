"""Train a VAE or a DDPM on Fashion-MNIST, resumably.

    python -m models.train ddpm --config configs/ddpm_fmnist.json --out runs/ddpm
    python -m models.train vae  --config configs/vae_fmnist.json  --out runs/vae

Run it again with the same --out to resume where it stopped: ``state.pt`` (weights, EMA,
optimizer and both random generators) is written every ``checkpoint_every`` steps, and the
exportable checkpoint (config + safetensors; the EMA weights for the DDPM) goes to
``OUT/checkpoint``. The loss curve is appended to ``OUT/train_log.jsonl``. Given the seed,
the run is deterministic on one device, interrupted or not.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from models.core.checkpoints import save_checkpoint
from models.core.config import (
    DDPMConfig,
    TrainConfig,
    VAEConfig,
    config_from_dict,
    config_to_dict,
)
from models.core.device import resolve_device
from models.core.pixels import pixels_to_signed_unit
from models.data import load_fashion_mnist
from models.diffusion.ddpm import DDPM
from models.nn.acceleration import Acceleration, accelerate, native_bf16_supported
from models.vae.model import VAE

STATE_FILE = "state.pt"
LOG_FILE = "train_log.jsonl"
EXPORT_DIR = "checkpoint"
TRAINING_FILE = "training.json"

# (model, x (B, C, H, W) in [-1, 1], generator) -> (scalar loss, 0-d tensors to log). The
# numbers stay tensors until a step is logged: reading them every step would make the host
# wait for the GPU after each step instead of queueing the next one.
Objective = Callable[[nn.Module, torch.Tensor, torch.Generator], tuple[torch.Tensor, dict]]


def vae_objective(model: nn.Module, x: torch.Tensor, generator: torch.Generator):
    """-ELBO in nats per dimension (Kingma & Welling 2013, Eq. 10)."""
    bound = model.negative_elbo(x, generator)
    loss = bound.total_nats.mean() / model.num_dims
    return loss, {
        "bits_per_dim": bound.total_bits_per_dim.mean().detach(),
        "kl_nats": bound.kl_nats.mean().detach(),
    }


def ddpm_objective(model: nn.Module, x: torch.Tensor, generator: torch.Generator):
    """L_simple or L_hybrid at t ~ U{0..T-1} (Ho et al. Algorithm 1)."""
    diffusion = model.diffusion
    t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), generator=generator)
    noise = torch.randn(x.shape, generator=generator)
    losses = diffusion.training_losses(model, x, t.to(x.device), noise.to(x.device))
    return losses.loss.mean(), {
        "mse": losses.mse.mean().detach(),
        "vlb_bits_per_dim": losses.vlb_bits_per_dim.mean().detach(),
    }


@dataclass(frozen=True)
class Experiment:
    kind: str
    model_config: VAEConfig | DDPMConfig
    train: TrainConfig

    @classmethod
    def from_file(cls, kind: str, path: Path) -> Experiment:
        payload = json.loads(path.read_text())
        model_cls = {"vae": VAEConfig, "ddpm": DDPMConfig}[kind]
        return cls(
            kind,
            config_from_dict(model_cls, payload.get("model", {})),
            config_from_dict(TrainConfig, payload.get("train", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": config_to_dict(self.model_config),
            "train": config_to_dict(self.train),
        }

    def build_model(self) -> VAE | DDPM:
        return VAE(self.model_config) if self.kind == "vae" else DDPM(self.model_config)

    @property
    def objective(self) -> Objective:
        return vae_objective if self.kind == "vae" else ddpm_objective


def _same_trajectory(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a saved run may continue under the current experiment.

    The learning rate is constant after warm-up, so the total step count does not shape the
    trajectory: a run may be extended (or cut short) by editing `train.steps` alone.
    """

    def without_total(experiment: dict[str, Any]) -> dict[str, Any]:
        train = {k: v for k, v in experiment["train"].items() if k != "steps"}
        return {**experiment, "train": train}

    return without_total(saved) == without_total(current)


class Trainer:
    """Owns the model, its EMA copy, the optimizer and the generators of one run."""

    def __init__(self, experiment: Experiment, out: Path, device: torch.device) -> None:
        self.experiment = experiment
        self.config = experiment.train
        self.out = out
        self.device = device
        torch.manual_seed(self.config.seed)
        self.model = experiment.build_model().to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.config.learning_rate, weight_decay=0.0
        )
        self.data_generator = torch.Generator().manual_seed(self.config.seed)
        self.noise_generator = torch.Generator().manual_seed(self.config.seed + 1)
        self.step = 0
        # bf16 autocast only where bf16 is in hardware: on a CPU without it (AVX-512 without
        # AVX512-BF16 or AMX) oneDNN emulates bf16, measured 3-4x slower than float32.
        self.autocast_bf16 = self.config.autocast_bf16 and (
            device.type != "cpu" or native_bf16_supported()
        )

    # Persistence -------------------------------------------------------------------------

    def save_state(self) -> None:
        state = {
            "experiment": self.experiment.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
        }
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out / STATE_FILE)

    def try_resume(self) -> bool:
        path = self.out / STATE_FILE
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        if not _same_trajectory(state["experiment"], self.experiment.to_dict()):
            raise SystemExit(
                f"{path} was written by a different experiment; use another --out or the "
                "same --config"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_generator.set_state(state["data_generator"])
        self.noise_generator.set_state(state["noise_generator"])
        self.step = state["step"]
        self._truncate_log_after(self.step)
        return True

    def _truncate_log_after(self, step: int) -> None:
        """A killed run may have logged steps it never saved; they are about to be redone."""
        path = self.out / LOG_FILE
        if not path.exists():
            return
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        path.write_text("".join(line + "\n" for line in kept))

    def export(self) -> Path:
        """The shippable checkpoint: EMA weights for the DDPM, raw weights for the VAE."""
        weights = self.ema if self.experiment.kind == "ddpm" else self.model
        directory = save_checkpoint(
            self.out / EXPORT_DIR, weights, parameter_dtype=getattr(torch, self.config.export_dtype)
        )
        training = {"experiment": self.experiment.to_dict(), "steps_done": self.step}
        (directory / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
        return directory

    # Loop --------------------------------------------------------------------------------

    def learning_rate(self) -> float:
        warmup = self.config.warmup_steps
        scale = min(1.0, (self.step + 1) / warmup) if warmup else 1.0
        return self.config.learning_rate * scale

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        index = torch.randint(
            0, images.shape[0], (self.config.batch_size,), generator=self.data_generator
        )
        x = pixels_to_signed_unit(images[index.to(images.device)])
        self.model.train()
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast_bf16):
            loss, numbers = self.experiment.objective(self.model, x, self.noise_generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **numbers}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Short runs: ramp the decay up so early EMA weights are not dominated by the init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        # One fused update for all tensors: a per-parameter loop is hundreds of tiny launches.
        torch._foreach_lerp_(
            list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay
        )

    def run(
        self,
        images: torch.Tensor,
        stop_after: int | None = None,
        time_limit_s: float | None = None,
    ) -> None:
        """Train to ``train.steps``, or ``stop_after`` more steps, or until ``time_limit_s``
        seconds have passed (checked at logging steps), whichever comes first; the state and
        the export are written at the step it stops on."""
        total = self.config.steps
        end = total if stop_after is None else min(total, self.step + stop_after)
        images = images.to(self.device)  # the training set fits on any GPU: no per-step copy
        log = (self.out / LOG_FILE).open("a")
        bar = tqdm(total=total, initial=self.step, desc=self.experiment.kind, dynamic_ncols=True)
        started, started_step = time.perf_counter(), self.step
        try:
            while self.step < end:
                tensors = self.train_step(images)
                bar.update(1)
                if self.step % self.config.log_every == 0 or self.step == end:
                    numbers = {name: value.item() for name, value in tensors.items()}
                    elapsed = time.perf_counter() - started
                    if time_limit_s is not None and elapsed >= time_limit_s:
                        end = self.step
                    rate = (self.step - started_step) * self.config.batch_size / elapsed
                    bar.set_postfix(loss=f"{numbers['loss']:.4f}", img_s=f"{rate:.0f}")
                    log.write(
                        json.dumps({"step": self.step, "images_per_s": rate, **numbers}) + "\n"
                    )
                    log.flush()
                if self.step % self.config.checkpoint_every == 0 or self.step == end:
                    self.save_state()
                    self.export()
        finally:
            bar.close()
            log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a VAE or DDPM on Fashion-MNIST.")
    parser.add_argument("kind", choices=["vae", "ddpm"])
    parser.add_argument(
        "--config", type=Path, required=True, help='JSON with "model" and "train" sections'
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumes)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
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
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, args.threads or 1))
    # TF32 matmuls (cuDNN's convolutions use TF32 by default already) and autotuned
    # convolution algorithms: training tolerates the rounding, the evaluation does not use it.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    experiment = Experiment.from_file(args.kind, args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(experiment, args.out, resolve_device(args.device))
    if trainer.device.type == "cpu":  # speed only: parameter names and the maths are unchanged
        accelerate(trainer.model, Acceleration(args.channels_last, compile=args.compile))
    if trainer.try_resume():
        print(f"resuming {args.out} at step {trainer.step}", file=sys.stderr)
    images, _ = load_fashion_mnist("train", args.data_root)
    trainer.run(
        images,
        args.stop_after,
        None if args.time_limit_minutes is None else 60.0 * args.time_limit_minutes,
    )
    print(f"exported {trainer.export()} at step {trainer.step}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
