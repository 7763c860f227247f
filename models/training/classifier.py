"""Train the Fashion-MNIST feature classifier, measure its test accuracy, save it with a card.

    python -m models.training.classifier --out checkpoints/classifier --epochs 3 --threads 1

Trains on the 60,000 training images, measures accuracy on all 10,000 test images, and writes
``OUT/{config.json, model.safetensors, model_card.json}``. Given the seed, the run is
deterministic on one device: the weights are initialised under ``torch.manual_seed(seed)`` in
a forked RNG, and the epoch orders come from a ``torch.Generator`` seeded with it.
:func:`extract_features` gives the (N, feature_dim) features the Fréchet distance is built on.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.core.checkpoints import save_checkpoint
from models.core.config import ClassifierConfig, ClassifierTrainConfig, config_to_dict
from models.core.pixels import pixels_to_signed_unit
from models.data import load_fashion_mnist
from models.nn.classifier import FashionClassifier


def build_classifier(config: ClassifierConfig, seed: int) -> FashionClassifier:
    """A freshly initialised classifier; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FashionClassifier(config)


def cosine_learning_rate(config: ClassifierTrainConfig, step: int, total_steps: int) -> float:
    """learning_rate * (1 + cos(pi * step / total_steps)) / 2: from the peak down to zero."""
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def train_classifier(
    model: FashionClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: ClassifierTrainConfig,
    progress: bool = True,
) -> FashionClassifier:
    """Minimise cross-entropy over ``config.epochs`` shuffled passes; returns ``model``.

    images: (N, C, H, W) uint8; labels: (N,) int64. Each epoch visits every image once, in an
    order drawn from a generator seeded with ``config.seed``; the last batch may be short.
    """
    if images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"expected uint8 images (N, C, H, W) and labels (N,), got {images.dtype} "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(images.shape[0] / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    model.train()
    bar = tqdm(total=total_steps, desc="classifier", dynamic_ncols=True, disable=not progress)
    step = 0
    try:
        for epoch in range(config.epochs):
            order = torch.randperm(images.shape[0], generator=generator)
            for index in order.split(config.batch_size):
                x = pixels_to_signed_unit(images[index]).to(device)  # (B, C, H, W)
                y = labels[index].to(device)  # (B,)
                logits = model(x)  # (B, num_classes)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for group in optimizer.param_groups:
                    group["lr"] = cosine_learning_rate(config, step, total_steps)
                optimizer.step()
                step += 1
                bar.update(1)
                if step % 20 == 0 or step == total_steps:
                    batch_accuracy = (logits.argmax(dim=1) == y).float().mean().item()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", acc=batch_accuracy)
    finally:
        bar.close()
    return model.eval()


@torch.no_grad()
def _batched(model: FashionClassifier, images_uint8: torch.Tensor, fn, batch_size: int):
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [
                fn(pixels_to_signed_unit(chunk).to(device)).cpu()
                for chunk in images_uint8.split(batch_size)
            ]
        )
    finally:
        model.train(was_training)


def extract_features(
    model: FashionClassifier, images_uint8: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Penultimate activations (N, feature_dim) float32 on the CPU of uint8 images (N, C, H, W).

    Eval mode, no gradients; the model's training flag is restored afterwards.
    """
    if images_uint8.shape[0] == 0:
        return torch.zeros(0, model.config.feature_dim)
    return _batched(model, images_uint8, model.features, batch_size)


def accuracy(
    model: FashionClassifier, images_uint8: torch.Tensor, labels: torch.Tensor, batch_size=500
) -> float:
    """Fraction of uint8 images (N, C, H, W) whose arg-max logit equals the label (N,)."""
    if images_uint8.shape[0] == 0 or labels.shape != images_uint8.shape[:1]:
        raise ValueError(
            f"need N >= 1 images and N labels, got {tuple(images_uint8.shape)} and "
            f"{tuple(labels.shape)}"
        )
    logits = _batched(model, images_uint8, model, batch_size)  # (N, num_classes)
    return (logits.argmax(dim=1) == labels).double().mean().item()


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} intra-op thread(s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the Fashion-MNIST feature classifier.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--epochs", type=int, default=ClassifierTrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=ClassifierTrainConfig.seed)
    parser.add_argument("--batch-size", type=int, default=ClassifierTrainConfig.batch_size)
    parser.add_argument("--learning-rate", type=float, default=ClassifierTrainConfig.learning_rate)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op CPU threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-root", help="directory of the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, args.threads or 1))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    device = torch.device(args.device)
    model_config = ClassifierConfig()
    train_config = ClassifierTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    train_images, train_labels = load_fashion_mnist("train", args.data_root)
    test_images, test_labels = load_fashion_mnist("test", args.data_root)

    model = build_classifier(model_config, train_config.seed).to(device)
    started = time.perf_counter()
    train_classifier(model, train_images, train_labels, train_config)
    train_seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, test_images, test_labels)

    card = {
        "test_accuracy": round(test_accuracy, 4),
        "test_images": int(test_images.shape[0]),
        "train_images": int(train_images.shape[0]),
        "epochs": train_config.epochs,
        "train_seconds": round(train_seconds, 1),
        "hardware": hardware_description(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_config": config_to_dict(train_config),
    }
    directory = save_checkpoint(args.out, model, card=card)
    print(
        f"test accuracy {test_accuracy:.4f} on {card['test_images']} images after "
        f"{train_config.epochs} epoch(s), {train_seconds:.0f} s; saved {directory}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
