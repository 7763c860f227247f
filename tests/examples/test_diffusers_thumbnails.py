"""The diffusers worked example (docs/diffusers.md): plain diffusers training on a folder of
images, t drawn by its weight in the bound, and the committed pipeline beating the reference
codelengths on thumbnails it never trained on."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.core.checkpoints import load_checkpoint
from models.core.pixels import pixels_to_signed_unit
from models.data import fashion_mnist_dir
from models.diffusion.bound import vlb_exact
from models.eval.baselines import per_pixel_categorical_bits_per_dim

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "diffusers_thumbnails"
PIPELINE = EXAMPLE / "thumbnails-ddpm"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"thumbnails_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_timestep_is_drawn_by_its_weight_in_the_bound():
    """Against our own bound: a noise prediction off by delta everywhere costs exactly
    w_t * delta^2 nats per dimension at step t (Ho et al. 2020 Eq. 12 with fixed_small)."""
    from diffusers import DDPMScheduler

    weights = _example("train").bound_weights(DDPMScheduler(num_train_timesteps=1000))
    diffusion = load_checkpoint(PIPELINE).model.diffusion  # from the folder's own scheduler
    generator = torch.Generator().manual_seed(0)
    x_start = torch.rand(2, 1, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(x_start.shape, generator=generator)
    delta = 0.3
    for step in (1, 2, 10, 500, 999):
        t = torch.full((2,), step)
        x_t = diffusion.q_sample(x_start, t, noise)
        per_dim = diffusion.vlb_term_nats_per_dim(noise + delta, x_start, x_t, t, False)
        expected = torch.full_like(per_dim, weights[step].item() * delta**2)
        torch.testing.assert_close(per_dim.float(), expected, rtol=2e-3, atol=1e-7)
    assert weights[:21].sum() / weights.sum() > 0.25  # t <= 20: 2% of uniform draws


def test_the_committed_pipeline_beats_uniform_and_per_pixel_codelengths_on_held_out_images():
    prepare = _example("prepare")
    root = fashion_mnist_dir()
    train = prepare.thumbnails(prepare.read_idx_images(root / "train-images-idx3-ubyte.gz"))
    test = prepare.read_idx_images(root / "t10k-images-idx3-ubyte.gz")
    held_out = np.sort(np.random.default_rng(0).choice(len(test), 300, replace=False))[:24]
    images = prepare.thumbnails(test[held_out])  # the first 24 of the example's test/ folder

    ddpm = load_checkpoint(PIPELINE).model
    x_start = pixels_to_signed_unit(torch.from_numpy(images).unsqueeze(1))
    with torch.inference_mode():
        bound = vlb_exact(ddpm.diffusion, ddpm, x_start, torch.Generator().manual_seed(0), 6000)
    bits = bound.total_bits_per_dim.double()
    upper = bits.mean() + 3 * bits.std() / len(bits) ** 0.5
    per_pixel = per_pixel_categorical_bits_per_dim(
        train.reshape(len(train), -1), images.reshape(len(images), -1)
    )
    assert upper < per_pixel < 8.0, (bits.mean().item(), per_pixel)


def _train(monkeypatch, *args: str) -> None:
    """The example's command line, in this process (no second torch and diffusers import)."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    _example("train").main()


def test_training_on_a_folder_saves_a_servable_pipeline_and_resumes_only_its_own_recipe(
    tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(
            folder / f"{i}.png"
        )
    common = ("--data", str(folder), "--out", str(tmp_path / "run"), "--batch-size", "4")
    _train(monkeypatch, *common, "--steps", "2")
    _train(monkeypatch, *common, "--steps", "3")
    assert "resumed at step 2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="use another --out"):
        _train(monkeypatch, *common, "--steps", "4", "--timesteps", "uniform")

    served = load_checkpoint(tmp_path / "run" / "thumbnails-ddpm")
    assert served.source["format"] == "diffusers"
    with torch.inference_mode():
        output = served.model(torch.zeros(2, 1, 8, 8), torch.tensor([0, 999]))
    assert output.shape == (2, 1, 8, 8)


def test_training_refuses_a_folder_without_images(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="no PNG or JPEG images"):
        _train(monkeypatch, "--data", str(tmp_path), "--out", str(tmp_path / "run"))
