"""Offline scoring on Spark (local[2]) writes, per image, the score, bits/dim, percentile and
flag that /score answers for that image sent alone with the same options and seed, from a
Parquet dataset or a folder of PNGs; images that cannot be scored are named by id."""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from service_testing import concurrently

from models.core.checkpoints import read_model_card
from models.eval.anomaly import Calibration
from models.eval.calibrated import calibration_for
from offline.batches import ImageScoringError, ScoreOptions, image_seed
from offline.spark_score import Job, main, parse_args, run
from service.imaging import encode_png

SEED = 7
FPR = 0.05
# model, input format, method, correction, every image seeded with SEED itself (else with its
# image_seed): both kinds, both inputs, every correction, both seedings, and the stochastic
# bounds (IWAE's draws, the DDPM's timesteps and noise) that the seed must fix, each in one
# case at least (a fourth, the DDPM on a folder with the PNG correction, added none of them)
CASES = [
    ("vae", "parquet", "elbo", "png", False),
    ("vae", "images", "iwae", "none", True),
    ("ddpm", "parquet", "vlb_mc", "terms", False),
]


@pytest.fixture(scope="module")
def images(test_images: torch.Tensor) -> dict[str, bytes]:
    """id -> PNG bytes: 12 Fashion-MNIST test images and 4 outliers."""
    normal = {f"fashion/{i:02d}.png": test_images[i] for i in range(12)}
    stripes = torch.zeros(1, 28, 28, dtype=torch.uint8)
    stripes[:, :, ::2] = 255
    outliers = {
        "outliers/inverted.png": 255 - test_images[0],
        "outliers/noise.png": torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8),
        "outliers/black.png": torch.zeros(1, 28, 28, dtype=torch.uint8),
        "outliers/stripes.png": stripes,
    }
    return {name: encode_png(image) for name, image in {**normal, **outliers}.items()}


def _parquet(path: Path, images: dict[str, bytes | None]) -> str:
    pd.DataFrame({"id": list(images), "image": list(images.values())}).to_parquet(path)
    return str(path)


def _folder(path: Path, images: dict[str, bytes]) -> str:
    for name, data in images.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return str(path)


def _job(model_dir: Path, source: str, output: Path, **options) -> Job:
    scoring = ScoreOptions(model_dir.name, seed=SEED, fpr=FPR, **options)
    return Job(model_dir, source, str(output), scoring, batch_size=4, partitions=4)


def _calibration(directory: Path, name: str, method: str, correction: str) -> Calibration:
    card = read_model_card(directory)
    return calibration_for(card, name, method, correction).calibration


def _between(values: np.ndarray, a: float, b: float) -> bool:
    low, high = min(a, b), max(a, b)
    return bool(np.any((values >= low) & (values <= high)))


def _scored(client, name: str, image: bytes, seed: int = SEED, **options) -> tuple[int, dict]:
    """/score's answer for ``image`` sent alone."""
    body = {"model": name, "images": [base64.b64encode(image).decode()], "seed": seed}
    response = client.post("/score", json={**body, "fpr": FPR, **options})
    return response.status_code, response.json()


@pytest.mark.parametrize(("name", "source", "method", "correction", "same_seed"), CASES)
def test_scores_equal_the_services_for_the_same_images_and_seed(
    spark, client, served_checkpoints, images, tmp_path, name, source, method, correction, same_seed
):
    if source == "parquet":
        where = _parquet(tmp_path / "images.parquet", images)
    else:
        where = _folder(tmp_path / "images", images)
    options = {"method": method, "correction": correction}
    job = _job(served_checkpoints[name], where, tmp_path / "scores", same_seed=same_seed, **options)

    summary = run(spark, job)

    out = pd.read_parquet(tmp_path / "scores").set_index("id")
    assert sorted(out.index) == sorted(images) and summary.images == len(images)
    # four partitions of four images on two Python workers: a model load per worker, not
    # per partition or batch
    assert summary.partitions == 4 and 1 <= summary.model_loads <= 2
    seeds = {i: SEED if same_seed else image_seed(SEED, i) for i in images}
    assert out["seed"].to_dict() == seeds  # independent draws per image unless same_seed
    calibration = _calibration(served_checkpoints[name], name, method, correction)
    calls = [
        functools.partial(_scored, client, name, images[i], seeds[i], **options) for i in images
    ]
    answers = concurrently(calls)
    flags = []
    for image_id, (status, answer) in zip(images, answers, strict=True):
        assert status == 200, answer
        expected, row = answer["results"][0], out.loc[image_id]
        assert row["error"] is None
        # The same bound to float32 rounding: the networks saw batches of another size, and
        # CPU kernels pick their algorithm by batch size (measured here: the VAE's -ELBO equal
        # to the bit, the others at most 2e-6 bits/dim apart, 4e-5 nats for 'terms').
        assert row["bits_per_dim"] == pytest.approx(expected["bits_per_dim"], abs=1e-3)
        assert row["score"] == pytest.approx(expected["score"], abs=1e-3)
        assert row["png_bits_per_dim"] == expected["png_bits_per_dim"]
        # so the same percentile and flag, unless a held-out score or the threshold lies
        # between the two scores
        scores = (row["score"], expected["score"])
        if not _between(calibration.normal_scores, *scores):
            assert row["percentile"] == expected["percentile"]
        if not _between(np.array([answer["threshold"]]), *scores):
            assert row["is_anomaly"] == expected["is_anomaly"]
        k = None if pd.isna(row["k"]) else int(row["k"])
        assert (row["threshold"], k) == (answer["threshold"], answer["k"])
        flags.append(expected["is_anomaly"])
    assert any(flags) and not all(flags)  # the threshold splits the set: the test can tell
    assert set(out["model"]) == {name} and set(out["method"]) == {answer["method"]}
    assert set(out["correction"]) == {correction}


def _rgb_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8), mode="RGB").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bad_images(images) -> dict[str, bytes | None]:
    """Two good images and four that /score refuses (or could not be sent: a null)."""
    good = dict(list(images.items())[:2])
    png = images["fashion/00.png"]
    bad = {"junk": b"not a png", "colour": _rgb_png(32), "truncated": png[: len(png) // 2]}
    return {**good, **bad, "missing": None}


def test_images_that_cannot_be_scored_stop_the_job_naming_each_by_id(
    spark, served_checkpoints, bad_images, tmp_path
):
    source = _parquet(tmp_path / "bad.parquet", bad_images)
    job = _job(served_checkpoints["vae"], source, tmp_path / "scores")
    job = Job(job.model_dir, job.input, job.output, job.options, batch_size=64, partitions=1)

    with pytest.raises(ImageScoringError) as raised:
        run(spark, job)

    message = str(raised.value)
    assert message.startswith("4 of 6 images in a batch cannot be scored: image 'junk': ")
    assert "image 'colour': expected a 28x28 L image, got 32x32 RGB" in message
    assert "image 'missing': no image: the image column is null" in message
    assert "--on-error record" in message


def test_on_error_record_writes_each_problem_as_score_words_it(
    spark, client, served_checkpoints, bad_images, tmp_path
):
    source = _parquet(tmp_path / "bad.parquet", bad_images)
    job = _job(served_checkpoints["vae"], source, tmp_path / "scores", on_error="record")

    summary = run(spark, job)

    out = pd.read_parquet(tmp_path / "scores").set_index("id")
    assert (summary.images, summary.errors) == (6, 4)
    for image_id, image in bad_images.items():
        row = out.loc[image_id]
        if image is None:
            assert row["error"] == "no image: the image column is null"
            continue
        status, answer = _scored(client, "vae", image, int(row["seed"]))
        if status == 200:
            assert row["error"] is None
            assert row["score"] == pytest.approx(answer["results"][0]["score"], abs=1e-3)
        else:  # the same words as /score's 400, less its "images[0]: "
            assert status == 400 and row["error"] == answer["error"].removeprefix("images[0]: ")
            assert np.isnan(row["score"]) and row["is_anomaly"] is None


def test_command_line_says_what_is_wrong_without_a_traceback(
    spark, served_checkpoints, bad_images, tmp_path
):
    vae = str(served_checkpoints["vae"])
    source = _parquet(tmp_path / "bad.parquet", bad_images)
    common = ["--model-dir", vae, "--input", source, "--output", str(tmp_path / "scores")]

    with pytest.raises(SystemExit, match="^error: --fpr: 0.0001 is below 0.0005"):
        main([*common, "--fpr", "0.0001"])
    with pytest.raises(SystemExit, match="^error: --correction: the vae model card has no term"):
        main([*common, "--method", "iwae", "--correction", "terms"])
    with pytest.raises(SystemExit, match="^error: --correction: .*regret"):
        main([*common, "--correction", "regret"])  # the bundled card has no regret calibration
    with pytest.raises(SystemExit, match=r"^error: \d of \d images in a batch cannot be scored"):
        main([*common, "--partitions", "1"])
    assert spark.getActiveSession() is spark  # the CLI leaves a session it did not start


def test_every_correction_of_score_but_the_ratio_is_offered_offline(tmp_path, capsys):
    common = ["--model-dir", str(tmp_path), "--input", "x", "--output", "y"]
    for correction in ("none", "png", "webp", "terms", "regret"):
        assert parse_args([*common, "--correction", correction]).correction == correction
    with pytest.raises(SystemExit):
        parse_args([*common, "--correction", "ratio"])
    assert "invalid choice: 'ratio'" in capsys.readouterr().err
