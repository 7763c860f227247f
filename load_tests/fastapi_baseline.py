"""What a user would otherwise write: a minimal FastAPI app around the same checkpoints,
one model call per request (no batching), for the benchmark's comparison.

    ELBO_SERVE_MODEL_DIR=... python -m uvicorn load_tests.fastapi_baseline:app \\
        --host 127.0.0.1 --port 3001

It reads the same settings and decodes images with the service's own codec, so the
comparison measures the serving stack and batching, not a different decoder.
"""

from __future__ import annotations

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from models.core.checkpoints import load_checkpoint
from models.core.noise import seeded_generator
from models.eval.scoring import elbo_bits_per_dim, in_chunks, vlb_mc_bits_per_dim
from service.imaging import decode_images
from service.settings import Settings

settings = Settings.from_env()
if settings.torch_threads > 0:
    torch.set_num_threads(settings.torch_threads)
# The baseline a user would write for the two bundled models, by their names.
_served = settings.served_directories()
vae = load_checkpoint(_served["vae"]).model.eval()
_ddpm_checkpoint = load_checkpoint(_served["ddpm"])
ddpm = _ddpm_checkpoint.model.eval()
# The k the service scores with: the one the model card's calibration used.
vlb_mc_k = _ddpm_checkpoint.card["calibration"]["vlb_mc"]["k"]
vae_image_shape = (vae.config.image_channels, vae.config.image_size, vae.config.image_size)
app = FastAPI()


class ScoreBody(BaseModel):
    model: str
    images: list[str]


@app.get("/readyz")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/score")
def score(body: ScoreBody) -> dict[str, list[float]]:
    # A plain `def`: FastAPI runs it in its thread pool, so requests overlap in torch.
    x = decode_images(body.images, vae_image_shape if body.model == "vae" else ddpm.image_shape)
    generator = seeded_generator(0)
    if body.model == "vae":
        bound = elbo_bits_per_dim(vae, generator)
    else:
        bound = vlb_mc_bits_per_dim(ddpm, vlb_mc_k, generator)
    bits_per_dim = in_chunks(bound, x, torch.device("cpu"), len(body.images))
    return {"bits_per_dim": bits_per_dim.tolist()}
