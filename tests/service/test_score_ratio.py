"""/score for every correction on a served foreground and its background model: a tiny VAE
whose card names a tiny DDPM (a background may be any kind reading the same images), served
together by a real server. The ratio is checked against two separate /likelihood calls; a
missing background, or one of another image shape or other weights, stops the start."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from service_testing import FIXTURE_K, fixture_calibration

from models.core.card import SCORE_KINDS
from models.core.checkpoints import (
    CheckpointError,
    read_model_card,
    save_checkpoint,
    weights_path,
    weights_sha256,
    write_model_card,
)
from models.eval.anomaly import Calibration
from models.eval.codecs import with_codec_calibration
from models.eval.ratio import with_ratio
from models.eval.typicality import fit_and_calibrate, with_term_density
from models.kinds import kind_of

PORT = 3917
FPR = 0.25


def _images(n: int, seed: int, shape=(1, 8, 8)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)


def _pair(root, tiny_vae_config, tiny_ddpm_config, background_channels: int = 1) -> None:
    """root/fore (a VAE whose card names its background) and root/back (a DDPM)."""
    torch.manual_seed(0)
    fore = kind_of("vae").build(tiny_vae_config(size=8)).eval()
    back = (
        kind_of("ddpm")
        .build(tiny_ddpm_config(channels=background_channels, size=8, num_timesteps=10))
        .eval()
    )
    save_checkpoint(root / "fore", fore)
    save_checkpoint(root / "back", back)
    images = _images(16, 0, (background_channels, 8, 8))
    write_model_card(root / "back", {"calibration": fixture_calibration(root / "back", images)})
    card = {"calibration": fixture_calibration(root / "fore", _images(16, 0))}
    names = kind_of(fore).term_names(fore, None)
    vectors = 100.0 + np.random.default_rng(0).standard_normal((300, len(names)))
    density = fit_and_calibrate(
        vectors[:200], vectors[200:], names, None, "gaussian", "fixture", "fixture"
    )
    card = with_term_density(card, "elbo", density)
    held, other = _images(16, 1), _images(8, 2)
    card = with_codec_calibration(
        card, "elbo", "webp", _elbo(fore, held), held, "16 random images", _elbo(fore, other), other
    )
    sha = weights_sha256(weights_path(root / "back"))
    if background_channels == 1:
        card = with_ratio(
            card,
            (kind_of(fore), fore),
            ("back", kind_of(back), back, sha),
            _images(16, 1),
            "test fixture: 16 random images",
            _images(8, 2),
            {"noise": _images(8, 3)},
            background_k=FIXTURE_K["vlb_mc"],
        )
    else:  # a card measured before the background was swapped for an RGB one
        card["background"] = {
            "name": "back",
            "weights_sha256": sha,
            "method": "vlb_mc",
            "k": 4,
            "image_shape": [1, 8, 8],
        }
    write_model_card(root / "fore", card)


def _elbo(vae, images: torch.Tensor) -> torch.Tensor:
    from models.eval.ratio import bound_bits_per_dim

    return bound_bits_per_dim(kind_of(vae).method_for(vae, "elbo"), vae, images, None, 0)


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_vae_config, tiny_ddpm_config):
    root = tmp_path_factory.mktemp("ratio-repository")
    _pair(root, tiny_vae_config, tiny_ddpm_config)
    return root


@pytest.fixture(scope="module")
def url(repository, tmp_path_factory):
    from load_tests.serving import running_server, server_environment

    overrides = {
        "ELBO_SERVE_MODEL_DIR": str(repository),
        "ELBO_SERVE_MODELS": "",
        "ELBO_SERVE_TORCH_THREADS": "1",
        "ELBO_SERVE_CHANNELS_LAST": "false",  # no CPU-mode measurement at start: faster
    }
    env = server_environment(overrides, tmp_path_factory.mktemp("bentoml-home"))
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(env, log, port=PORT) as (served_url, _process):
        yield served_url


def _post(url: str, path: str, body: dict) -> requests.Response:
    return requests.post(url + path, json=body, timeout=120)


def _body(**fields) -> dict:
    """A /likelihood body; /score's with an fpr."""
    images = [image.tolist() for image in _images(3, 7)]
    return {"model": "fore", "images": images, "seed": 5, **fields}


@pytest.mark.parametrize("correction", ["none", "png", "webp", "terms", "ratio"])
def test_every_correction_scores_against_its_calibrated_threshold(url, repository, correction):
    response = _post(url, "/score", _body(correction=correction, fpr=FPR))
    assert response.status_code == 200, response.text
    body = response.json()
    card = read_model_card(repository / "fore")
    entry = card["calibration"]["elbo"]
    if correction == "terms":
        calibration = entry["term_density"]["calibration"]
    else:
        kind = SCORE_KINDS[correction]
        calibration = entry["scores"][kind]
    assert body["correction"] == correction
    expected = Calibration.of(calibration["normal_scores"], "card").threshold(FPR)
    assert body["threshold"] == pytest.approx(expected)
    assert body["calibration_images"] == calibration["num_images"]
    assert body["background"] == ("back" if correction == "ratio" else None)
    normal = np.array(calibration["normal_scores"])
    for result in body["results"]:
        assert result["is_anomaly"] == (result["score"] > body["threshold"])
        assert result["percentile"] == pytest.approx(100 * np.mean(normal < result["score"]))
        if correction == "png":
            assert result["score"] == pytest.approx(
                result["bits_per_dim"] - result["png_bits_per_dim"]
            )
        if correction == "webp":  # the codec's own output size, per image
            image = np.array(_body()["images"][body["results"].index(result)], dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image[0]).save(buffer, "WEBP", lossless=True, quality=100, method=6)
            webp = 8.0 * len(buffer.getvalue()) / image.size
            assert result["score"] == pytest.approx(result["bits_per_dim"] - webp, abs=1e-6)
        if correction != "ratio":
            assert result["background_bits_per_dim"] is None


def test_ratio_is_the_bound_minus_the_backgrounds_bound_from_likelihood(url):
    """Two separate /likelihood calls (the foreground's elbo, the background's vlb_mc at the
    card's k), with the request's seed, give the two terms of the ratio."""
    scored = _post(url, "/score", _body(correction="ratio", fpr=FPR)).json()["results"]
    fore = _post(url, "/likelihood", _body(method="elbo")).json()["results"]
    back = _post(url, "/likelihood", _body(model="back", method="vlb_mc", k=4)).json()["results"]
    for result, f, b in zip(scored, fore, back, strict=True):
        assert result["bits_per_dim"] == pytest.approx(f["total_bits_per_dim"], abs=1e-5)
        assert result["background_bits_per_dim"] == pytest.approx(b["total_bits_per_dim"], abs=1e-5)
        assert result["score"] == pytest.approx(
            f["total_bits_per_dim"] - b["total_bits_per_dim"], abs=1e-5
        )


def test_bad_corrections_are_4xx_naming_the_field(url):
    unknown = _post(url, "/score", _body(correction="jpeg"))
    assert unknown.status_code == 400 and "correction" in unknown.text
    no_background = _post(url, "/score", _body(model="back", correction="ratio"))
    assert no_background.status_code == 409, no_background.text
    assert no_background.json()["field"] == "correction"
    assert "names no background model" in no_background.json()["error"]


def test_the_request_schema_offers_every_correction_a_plan_resolves():
    import typing

    from models.eval.plan import CORRECTIONS
    from service.schemas import Correction

    assert set(typing.get_args(Correction)) == set(CORRECTIONS)


def test_a_missing_background_stops_the_start_naming_the_card(repository, tmp_path):
    from service.repository import load_repository

    alone = tmp_path / "fore"
    shutil.copytree(repository / "fore", alone)
    with pytest.raises(CheckpointError, match="model_card.json: its background model 'back'"):
        load_repository({"fore": alone}, "cpu")
    # Served without its background's name, it is found beside the foreground.
    loaded = load_repository({"fore": repository / "fore"}, "cpu")
    assert list(loaded) == ["fore"] and loaded["fore"].background.name == "back"


def test_a_background_of_other_weights_or_image_shape_stops_the_start(
    repository, tmp_path, tiny_vae_config, tiny_ddpm_config
):
    from service.repository import load_repository

    other = tmp_path / "other"
    shutil.copytree(repository, other)
    card = json.loads((other / "fore" / "model_card.json").read_text())
    card["background"]["weights_sha256"] = "f" * 64
    (other / "fore" / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="SHA-256 .* not the ffffffffffffffff"):
        load_repository({"fore": other / "fore", "back": other / "back"}, "cpu")

    rgb = tmp_path / "rgb"
    rgb.mkdir()
    _pair(rgb, tiny_vae_config, tiny_ddpm_config, background_channels=3)
    with pytest.raises(CheckpointError, match=r"reads images \(C, H, W\) = \(3, 8, 8\)"):
        load_repository({"fore": rgb / "fore", "back": rgb / "back"}, "cpu")


def test_the_bundled_vae_serves_the_webp_correction_with_its_card_calibration(client):
    from load_tests.serving import REPO_ROOT

    images = [image.tolist() for image in _images(2, 4, (1, 28, 28))]
    body = {"model": "vae", "images": images, "correction": "webp", "fpr": 0.05}
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    card = read_model_card(REPO_ROOT / "checkpoints" / "vae")
    webp = card["calibration"]["elbo"]["scores"]["bits_per_dim_minus_webp"]
    assert response.json()["threshold"] == pytest.approx(webp["thresholds"]["0.05"])
    ddpm = client.post("/score", json={**body, "model": "ddpm"})
    assert ddpm.status_code == 409 and ddpm.json()["field"] == "correction"
