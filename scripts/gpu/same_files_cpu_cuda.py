"""The bundled checkpoints load on CUDA and on CPU from the same files and give the same bounds
(TF32 off, so only float32 rounding separates the two)."""

import torch

from models.core.checkpoints import load_checkpoint
from models.core.pixels import pixels_to_signed_unit
from models.data import load_fashion_mnist
from models.eval.scoring import elbo_bits_per_dim, vlb_exact_bits_per_dim

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
images = pixels_to_signed_unit(load_fashion_mnist("test")[0][:8])
for name, bound_of in (("vae", elbo_bits_per_dim), ("ddpm", vlb_exact_bits_per_dim)):
    results = {}
    for device in ("cpu", "cuda"):
        model = load_checkpoint(f"checkpoints/{name}", device).model
        bound = bound_of(model, torch.Generator().manual_seed(0))
        results[device] = bound(images.to(device)).double().cpu()
    gap = (results["cpu"] - results["cuda"]).abs().max().item()
    print(
        f"{name}: cpu {results['cpu'].mean():.5f} cuda {results['cuda'].mean():.5f} "
        f"bits/dim on 8 test images, max per-image gap {gap:.2e}"
    )
