"""What each executor runs, without Spark: a model loaded once per process from the broadcast
files, pandas batches scored image by image as /score scores an image alone, bad images named."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from models.core.checkpoints import save_checkpoint
from models.core.noise import seeded_generator
from models.eval.anomaly import Calibration
from models.vae.model import VAE
from offline import batches
from offline.batches import (
    NON_FINITE,
    RESULT_COLUMNS,
    CheckpointFiles,
    ImageScoringError,
    ScoreOptions,
    image_seed,
    score_batches,
    score_frame,
    worker_scorer,
)
from service.imaging import encode_png


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_vae_config) -> CheckpointFiles:
    """A tiny 8x8 VAE with an elbo calibration, as the driver broadcasts it."""
    torch.manual_seed(0)
    scores = Calibration.of(9.0 + (np.arange(40) - 20) / 64, "fixture").to_dict((0.05,))
    minus_webp = Calibration.of(2.0 + (np.arange(40) - 20) / 64, "fixture").to_dict((0.05,))
    calibrated = {"bits_per_dim": scores, "bits_per_dim_minus_webp": minus_webp}
    card = {"calibration": {"elbo": {"k": None, "scores": calibrated}}}
    directory = tmp_path_factory.mktemp("checkpoint") / "tiny"
    save_checkpoint(directory, VAE(tiny_vae_config(size=8)).eval(), card)
    return CheckpointFiles.read(directory)


@pytest.fixture
def pngs() -> dict[str, bytes]:
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=seeded_generator(1))
    return {f"image-{i}": encode_png(image) for i, image in enumerate(images)}


def _frame(images: dict) -> pd.DataFrame:
    return pd.DataFrame({"id": list(images), "image": list(images.values())})


def test_each_image_scores_as_it_does_alone_in_any_batch(files, pngs):
    options = ScoreOptions("tiny", seed=3)
    scorer = worker_scorer(files, options)

    together = score_frame(scorer, _frame(pngs), options)
    alone = pd.concat([score_frame(scorer, _frame({k: v}), options) for k, v in pngs.items()])

    assert list(together.columns) == ["id", *(name for name, _ in RESULT_COLUMNS)]
    # the same draws; the network's float32 rounding may differ with the batch size
    assert together["score"].tolist() == pytest.approx(alone["score"].tolist(), abs=1e-5)
    assert together["is_anomaly"].tolist() == alone["is_anomaly"].tolist()
    assert together["error"].isna().all()
    assert together["seed"].tolist() == [image_seed(3, i) for i in pngs]  # one per image
    assert set(together["method"]) == {"elbo"} and together["k"].isna().all()


def test_the_webp_correction_is_the_bound_minus_each_images_webp_codelength(files, pngs):
    raw_options = ScoreOptions("tiny", seed=3)
    webp_options = dataclasses.replace(raw_options, correction="webp")
    raw = score_frame(worker_scorer(files, raw_options), _frame(pngs), raw_options)
    corrected = score_frame(worker_scorer(files, webp_options), _frame(pngs), webp_options)
    webp_bits = [8 * len(_webp_lossless(png)) / 64 for png in pngs.values()]
    expected = [bound - bits for bound, bits in zip(raw["score"], webp_bits, strict=True)]
    assert corrected["score"].tolist() == pytest.approx(expected, abs=1e-9)
    assert set(corrected["correction"]) == {"webp"}


def _webp_lossless(png: bytes) -> bytes:
    """The image re-encoded by Pillow as WebP lossless at effort 6 (models.eval.codecs' setting)."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, format="WEBP", lossless=True, quality=100, method=6)
    return buffer.getvalue()


def test_same_seed_draws_every_image_with_the_seed_itself(files, pngs):
    options = ScoreOptions("tiny", seed=3, same_seed=True)
    out = score_frame(worker_scorer(files, options), _frame(pngs), options)
    assert set(out["seed"]) == {3}


def test_image_seeds_are_stable_distinct_and_take_what_score_takes():
    seeds = [image_seed(0, f"image-{i}") for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert image_seed(0, "a.png") == image_seed(0, "a.png") != image_seed(1, "a.png")
    assert image_seed(0, "a.png") == 2095119232181453263  # the same on every machine


def test_a_worker_loads_its_model_once_for_every_batch(files, pngs):
    loads = []
    batches._loaded.clear()
    frames = [_frame(pngs)] * 3
    options = ScoreOptions("tiny")
    out = list(score_batches(iter(frames), files, options, on_load=lambda: loads.append(1)))
    out += list(score_batches(iter(frames), files, options, on_load=lambda: loads.append(1)))
    assert len(out) == 6 and loads == [1]


def test_bad_images_are_named_by_id_or_recorded(files, pngs):
    bad = {
        **pngs,
        "junk": b"junk",
        "missing": None,
        "big": encode_png(torch.zeros(1, 9, 9, dtype=torch.uint8)),
    }
    with pytest.raises(ImageScoringError) as raised:
        score_frame(worker_scorer(files, ScoreOptions("tiny")), _frame(bad), ScoreOptions("tiny"))
    assert str(raised.value).startswith(
        "3 of 8 images in a batch cannot be scored: image 'junk': not a readable PNG image "
        "(unrecognised data); image 'missing': no image: the image column is null; image "
        "'big': expected a 8x8 L image, got 9x9 L"
    )

    options = ScoreOptions("tiny", on_error="record")
    out = score_frame(worker_scorer(files, options), _frame(bad), options).set_index("id")
    assert out.loc["big", "error"] == "expected a 8x8 L image, got 9x9 L"
    assert out.loc[["junk", "missing", "big"], "score"].isna().all()
    assert out.loc[list(pngs), "error"].isna().all() and out.loc[list(pngs), "score"].notna().all()


def test_a_non_finite_bound_is_recorded_and_the_rest_scored(files, pngs):
    options = ScoreOptions("tiny", on_error="record")
    scorer = worker_scorer(files, options)
    real_run = scorer.method.run

    def nan_in_first_row(model, x, k, generators, max_batch):  # one image's bound is NaN
        terms = yield from real_run(model, x, k, generators, max_batch)
        if x.shape[0] == len(pngs):
            terms["total_bits_per_dim"][0] = float("nan")
        return terms

    method = dataclasses.replace(scorer.method, run=nan_in_first_row)
    scorer = dataclasses.replace(scorer, plan=dataclasses.replace(scorer.plan, method=method))
    out = score_frame(scorer, _frame(pngs), options).set_index("id")
    assert out.loc["image-0", "error"] == NON_FINITE
    assert out["score"].notna().sum() == len(pngs) - 1
