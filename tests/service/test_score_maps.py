"""/score with maps: a normalised anomaly map and an RGB heat-map PNG per image, the same
scores as without, 400 for a bound with no per-pixel form, 409 without a pixel calibration,
and maps that do not depend on the other jobs in their batch."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image
from service_testing import png_b64

from models.core.progressive import run_to_end
from service import runners


@pytest.fixture(scope="module")
def images(test_images):
    return [png_b64(image) for image in test_images[:3]]


def test_score_with_maps_returns_a_map_and_an_rgb_heatmap_per_image(client, images):
    body = {"model": "vae", "images": images, "fpr": 0.25, "seed": 3}
    plain = client.post("/score", json=body)
    mapped = client.post("/score", json={**body, "maps": True})
    assert plain.status_code == 200 and mapped.status_code == 200, mapped.text
    for without, result in zip(plain.json()["results"], mapped.json()["results"], strict=True):
        assert without["anomaly_map"] == [] and without["heatmap_png"] is None
        assert result["score"] == without["score"]  # the same bound, the same draws
        z = torch.tensor(result["anomaly_map"])
        assert z.shape == (1, 28, 28) and torch.isfinite(z).all()
        heat = Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"])))
        assert heat.format == "PNG" and heat.mode == "RGB" and heat.size == (28, 28)


def test_global_and_per_pixel_maps_are_two_normalisations_of_the_same_nats(
    client, images, served_checkpoints
):
    """Undoing each normalisation with the card's statistics gives back the same nats."""
    from models.core.checkpoints import read_model_card

    body = {"model": "vae", "images": images, "fpr": 0.25, "seed": 3, "maps": True}
    per_pixel = client.post("/score", json=body).json()["results"]
    pooled = client.post("/score", json={**body, "map_normalisation": "global"}).json()["results"]
    card = read_model_card(served_checkpoints["vae"])
    calibration = _pixel_calibration(card)
    mean, std, eps = calibration.mean_nats, calibration.std_nats, calibration.eps_nats
    pooled_mean = mean.mean()
    pooled_spread = (std.pow(2) + (mean - pooled_mean).pow(2)).mean().sqrt()
    for a, b in zip(per_pixel, pooled, strict=True):
        assert a["score"] == b["score"]
        nats_a = torch.tensor(a["anomaly_map"], dtype=torch.float64) * (std + eps) + mean
        nats_b = torch.tensor(b["anomaly_map"], dtype=torch.float64) * (pooled_spread + eps)
        assert torch.allclose(nats_a, nats_b + pooled_mean, atol=1e-3)
    refused = client.post("/score", json={**body, "map_normalisation": "per-image"})
    assert refused.status_code == 400 and "map_normalisation" in refused.text


def _pixel_calibration(card):
    """The pixel calibration a /score plan with maps uses for the vae's elbo."""
    from load_tests.serving import REPO_ROOT
    from models.core.checkpoints import load_checkpoint
    from models.eval.plan import Scoring
    from models.kinds import kind_of

    vae = load_checkpoint(REPO_ROOT / "checkpoints" / "vae").model
    return Scoring("vae", kind_of(vae), vae, card).plan("elbo", maps=True).pixel


def test_score_with_maps_refuses_a_bound_without_a_per_pixel_form(client, images):
    body = {"model": "vae", "images": images[:1], "fpr": 0.25, "method": "iwae", "maps": True}
    response = client.post("/score", json=body)
    assert response.status_code == 400
    assert response.json()["field"] == "maps" and "per-pixel" in response.json()["error"]


def test_score_with_maps_is_409_without_a_pixel_calibration(client, images):
    # The exact DDPM bound has a per-pixel form but no pixel calibration (T calls an image).
    body = {"model": "ddpm", "images": images[:1], "fpr": 0.25, "method": "vlb_exact"}
    response = client.post("/score", json={**body, "maps": True})
    assert response.status_code == 409, response.text
    assert "no pixel calibration for method 'vlb_exact'" in response.json()["error"]


def test_pixel_calibration_of_another_k_or_none_is_a_conflict(tiny_vae_config):
    from models.eval.anomaly import Calibration
    from models.eval.plan import NoCalibrationError, Scoring
    from models.kinds import kind_of

    kind = kind_of("vae")
    model = kind.build(tiny_vae_config())
    scores = {"bits_per_dim": Calibration.of([1.0, 2.0, 3.0, 4.0], "four").to_dict((0.25,))}
    calibration = {"elbo": {"k": None, "scores": scores}}

    def plan(pixel: dict):
        card = {"calibration": calibration, "pixel_calibration": pixel}
        return Scoring("mine", kind, model, card).plan("elbo", fpr=0.25, maps=True)

    with pytest.raises(NoCalibrationError, match="pixel-calibrated: nothing") as error:
        plan({})
    assert error.value.field == "maps"
    assert plan({"elbo": _record(k=None)}).pixel.method == "elbo"
    with pytest.raises(NoCalibrationError, match="used k=3"):
        plan({"elbo": _record(k=3)})


def _record(k):
    from models.eval.maps import fit_pixel_calibration

    return fit_pixel_calibration(torch.rand(4, 1, 28, 28), "elbo", "four", k).to_card().to_dict()


@pytest.mark.parametrize("name", ["vae", "ddpm"])
def test_a_jobs_maps_do_not_depend_on_the_other_jobs_in_its_batch(
    name, tiny_vae_config, tiny_ddpm_config
):
    from models.kinds import kind_of

    torch.manual_seed(0)
    kind = kind_of(name)
    model = kind.build(tiny_vae_config() if name == "vae" else tiny_ddpm_config()).eval()
    shape = kind.image_shape(model.config)
    generator = torch.Generator().manual_seed(1)
    mine, other = (
        torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8) for n in (2, 3)
    )
    method = kind.method_for(model, None)
    k = method.default_k and 4

    def maps(jobs):
        out = run_to_end(runners.bound_per_dim(kind, method, model, jobs, k, 64))
        return out[-1]["total_nats_per_dim"]

    alone = maps([runners.ImagesJob(mine, seed=7)])
    batched = maps([runners.ImagesJob(other, seed=9), runners.ImagesJob(mine, seed=7)])
    assert alone.shape == (2, *shape)
    assert torch.allclose(alone, batched, rtol=1e-5, atol=1e-6)
