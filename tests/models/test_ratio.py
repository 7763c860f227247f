"""The likelihood ratio against a background model (Ren et al. 2019): the mutation of its
training images, its training run, the ratio score against two separate bound calls, its
calibration in the card, and the background checks that serving runs at load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.core.checkpoints import save_checkpoint, weights_path, weights_sha256
from models.core.noise import seeded_generator
from models.core.pixels import pixels_to_signed_unit
from models.core.progressive import run_to_end
from models.eval.anomaly import Calibration
from models.eval.calibrated import CalibratedScorer
from models.eval.plan import BackgroundError, NoCalibrationError, check_background
from models.eval.ratio import with_ratio
from models.kinds import kind_of
from models.training.background import mutate


def _images(n: int, seed: int, shape=(1, 8, 8)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)


def test_mutation_replaces_each_value_with_probability_r_by_a_uniform_draw():
    images = torch.full((400, 1, 16, 16), 7, dtype=torch.uint8)  # 7 is rarely drawn
    mutated = mutate(images, 0.3, seeded_generator(0))
    replaced = mutated != 7
    # 102,400 values: the fraction replaced is 0.3 (1 - 1/256 of them differ from 7).
    assert replaced.double().mean().item() == pytest.approx(0.3 * 255 / 256, abs=0.005)
    values = mutated[replaced].long()
    counts = torch.bincount(values, minlength=256).double()
    assert counts[7] == 0 and values.double().mean().item() == pytest.approx(127.5, abs=1.5)
    assert torch.equal(mutated, mutate(images, 0.3, seeded_generator(0)))  # seeded
    assert torch.equal(mutate(images, 0.0, seeded_generator(0)), images)


@pytest.fixture(scope="module")
def pair(tiny_vae_config, tiny_ddpm_config):
    """A tiny VAE foreground and a tiny DDPM background (any kind reading the same images)."""
    torch.manual_seed(0)
    fore = kind_of("vae").build(tiny_vae_config(size=8)).eval()
    back = kind_of("ddpm").build(tiny_ddpm_config(size=8, num_timesteps=10)).eval()
    return fore, back


def _card(fore, back, sha="0" * 64) -> dict:
    """A card calibrated for the raw bound and, on 40 random images, for the ratio."""
    scores = {"bits_per_dim": Calibration.of(np.linspace(8, 10, 40), "fixture").to_dict((0.05,))}
    card = {"calibration": {"elbo": {"k": None, "scores": scores}}}
    normal = _images(12, 1)
    sets = {"noise": _images(12, 2), "flat": torch.full((12, 1, 8, 8), 200, dtype=torch.uint8)}
    return with_ratio(
        card,
        (kind_of(fore), fore),
        ("tiny-background", kind_of(back), back, sha),
        _images(40, 3),
        "40 random images",
        normal,
        sets,
        background_k=4,
    )


def test_ratio_score_is_the_foreground_bound_minus_the_background_bound(pair):
    fore, back = pair
    card = _card(fore, back)
    background = check_background(
        card, "tiny", (1, 8, 8), "tiny-background", kind_of(back), back, "0" * 64
    )
    scorer = CalibratedScorer.of(
        "tiny", kind_of(fore), fore, card, correction="ratio", fpr=0.25, background=background
    )
    images = _images(5, 9)
    judged = scorer.score(images, seeded_generator(4), max_batch=8)

    x = pixels_to_signed_unit(images)
    elbo = kind_of(fore).method_for(fore, "elbo")
    vlb = kind_of(back).method_for(back, "vlb_mc")
    with torch.no_grad():  # two separate bound calls, each from the same seed
        fore_bits = run_to_end(elbo.run(fore, x, None, seeded_generator(4), 8))
        back_bits = run_to_end(vlb.run(back, x, 4, seeded_generator(4), 8))
    fore_bits = fore_bits["total_bits_per_dim"].double().numpy()
    back_bits = back_bits["total_bits_per_dim"].double().numpy()
    assert judged.bits_per_dim == pytest.approx(fore_bits, abs=1e-6)
    assert judged.background_bits_per_dim == pytest.approx(back_bits, abs=1e-6)
    assert judged.score == pytest.approx(fore_bits - back_bits, abs=1e-6)
    ratio = card["calibration"]["elbo"]["scores"]["bits_per_dim_minus_background"]
    assert scorer.threshold == Calibration.of(ratio["normal_scores"], "").threshold(0.25)
    assert np.array_equal(judged.is_anomaly, judged.score > scorer.threshold)


def test_the_card_records_the_background_and_a_calibration_that_holds(pair):
    fore, back = pair
    card = _card(fore, back)
    reference = card["background"]
    assert (reference["name"], reference["method"], reference["k"]) == (
        "tiny-background",
        "vlb_mc",
        4,
    )
    assert reference["image_shape"] == [1, 8, 8] and reference["detection_normal_images"] == 12
    assert set(reference["detection"]["elbo"]) == {"noise", "flat"}
    ratio = card["calibration"]["elbo"]["scores"]["bits_per_dim_minus_background"]
    assert ratio["num_images"] == 40 and ratio["normal_scores"] == sorted(ratio["normal_scores"])
    # Calibration holds: at most fpr of the calibration images lie above its threshold.
    for fpr, threshold in ratio["thresholds"].items():
        assert np.mean(np.array(ratio["normal_scores"]) > threshold) <= float(fpr)
    assert "bits_per_dim" in card["calibration"]["elbo"]["scores"]  # the rest as it was


def test_a_background_with_other_weights_or_images_is_refused(pair, tiny_vae_config):
    fore, back = pair
    card = _card(fore, back, sha="a" * 64)
    with pytest.raises(BackgroundError, match="SHA-256 bbbbbbbbbbbbbbbb.*not the aaaa"):
        check_background(card, "tiny", (1, 8, 8), "bg", kind_of(back), back, "b" * 64)
    rgb = kind_of("vae").build(tiny_vae_config(channels=3, size=8))
    with pytest.raises(BackgroundError, match=r"reads images \(C, H, W\) = \(3, 8, 8\)"):
        check_background(card, "tiny", (1, 8, 8), "bg", kind_of(rgb), rgb, "a" * 64)
    with pytest.raises(ValueError, match="background reads images"):
        with_ratio(card, (kind_of(fore), fore), ("bg", kind_of(rgb), rgb, "a"), *_sets())


def _sets():
    return _images(4, 0), "four", _images(4, 1), {"noise": _images(4, 2)}


def test_ratio_without_a_background_names_the_correction(pair):
    fore, back = pair
    card = _card(fore, back)
    with pytest.raises(NoCalibrationError, match="^correction: .*'tiny-background' is not loaded"):
        CalibratedScorer.of("tiny", kind_of(fore), fore, card, correction="ratio")
    del card["background"]
    with pytest.raises(NoCalibrationError, match="^correction: .*names no background model"):
        CalibratedScorer.of("tiny", kind_of(fore), fore, card, correction="ratio")


def test_background_of_trains_the_foregrounds_config_on_mutated_images(tmp_path, tiny_vae_config):
    """--background-of RUN: the foreground's experiment and folder, mutated; training.json
    records the foreground's checkpoint and SHA-256; an interrupted run resumes to the same
    weights (the mutation generator is in the state)."""
    from models.core.config import TrainConfig
    from models.train import main
    from models.training.experiment import Experiment
    from models.training.trainer import Trainer

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_images(12, 5)):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i}.png")
    train = TrainConfig(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2, log_every=1)
    fore = Experiment("vae", tiny_vae_config(size=8), train)
    (tmp_path / "fore").mkdir()
    trainer = Trainer(fore, tmp_path / "fore", torch.device("cpu"), {"source": "folder"})
    trainer.export()
    record = json.loads((tmp_path / "fore" / "checkpoint" / "training.json").read_text())
    record["data"] = {"source": "folder", "folder": str(folder), "resized": False}
    (tmp_path / "fore" / "checkpoint" / "training.json").write_text(json.dumps(record))

    base = ["vae", "--background-of", str(tmp_path / "fore"), "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "straight"), "--mutation-rate", "0.5"]) == 0
    split = [*base, "--out", str(tmp_path / "split"), "--mutation-rate", "0.5"]
    assert main([*split, "--stop-after", "2"]) == 0 and main(split) == 0

    exported = tmp_path / "straight" / "checkpoint"
    training = json.loads((exported / "training.json").read_text())
    background = training["experiment"]["background"]
    assert background["mutation_rate"] == 0.5
    assert background["foreground_sha256"] == weights_sha256(
        weights_path(tmp_path / "fore" / "checkpoint")
    )
    assert training["data"]["folder"] == str(folder.resolve())
    assert training["experiment"]["model"] == record["experiment"]["model"]
    resumed = weights_path(tmp_path / "split" / "checkpoint")
    assert weights_sha256(resumed) == weights_sha256(weights_path(exported))


def test_background_of_refuses_a_config_of_another_image_shape(tmp_path, tiny_vae_config):
    from models.core.config import config_to_dict
    from models.train import main

    vae = kind_of("vae").build(tiny_vae_config(size=8))
    save_checkpoint(tmp_path / "fore", vae)
    experiment = {"kind": "vae", "model": config_to_dict(vae.config), "train": {}}
    (tmp_path / "fore" / "training.json").write_text(json.dumps({"experiment": experiment}))
    config = tmp_path / "rgb.json"
    rgb = config_to_dict(tiny_vae_config(channels=3, size=8))
    config.write_text(json.dumps({"model": rgb}))
    with pytest.raises(SystemExit):
        main(
            [
                "vae",
                "--background-of",
                str(tmp_path / "fore"),
                "--config",
                str(config),
                "--out",
                str(tmp_path / "bg"),
            ]
        )
