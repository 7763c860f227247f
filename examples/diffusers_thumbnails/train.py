"""Train a small pixel-space DDPM on scikit-learn's digits with plain diffusers code.

Nothing here imports elbo-serve: this is the recipe of diffusers' unconditional training
example (``UNet2DModel`` + ``DDPMScheduler``, the epsilon MSE of Ho et al. 2020, Algorithm 1)
shrunk to 8x8 grayscale digits and a few CPU minutes. It writes

  OUT/digits-ddpm/      the pipeline, by ``DDPMPipeline.save_pretrained`` (model_index.json,
                        unet/, scheduler/): drop it into ELBO_SERVE_MODEL_DIR to serve it
  OUT/digits_test/      the held-out digits (never trained on) as PNGs: the --normal folder
  OUT/photo_patches/    8x8 grayscale patches of scikit-learn's two bundled photographs:
                        an outlier folder
  OUT/train_state.pt    the training state every 200 steps: run the command again (with a
                        larger --steps to train further) and it resumes where it stopped

    python examples/diffusers_digits/train.py --out runs/diffusers_digits --steps 2000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches a hub

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images


def digits_uint8(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (N, 8, 8) uint8 (their 0..16 levels scaled to 0..255), shuffled
    with ``seed`` and split 1,497 for training, 300 held out."""
    images = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    images = images[order]
    return images[:1497], images[1497:]


def photo_patches(count: int, seed: int) -> np.ndarray:
    """``count`` random 8x8 patches of the bundled photographs, 4x downscaled, grayscale."""
    rng = np.random.default_rng(seed)
    photos = [
        np.asarray(Image.fromarray(p).convert("L").resize((p.shape[1] // 4, p.shape[0] // 4)))
        for p in load_sample_images().images
    ]
    patches = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - 8)
        x = rng.integers(0, photo.shape[1] - 8)
        patches.append(photo[y : y + 8, x : x + 8])
    return np.stack(patches)


def write_pngs(images: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")


def training_target(scheduler, x0, noise, t):
    """What the network learns to output for ``scheduler.config.prediction_type`` (the targets
    of diffusers' train_unconditional.py): the noise, the clean image, or v."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, t)


def save_state(path: Path, step: int, unet, optimizer, ema, generator, target: str) -> None:
    """Everything a resumed run needs (weights, EMA, Adam moments, the batch generator, what
    the network predicts); written to a temporary file first, so a run killed mid-write keeps
    the previous state."""
    state = {
        "step": torch.tensor(step),
        "prediction_type": target,
        "unet": unet.state_dict(),
        "ema": ema,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def resume(path: Path, unet, optimizer, ema, generator, target: str) -> int:
    state = torch.load(path, weights_only=True)
    if state.get("prediction_type", "epsilon") != target:
        raise SystemExit(
            f"{path} trained a network predicting {state.get('prediction_type', 'epsilon')}, "
            f"not {target}: use another --out"
        )
    unet.load_state_dict(state["unet"])
    optimizer.load_state_dict(state["optimizer"])
    for name, tensor in state["ema"].items():
        ema[name].copy_(tensor)
    generator.set_state(state["generator"])
    return int(state["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/diffusers_digits"))
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget")
    parser.add_argument(
        "--steps", type=int, help="train this many steps instead (the same weights on any machine)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prediction-type", choices=("epsilon", "sample", "v_prediction"), default="epsilon"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    train, test = digits_uint8(args.seed)
    write_pngs(test, args.out / "digits_test")
    write_pngs(photo_patches(300, args.seed), args.out / "photo_patches")
    x_train = torch.from_numpy(train).float().div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, 8, 8)

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    # diffusers' defaults: T = 1000 linear betas 1e-4..0.02, fixed_small; the network predicts
    # the noise (epsilon), the clean image (sample) or v (Salimans & Ho 2022), as asked.
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=args.prediction_type)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}

    started, step = time.perf_counter(), 0
    generator = torch.Generator().manual_seed(args.seed)
    state_file = args.out / "train_state.pt"
    if state_file.exists():  # resume: the same weights as one uninterrupted run
        step = resume(state_file, unet, optimizer, ema, generator, args.prediction_type)
        print(f"resumed at step {step} from {state_file}", flush=True)

    def more() -> bool:
        if args.steps is not None:
            return step < args.steps
        return time.perf_counter() - started < 60 * args.minutes

    while more():
        rows = torch.randint(0, len(x_train), (args.batch_size,), generator=generator)
        x0 = x_train[rows]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(noisy, t).sample, training_target(scheduler, x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        if step % 200 == 0:
            elapsed = time.perf_counter() - started
            print(f"step {step} loss {loss.item():.4f} {elapsed:.0f} s", flush=True)
            save_state(state_file, step, unet, optimizer, ema, generator, args.prediction_type)

    unet.load_state_dict(ema)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(args.out / "digits-ddpm")
    elapsed = time.perf_counter() - started
    print(f"trained {step} steps in {elapsed:.0f} s; saved {args.out / 'digits-ddpm'}")


if __name__ == "__main__":
    main()
