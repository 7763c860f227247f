"""diffusers DDPM folders served as DDPMs of our kind: the reverse step equals
DDPMScheduler.step's, DDIM equals DDIMScheduler's loop, the exact bound equals a float64
re-derivation from Ho et al. 2020 Eq. 5, and every refused setting is refused at load."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from diffusers_folders import (
    CAT256_SCHEDULER,
    CAT256_UNET,
    CIFAR10_SCHEDULER,
    CIFAR10_UNET,
    tiny_folder,
    write_folder,
)

from models.core.checkpoints import load_checkpoint, read_config
from models.core.pixels import signed_unit_to_pixels
from models.core.progressive import run_to_end
from models.core.repository import servable_checkpoints
from models.diffusion.bound import vlb_exact
from models.formats.diffusers import RefusedSettingError
from models.kinds import kind_of

diffusers = pytest.importorskip("diffusers")
T = 50


def _scheduler(folder, cls):
    return cls.from_config(json.loads((folder / "scheduler/scheduler_config.json").read_text()))


def _diffusers_std(scheduler, t, predicted_variance):
    """The std DDPMScheduler.step scales its noise by, from its own _get_variance."""
    variance_type = scheduler.config.variance_type
    value = scheduler._get_variance(t, predicted_variance=predicted_variance)
    if variance_type == "fixed_small_log":
        return value  # already exp(0.5 log variance)
    if variance_type in ("learned_range", "fixed_large_log"):
        # fixed_large_log: _get_variance gives log beta_t (Glide's max_log), whose step
        # takes its square root and yields NaN; the std it stands for is exp(0.5 log beta_t).
        return torch.exp(0.5 * value)
    return value**0.5


@pytest.mark.parametrize(
    ("channels", "variance_type", "prediction_type", "clip_sample"),
    [
        (1, "fixed_small", "epsilon", True),
        (3, "fixed_large", "epsilon", True),
        (1, "fixed_small_log", "sample", False),
        (3, "fixed_large_log", "v_prediction", True),
        (1, "learned_range", "epsilon", False),
        (3, "learned_range", "v_prediction", True),
    ],
)
def test_reverse_step_equals_ddpm_scheduler_step_for_every_t_from_1(
    tmp_path, channels, variance_type, prediction_type, clip_sample
):
    folder = tiny_folder(
        tmp_path / "m",
        channels,
        8,
        T,
        variance_type=variance_type,
        prediction_type=prediction_type,
        clip_sample=clip_sample,
        clip_sample_range=0.8,
    )
    ddpm = load_checkpoint(folder).model
    scheduler = _scheduler(folder, diffusers.DDPMScheduler)
    unet = ddpm.unet.unet  # diffusers' own UNet2DModel inside our adapter
    x = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(1))
    worst_mean, worst_std = 0.0, 0.0
    with torch.no_grad():
        for t in range(1, T):
            tt = torch.full((2,), t)
            ours = ddpm.diffusion.p_mean_variance(ddpm(x, tt), x, tt)
            output = unet(x, tt).sample
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
            prev = scheduler.step(output, t, x, generator=torch.Generator().manual_seed(t))
            predicted = output[:, channels:] if variance_type == "learned_range" else None
            std = _diffusers_std(scheduler, t, predicted)
            mean = prev.prev_sample - std * noise if variance_type != "fixed_large_log" else None
            if mean is not None:
                worst_mean = max(worst_mean, (ours.mean - mean).abs().max().item())
            worst_std = max(worst_std, (ours.log_variance.mul(0.5).exp() - std).abs().max().item())
    # diffusers steps in float32 (its coefficients too): agreement to float32 rounding of
    # O(1) values amplified by 1 / sqrt(abar_t) near t = T - 1 for the x_0 predictions.
    print(f"max |mean difference| {worst_mean:.1e}, max |std difference| {worst_std:.1e}")
    assert worst_mean < 5e-4 and worst_std < 1e-5, (worst_mean, worst_std)


@pytest.mark.parametrize(
    ("scheduler_settings", "steps"),
    [
        ({"clip_sample": True}, 10),  # leading, as the published configs (no spacing key)
        ({"timestep_spacing": "trailing", "clip_sample": False}, 7),
        ({"timestep_spacing": "linspace", "prediction_type": "v_prediction"}, 6),
        ({"timestep_spacing": "leading", "steps_offset": 1, "clip_sample_range": 0.5}, 8),
    ],
)
def test_ddim_decode_equals_ddim_scheduler_loop_within_one_level(
    tmp_path, scheduler_settings, steps
):
    folder = tiny_folder(tmp_path / "m", 3, 8, T, **scheduler_settings)
    ddpm = load_checkpoint(folder).model
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    ours = run_to_end(kind_of(ddpm).decode(ddpm, x_T, {"steps": steps}, None))
    scheduler = _scheduler(folder, diffusers.DDIMScheduler)
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(ddpm.unet.unet(x, t).sample, t, x, eta=0.0).prev_sample
    levels = (signed_unit_to_pixels(ours).int() - signed_unit_to_pixels(x).int()).abs()
    print(f"max |x| difference {(ours - x).abs().max().item():.2e}, levels {levels.max()}")
    assert levels.max().item() <= 1


def _float64_bound_bits_per_dim(ddpm, x0, alphas_cumprod, generator):
    """Ho et al. 2020 Eq. 5 in float64 from the scheduler's alphas_cumprod: L_T, the
    Gaussian KLs L_{t-1} (Eqs. 6-7, fixed_small) and L_0 (Eq. 13, variance beta-tilde_1 as
    improved-diffusion), with the same noise draws (one x.shape block per t, in order)."""
    abar = alphas_cumprod.double()
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1 - abar / abar_prev
    posterior_var = betas * (1 - abar_prev) / (1 - abar)
    x0 = x0.double()
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for t in range(len(abar)):
        noise = torch.randn(x0.shape, generator=generator).double()
        x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * noise
        with torch.no_grad():
            eps = ddpm.unet.unet(x_t.float(), torch.full((x0.shape[0],), t)).sample.double()
        x0_hat = ((x_t - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
        c1 = betas[t] * abar_prev[t].sqrt() / (1 - abar[t])
        c2 = (1 - abar_prev[t]) * (1 - betas[t]).sqrt() / (1 - abar[t])
        model_mean = c1 * x0_hat + c2 * x_t
        var = posterior_var[max(t, 1)]
        if t == 0:
            std = var.sqrt()
            upper = torch.where(
                x0 > 0.999,
                torch.ones_like(x0),
                torch.special.ndtr((x0 + 1 / 255 - model_mean) / std),
            )
            lower = torch.where(
                x0 < -0.999,
                torch.zeros_like(x0),
                torch.special.ndtr((x0 - 1 / 255 - model_mean) / std),
            )
            term = -torch.log((upper - lower).clamp(min=1e-12))
        else:
            true_mean = c1 * x0 + c2 * x_t
            term = 0.5 * (true_mean - model_mean) ** 2 / var  # equal variances: Eq. 5's KL
        total += term.flatten(1).sum(1)
    last = abar[-1]
    prior = 0.5 * (last * x0**2 + (1 - last) - 1 - torch.log(1 - last))
    total += prior.flatten(1).sum(1)
    return total / (x0[0].numel() * math.log(2))


def test_exact_bound_equals_a_float64_rederivation_from_the_schedulers_alpha_bars(tmp_path):
    folder = tiny_folder(tmp_path / "m", 1, 8, 20, variance_type="fixed_small")
    ddpm = load_checkpoint(folder).model
    scheduler = _scheduler(folder, diffusers.DDPMScheduler)
    pixels = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    x0 = pixels.float() / 127.5 - 1
    ours = vlb_exact(ddpm.diffusion, ddpm, x0, torch.Generator().manual_seed(4), max_batch=1000)
    reference = _float64_bound_bits_per_dim(
        ddpm, x0, scheduler.alphas_cumprod, torch.Generator().manual_seed(4)
    )
    difference = (ours.total_bits_per_dim - reference).abs().max().item()
    print(f"bound difference {difference:.2e} bits/dim")
    assert difference < 1e-4


@pytest.mark.parametrize(
    ("unet", "scheduler", "variance"),
    [
        (CIFAR10_UNET, CIFAR10_SCHEDULER, "fixed_large"),
        (CAT256_UNET, CAT256_SCHEDULER, "fixed_small"),
    ],
    ids=["google-ddpm-cifar10-32", "google-ddpm-cat-256"],
)
def test_published_google_configs_load_with_their_scheduler_settings(
    tmp_path, unet, scheduler, variance
):
    narrow = {**unet, "block_out_channels": [32] * len(unet["block_out_channels"])}
    folder = write_folder(tmp_path / "m", narrow, scheduler)
    checkpoint = load_checkpoint(folder)
    ddpm = checkpoint.model
    assert kind_of(ddpm).image_shape(ddpm.config) == (3, unet["sample_size"], unet["sample_size"])
    assert ddpm.diffusion.config.variance == variance and ddpm.diffusion.num_timesteps == 1000
    assert ddpm.diffusion.clip_range == 1.0 and ddpm.diffusion.ddim.spacing == "leading"
    reference = diffusers.DDPMScheduler.from_config(scheduler)
    assert torch.allclose(
        ddpm.diffusion.alphas_cumprod, reference.alphas_cumprod.double(), rtol=1e-5
    )
    assert checkpoint.source["scheduler"]["variance_type"] == scheduler["variance_type"]


REFUSALS = [
    ("scheduler", {"thresholding": True}, "thresholding"),
    ("scheduler", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ("scheduler", {"timestep_spacing": "karras"}, "timestep_spacing"),
    ("scheduler", {"variance_type": "learned"}, "variance_type"),
    ("scheduler", {"_class_name": "PNDMScheduler"}, "_class_name"),
    ("unet", {"num_class_embeds": 10}, "num_class_embeds"),
    ("unet", {"class_embed_type": "timestep"}, "class_embed_type"),
    ("model_index", {"vqvae": ["diffusers", "VQModel"]}, "vqvae"),
    ("model_index", {"vae": ["diffusers", "AutoencoderKL"]}, "vae"),
]
FILES = {
    "scheduler": "scheduler/scheduler_config.json",
    "unet": "unet/config.json",
    "model_index": "model_index.json",
}


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("good") / "good", 1, 8, T)


@pytest.mark.parametrize(("part", "setting", "key"), REFUSALS, ids=[r[2] for r in REFUSALS])
def test_refused_settings_are_refused_at_load_naming_file_key_and_value_and_the_rest_serve(
    tmp_path, good_folder, part, setting, key
):
    root = tmp_path / "repository"
    shutil.copytree(good_folder, root / "good")
    shutil.copytree(good_folder, root / "refused")
    path = root / "refused" / FILES[part]
    path.write_text(json.dumps({**json.loads(path.read_text()), **setting}))
    with pytest.raises(RefusedSettingError) as refused:
        read_config(root / "refused")
    message = str(refused.value)
    assert str(path) in message and key in message and json.dumps(setting[key]) in message
    assert list(servable_checkpoints(root)) == ["good"]


def test_bin_weights_load_only_as_tensors(tmp_path):
    folder = tiny_folder(tmp_path / "safetensors", 1, 8, T)
    binary = write_folder(
        tmp_path / "bin",
        json.loads((folder / "unet/config.json").read_text()),
        json.loads((folder / "scheduler/scheduler_config.json").read_text()),
        safe_serialization=False,
    )
    assert (binary / "unet/diffusion_pytorch_model.bin").is_file()
    x, t = torch.zeros(1, 1, 8, 8), torch.tensor([3])
    a, b = load_checkpoint(folder).model, load_checkpoint(binary).model
    assert torch.equal(a(x, t), b(x, t))  # same seed, same weights, either file
