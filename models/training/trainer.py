"""The training loop of any servable kind: state, resume, EMA, export.

A :class:`Trainer` owns one run directory:

    state.pt          weights, EMA weights, optimizer and both random generators (resumable)
    train_log.jsonl   one line per logged step, and the validation loss at each saved step
    checkpoint/       the exported checkpoint (config + safetensors) and training.json

The objective is the kind's ``training_loss`` and the exported weights are the EMA copy when
the kind's ``exports_ema`` says so. Given the seed, a run is deterministic on one device,
interrupted or not. A run may start from an exported checkpoint's weights instead of a fresh
initialisation (:meth:`Trainer.start_from`: fine-tuning, or training a checkpoint further).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from models.core.checkpoints import (
    WEIGHTS_FILE,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from models.core.config import config_to_dict
from models.core.pixels import pixels_to_signed_unit
from models.nn.acceleration import native_bf16_supported
from models.training.background import mutate
from models.training.experiment import Experiment

STATE_FILE = "state.pt"
LOG_FILE = "train_log.jsonl"
EXPORT_DIR = "checkpoint"
TRAINING_FILE = "training.json"


def _same_trajectory(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a saved run may continue under the current experiment.

    The learning rate is constant after warm-up, so the total step count does not shape the
    trajectory: a run may be extended (or cut short) by editing `train.steps` alone.
    """

    def without_total(experiment: dict[str, Any]) -> dict[str, Any]:
        train = {k: v for k, v in experiment["train"].items() if k != "steps"}
        return {**experiment, "train": train}

    return without_total(saved) == without_total(current)


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dictionary as {"unet.base_channels": 64, ...}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(_leaves(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def _config_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """'name: theirs != ours' for every config entry that differs, sorted by name."""
    a, b = _leaves(theirs), _leaves(ours)
    return [
        f"{name}: {a.get(name)!r} != {b.get(name)!r}"
        for name in sorted(set(a) | set(b))
        if a.get(name) != b.get(name)
    ]


def check_images(images: torch.Tensor, experiment: Experiment) -> None:
    """Refuse training images that are not uint8 (N, C, H, W) of the experiment's shape."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty uint8 tensor of images (N, C, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    expected, given = experiment.image_shape, tuple(images.shape[1:])
    if given != expected:
        raise ValueError(
            f"this {experiment.kind} config trains on images (C, H, W) = {expected}, got {given}"
        )


class Trainer:
    """Owns the model, its EMA copy, the optimizer and the generators of one run."""

    def __init__(
        self,
        experiment: Experiment,
        out: Path,
        device: torch.device,
        data: dict[str, Any] | None = None,
    ) -> None:
        """``data`` describes the training images for ``training.json`` (source, counts)."""
        self.experiment = experiment
        self.data = data
        self.kind = experiment.model_kind
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
        # A background model's images are mutated afresh at every step (Ren et al. 2019).
        self.mutation_rate = experiment.background.mutation_rate if experiment.background else 0.0
        self.mutation_generator = torch.Generator().manual_seed(self.config.seed + 3)
        self.step = 0
        # The exported checkpoint this run's weights started from (start_from), if any.
        self.started_from: dict[str, Any] | None = None
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
            "mutation_generator": self.mutation_generator.get_state(),
            "started_from": self.started_from,
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
        # Generator states are CPU byte tensors whatever the generator's device, and
        # map_location has just moved them to the training device.
        self.data_generator.set_state(state["data_generator"].cpu())
        self.noise_generator.set_state(state["noise_generator"].cpu())
        if "mutation_generator" in state:  # runs saved before background models had none
            self.mutation_generator.set_state(state["mutation_generator"].cpu())
        self.step = state["step"]
        self.started_from = state.get("started_from")
        self._truncate_log_after(self.step)
        return True

    def start_from(self, directory: Path) -> None:
        """Begin from the weights of the exported checkpoint in ``directory`` instead of a
        fresh initialisation: fine-tuning (the bundled model on your own images), or training
        a checkpoint further. It must be of this run's kind and model config; the raw and EMA
        weights both start at its weights, and the optimizer, the warm-up, the step count and
        the generators start afresh, as in any new run. ``training.json`` records the source.
        Raises ValueError naming what differs."""
        source = load_checkpoint(directory, self.device)
        if source.kind != self.experiment.kind:
            raise ValueError(
                f"{directory} holds a {source.kind}; this run trains a {self.experiment.kind}"
            )
        differences = _config_differences(
            config_to_dict(source.model.config), config_to_dict(self.experiment.model_config)
        )
        if differences:
            raise ValueError(
                f"{directory}: its model config differs from this run's: " + "; ".join(differences)
            )
        weights = source.model.state_dict()
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(weights)
        source_training = directory / TRAINING_FILE
        self.started_from = {
            "directory": str(directory),
            "weights_sha256": weights_sha256(directory / WEIGHTS_FILE),
            "steps_done": json.loads(source_training.read_text()).get("steps_done")
            if source_training.exists()
            else None,
        }

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
        """The shippable checkpoint: the EMA weights if the kind exports them, else the raw
        ones; ``training.json`` beside it records the experiment, the steps done and, when
        given, the data."""
        weights = self.ema if self.kind.exports_ema else self.model
        directory = save_checkpoint(
            self.out / EXPORT_DIR, weights, parameter_dtype=getattr(torch, self.config.export_dtype)
        )
        training: dict[str, Any] = {
            "experiment": self.experiment.to_dict(),
            "steps_done": self.step,
        }
        if self.data is not None:
            training["data"] = self.data
        if self.started_from is not None:
            training["started_from"] = self.started_from
        (directory / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
        return directory

    # Loop --------------------------------------------------------------------------------

    def learning_rate(self) -> float:
        warmup = self.config.warmup_steps
        scale = min(1.0, (self.step + 1) / warmup) if warmup else 1.0
        return self.config.learning_rate * scale

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch drawn from ``images`` (N, C, H, W) uint8, already
        checked by :func:`check_images`. The numbers stay 0-d tensors until a step is logged:
        reading them every step would make the host wait for the GPU after each step."""
        index = torch.randint(
            0, images.shape[0], (self.config.batch_size,), generator=self.data_generator
        )
        batch = images[index.to(images.device)]  # (B, C, H, W) uint8
        if self.mutation_rate > 0.0:
            batch = mutate(batch, self.mutation_rate, self.mutation_generator)
        x = pixels_to_signed_unit(batch)  # (B, C, H, W)
        self.model.train()
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast_bf16):
            loss, numbers = self.kind.training_loss(self.model, x, self.noise_generator)
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

    @torch.no_grad()
    def validation_loss(self, images: torch.Tensor) -> float:
        """The kind's training loss on held-out ``images`` (N, C, H, W) uint8, averaged over
        them, for the weights that are exported. A generator seeded afresh each time draws
        the same noise at every call, so the numbers of two steps differ only by the weights;
        the training generators are not touched."""
        model = self.ema if self.kind.exports_ema else self.model
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 2)
        total, count = 0.0, 0
        for batch in images.split(self.config.batch_size):
            x = pixels_to_signed_unit(batch)  # (B, C, H, W)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast_bf16):
                loss, _ = self.kind.training_loss(model, x, generator)
            total += loss.float().item() * batch.shape[0]
            count += batch.shape[0]
        model.train(was_training)
        return total / count

    def run(
        self,
        images: torch.Tensor,
        stop_after: int | None = None,
        time_limit_s: float | None = None,
        validation: torch.Tensor | None = None,
    ) -> None:
        """Train on ``images`` (N, C, H, W) uint8 to ``train.steps``, or ``stop_after`` more
        steps, or until ``time_limit_s`` seconds have passed (checked at logging steps),
        whichever comes first; the state and the export are written at the step it stops on.
        With held-out ``validation`` images (M, C, H, W) uint8, their loss
        (:meth:`validation_loss`) is logged at every step the state is saved.
        Raises ValueError if the images' (C, H, W) is not the config's."""
        check_images(images, self.experiment)
        if validation is not None:
            check_images(validation, self.experiment)
            validation = validation.to(self.device)
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
                entry: dict[str, float] = {}
                if self.step % self.config.log_every == 0 or self.step == end:
                    numbers = {name: value.item() for name, value in tensors.items()}
                    elapsed = time.perf_counter() - started
                    if time_limit_s is not None and elapsed >= time_limit_s:
                        end = self.step
                    rate = (self.step - started_step) * self.config.batch_size / elapsed
                    bar.set_postfix(loss=f"{numbers['loss']:.4f}", img_s=f"{rate:.0f}")
                    entry = {"images_per_s": rate, **numbers}
                saving = self.step % self.config.checkpoint_every == 0 or self.step == end
                if saving and validation is not None:
                    entry["validation_loss"] = self.validation_loss(validation)
                if entry:
                    log.write(json.dumps({"step": self.step, **entry}) + "\n")
                    log.flush()
                if saving:
                    self.save_state()
                    self.export()
        finally:
            bar.close()
            log.close()
