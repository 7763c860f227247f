"""Train a small pixel-space DDPM on a folder of small grayscale images, with plain
diffusers code.

Nothing here imports elbo-serve: this is the recipe of diffusers' unconditional training
example (``UNet2DModel`` + ``DDPMScheduler``, the noise MSE of Ho et al. 2020, Algorithm 1)
shrunk to 8x8 thumbnails and a few CPU minutes, with one change for the likelihood: t is
drawn in proportion to its weight in the variational bound (``--timesteps bound``; diffusers
draws it uniformly). It writes

  OUT/thumbnails-ddpm/  the pipeline, by ``DDPMPipeline.save_pretrained`` (model_index.json,
                        unet/, scheduler/): drop it into ELBO_SERVE_MODEL_DIR to serve it
  OUT/train_state.pt    the training state every 200 steps: run the command again (with a
                        larger --steps to train further) and it resumes where it stopped

    python examples/diffusers_thumbnails/prepare.py --out runs/thumbnails
    python examples/diffusers_thumbnails/train.py --data runs/thumbnails/train \
        --out runs/thumbnails --steps 2000
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


def read_folder(folder: Path) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1]: every PNG or JPEG in ``folder``, as 8-bit grayscale, all of
    one size."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        raise SystemExit(f"{folder}: no PNG or JPEG images")
    images = np.stack([np.asarray(Image.open(path).convert("L")) for path in paths])
    return torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)


def training_target(scheduler, x0, noise, t):
    """What the network learns to output for ``scheduler.config.prediction_type`` (the targets
    of diffusers' train_unconditional.py): the noise, the clean image, or v."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, t)


def bound_weights(scheduler) -> torch.Tensor:
    """(T,) the weight of each timestep's noise error in the variational bound.

    With the fixed_small variance beta~_t, the KL term at t >= 1 is
    w_t E||eps - eps_hat||^2 with w_t = beta_t^2 / (2 beta~_t alpha_t (1 - alphabar_t))
    = beta_t / (2 alpha_t (1 - alphabar_{t-1})) (Ho et al. 2020 Eq. 12 before dropping the
    weight). Drawing t in proportion to w_t makes the plain noise MSE an unbiased estimate
    of the bound's diffusion terms (the importance sampling of Nichol & Dhariwal 2021, Sec.
    3.3, with fixed weights): w_t is about 1 / 2t at small t, so the nearly clean images the
    bound is most sensitive to get about 29% of the draws at t <= 20 instead of 2%. The
    decoder term (index 0) takes the weight of index 1.
    """
    betas = scheduler.betas.double()
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, 0)
    weights = torch.empty_like(betas)
    weights[1:] = betas[1:] / (2 * alphas[1:] * (1 - alphas_cumprod[:-1]))
    weights[0] = weights[1]
    return weights.float()


def draw_timesteps(steps: int, weights: torch.Tensor | None, count: int, generator) -> torch.Tensor:
    """(count,) timesteps of 0..steps-1: uniform (diffusers' recipe) when ``weights`` is None,
    else in proportion to ``weights`` (:func:`bound_weights`)."""
    if weights is None:
        return torch.randint(0, steps, (count,), generator=generator)
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def save_state(path: Path, step: int, unet, optimizer, ema, generator, recipe: dict) -> None:
    """Everything a resumed run needs (weights, EMA, Adam moments, the batch generator, the
    recipe: what the network predicts and how t is drawn); written to a temporary file
    first, so a run killed mid-write keeps the previous state."""
    state = {
        "step": torch.tensor(step),
        **recipe,
        "unet": unet.state_dict(),
        "ema": ema,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def resume(path: Path, unet, optimizer, ema, generator, recipe: dict) -> int:
    state = torch.load(path, weights_only=True)
    saved = {"prediction_type": "epsilon", "timesteps": "uniform"}  # before they were saved
    saved.update({key: state[key] for key in recipe if key in state})
    if saved != recipe:
        raise SystemExit(f"{path} was trained with {saved}, not {recipe}: use another --out")
    unet.load_state_dict(state["unet"])
    optimizer.load_state_dict(state["optimizer"])
    for name, tensor in state["ema"].items():
        ema[name].copy_(tensor)
    generator.set_state(state["generator"])
    return int(state["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder of training images")
    parser.add_argument("--out", type=Path, default=Path("runs/thumbnails"))
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget")
    parser.add_argument(
        "--steps", type=int, help="train this many steps instead (the same weights on any machine)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prediction-type", choices=("epsilon", "sample", "v_prediction"), default="epsilon"
    )
    parser.add_argument(
        "--timesteps",
        choices=("uniform", "bound"),
        default="bound",
        help="how training draws t: uniformly, or in proportion to its weight in the bound",
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    x_train = read_folder(args.data)  # (N, 1, H, W)
    args.out.mkdir(parents=True, exist_ok=True)

    unet = UNet2DModel(
        sample_size=x_train.shape[-1],
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
    recipe = {"prediction_type": args.prediction_type, "timesteps": args.timesteps}
    weights = bound_weights(scheduler) if args.timesteps == "bound" else None
    if state_file.exists():  # resume: the same weights as one uninterrupted run
        step = resume(state_file, unet, optimizer, ema, generator, recipe)
        print(f"resumed at step {step} from {state_file}", flush=True)

    def more() -> bool:
        if args.steps is not None:
            return step < args.steps
        return time.perf_counter() - started < 60 * args.minutes

    while more():
        rows = torch.randint(0, len(x_train), (args.batch_size,), generator=generator)
        x0 = x_train[rows]
        noise = torch.randn(x0.shape, generator=generator)
        t = draw_timesteps(scheduler.config.num_train_timesteps, weights, len(x0), generator)
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
            save_state(state_file, step, unet, optimizer, ema, generator, recipe)

    save_state(state_file, step, unet, optimizer, ema, generator, recipe)
    unet.load_state_dict(ema)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(args.out / "thumbnails-ddpm")
    elapsed = time.perf_counter() - started
    print(f"trained {step} steps in {elapsed:.0f} s; saved {args.out / 'thumbnails-ddpm'}")


if __name__ == "__main__":
    main()
