import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import betabinom

from models.core.card import OUTLIER_SETS as CARD_OUTLIER_SETS
from models.core.card import SCORE_KINDS, ModelCard
from models.core.checkpoints import save_checkpoint
from models.core.config import ClassifierConfig, DDPMConfig, DiffusionConfig, UNetConfig, VAEConfig
from models.diffusion.ddpm import DDPM
from models.evaluate import EvaluationSizes, main
from models.kinds import kind_of
from models.nn.classifier import FashionClassifier
from models.report import markdown
from models.vae.model import VAE
from models.vae.regret import DEFAULT_REGRET_STEPS

OUTLIER_SETS = set(CARD_OUTLIER_SETS)
# The raw bound, and the bound minus each codec a correction subtracts (PNG, WebP lossless).
CALIBRATED_SCORES = {"bits_per_dim", "bits_per_dim_minus_png", "bits_per_dim_minus_webp"}
ROOT = Path(__file__).resolve().parents[2]
TINY_SIZES = [
    "--likelihood-images", "6", "--iwae-images", "2", "--iwae-k", "4", "--score-iwae-k", "2",
    "--score-mc-k", "4", "--fd-samples", "12", "--ddim-steps", "3", "--ancestral-samples", "3",
    "--anomaly-images", "8", "--anomaly-exact-images", "4", "--calibration-images", "20",
    "--calibration-exact-images", "20", "--batch-size", "8", "--threads", "1",
    "--regret-images", "8", "--regret-calibration-images", "20",
]  # fmt: skip


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ClassifierConfig(channels=(4, 8), norm_groups=2, feature_dim=16)
    directory = tmp_path_factory.mktemp("classifier")
    save_checkpoint(directory, FashionClassifier(config))
    return directory


def _evaluate(model, tmp_path, classifier_dir, capsys) -> dict:
    torch.manual_seed(0)
    save_checkpoint(tmp_path, model)
    assert main([str(tmp_path), "--classifier", str(classifier_dir), *TINY_SIZES]) == 0
    printed = capsys.readouterr().out
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert "card:" in printed
    return card, printed


def _check_recommendation(card, method):
    """The card recommends the correction with the best mean AUROC over its outlier sets,
    recomputed here from the card's own per-set figures."""
    sets = card["anomaly"]["methods"][method]["sets"].values()
    columns = {"none": "raw", "png": "minus_png"}
    mean = {c: sum(s[column]["auroc"] for s in sets) / len(sets) for c, column in columns.items()}
    for codec in next(iter(sets)).get("minus_codecs", {}):
        mean[codec] = sum(s["minus_codecs"][codec]["auroc"] for s in sets) / len(sets)
    recommended = card["anomaly"]["recommended"][method]
    assert recommended["mean_auroc"] == pytest.approx(mean)
    assert mean[recommended["correction"]] == max(mean.values())


def _check_common_sections(card, tmp_path, methods, samplers):
    assert set(card["anomaly"]["methods"]) == set(methods)
    for name in methods:
        detection = card["anomaly"]["methods"][name]
        assert set(detection["sets"]) == OUTLIER_SETS
        for figures in detection["sets"].values():
            for kind in ("raw", "minus_png"):
                assert 0.0 <= figures[kind]["auroc"] <= 1.0
                assert 0.0 <= figures[kind]["fpr_at_95_tpr"] <= 1.0
        for kind in ("bits_per_dim", "bits_per_dim_minus_png"):
            calibration = card["calibration"][name]["scores"][kind]
            assert calibration["num_images"] == 20
            assert len(calibration["normal_scores"]) == 20
            # 20 held-out images resolve a 5% false-positive rate but not 1%
            assert set(calibration["thresholds"]) == {"0.05"}
            assert set(calibration["observed_fpr_on_other_normal_images"]) == {"0.05"}
        _check_recommendation(card, name)
    assert set(card["sample_quality"]["samplers"]) == set(samplers)
    for figures in card["sample_quality"]["samplers"].values():
        assert figures["frechet_distance"] >= 0 and figures["real_data_floor"] >= 0
        with Image.open(tmp_path / figures["grid"]) as grid:
            assert grid.mode == "L" and grid.width > 28
    assert card["evaluation"]["sizes"]["anomaly_images"] == 8
    assert card["evaluation"]["seconds"] > 0 and card["checkpoint"]["parameters"] > 0


def test_vae_card_holds_every_figure(tmp_path, classifier_dir, capsys):
    vae = VAE(VAEConfig(latent_dim=4, channels=(8, 16), num_mixtures=2))
    card, printed = _evaluate(vae, tmp_path, classifier_dir, capsys)
    likelihood = ModelCard.from_dict(card).likelihood
    elbo, (iwae,) = likelihood.headline, likelihood.others
    assert elbo.method == "elbo" and elbo.test_images == 6
    total = elbo.terms_bits_per_dim["reconstruction"] + elbo.terms_bits_per_dim["KL"]
    assert elbo.bits_per_dim.mean == pytest.approx(total, rel=1e-6)
    assert iwae.method == "iwae" and iwae.k == 4 and iwae.test_images == 2
    assert card["calibration"]["iwae"]["k"] == 2 and card["calibration"]["elbo"]["k"] is None
    _check_common_sections(card, tmp_path, ["elbo", "iwae"], ["decoder_mean", "pixel_sample"])
    assert "-ELBO, 6 test images" in printed
    table = markdown({"tiny-vae": card})
    assert "| tiny-vae | -ELBO | 6 |" in table and "| tiny-vae | IWAE, k = 4 | 2 |" in table
    # two detection rows (raw, minus PNG), a calibration row per calibrated score
    calibrated = card["calibration"]["elbo"]["scores"]
    assert set(calibrated) == CALIBRATED_SCORES
    # and the Likelihood Regret's detection and calibration rows
    assert table.count("| tiny-vae | elbo") == 2 + len(calibrated) + 2
    assert f"| tiny-vae | elbo, likelihood regret ({DEFAULT_REGRET_STEPS} steps) | 8 |" in table
    # the Likelihood Regret of the ELBO, at the kind's steps, against every outlier set
    regret = ModelCard.from_dict(card).calibration["elbo"].likelihood_regret
    assert regret is not None and regret.steps == DEFAULT_REGRET_STEPS
    assert regret.calibration.num_images == 20 and min(regret.calibration.normal_scores) >= 0
    assert set(regret.detection) == OUTLIER_SETS and regret.detection_normal_images == 8
    assert "likelihood_regret" not in card["calibration"]["iwae"]


def test_ddpm_card_splits_the_exact_bound_into_its_terms(tmp_path, classifier_dir, capsys):
    unet = UNetConfig(
        base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
        num_heads=1,
    )  # fmt: skip
    ddpm = DDPM(DDPMConfig(unet, DiffusionConfig(num_timesteps=10, variance="learned_range")))
    card, printed = _evaluate(ddpm, tmp_path, classifier_dir, capsys)
    likelihood = ModelCard.from_dict(card).likelihood
    exact_bound = likelihood.headline
    assert exact_bound.label == "exact VLB, T = 10" and exact_bound.test_images == 6
    assert set(exact_bound.terms_bits_per_dim) == {"L_T", "sum of L_t", "L_0"}
    terms = sum(exact_bound.terms_bits_per_dim.values())
    assert exact_bound.bits_per_dim.mean == pytest.approx(terms, rel=1e-9)
    assert likelihood.others == ()
    # The exact-bound anomaly scores of the first test images reuse the likelihood pass.
    exact = card["anomaly"]["methods"]["vlb_exact"]
    assert exact["normal_images"] == 4 and card["calibration"]["vlb_mc"]["k"] == 4
    _check_common_sections(
        card,
        tmp_path,
        ["vlb_exact", "vlb_mc"],
        ["ddim_3", "ddim_3_eta0", "ancestral_3", "ancestral_10"],
    )
    assert "exact VLB, T = 10, 6 test images" in printed


def test_evaluation_sizes_reject_negative_counts_and_overlap_with_the_calibration_half():
    with pytest.raises(ValueError, match="iwae_k"):
        EvaluationSizes(iwae_k=-1)
    with pytest.raises(ValueError, match="anomaly_images"):
        EvaluationSizes(anomaly_images=6000)


def test_evaluation_measures_through_the_models_kind(tmp_path, classifier_dir, capsys, monkeypatch):
    vae = VAE(VAEConfig(latent_dim=4, channels=(8, 16), num_mixtures=2))
    kind = type(kind_of(vae))
    calls = []
    for hook in ("likelihood_report", "evaluation_samplers", "score_methods"):
        original = getattr(kind, hook)

        def spy(self, model, ctx, _original=original, _hook=hook):
            calls.append((_hook, type(model).__name__))
            return _original(self, model, ctx)

        monkeypatch.setattr(kind, hook, spy)
    card, _ = _evaluate(vae, tmp_path, classifier_dir, capsys)
    hooks = ["likelihood_report", "evaluation_samplers", "score_methods"]
    assert calls == [(hook, "VAE") for hook in hooks]
    assert card["kind"] == kind.name
    assert ModelCard.from_dict(card).likelihood.headline.method == kind.headline_method


def test_evaluating_a_model_that_is_not_servable_names_the_problem(classifier_dir):
    with pytest.raises(SystemExit, match="not servable"):
        main([str(classifier_dir), "--classifier", str(classifier_dir), *TINY_SIZES])


# Your own folders ----------------------------------------------------------------------------

FOLDER_SIZES = [
    "--likelihood-images", "40", "--iwae-images", "2", "--iwae-k", "4", "--score-iwae-k", "2",
    "--score-mc-k", "4", "--fd-samples", "4", "--ddim-steps", "3", "--ancestral-samples", "2",
    "--anomaly-images", "40", "--anomaly-exact-images", "8", "--calibration-images", "40",
    "--calibration-exact-images", "20", "--batch-size", "40", "--threads", "1",
    "--regret-images", "8", "--regret-calibration-images", "20",
]  # fmt: skip
NORMAL_IMAGES = 80  # 40 measure, 40 held out


def _blobs(n: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth coloured Gaussian blobs on a dark background: (n, 16, 16, 3) uint8."""
    yy, xx = np.mgrid[0:16, 0:16]
    centres = rng.uniform(4, 12, size=(n, 2))
    widths = rng.uniform(2, 4, size=n)
    colours = rng.uniform(80, 255, size=(n, 3))
    blobs = np.exp(
        -((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2)
        / (2 * widths[:, None, None] ** 2)
    )
    return (20 + blobs[..., None] * colours[:, None, None, :]).clip(0, 255).astype(np.uint8)


def _write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    paths = []
    for i, image in enumerate(images):
        path = folder / ("part_b" if i % 2 else "part_a") / f"{i:03d}.png"  # read recursively
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A folder of normal images (blobs) and one of outliers (uniform noise), RGB 16x16."""
    rng = np.random.default_rng(0)
    normal, noise = tmp_path_factory.mktemp("blobs"), tmp_path_factory.mktemp("noise")
    paths = _write_pngs(normal, _blobs(NORMAL_IMAGES, rng))
    _write_pngs(noise, rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8))
    return normal, noise, paths


def _rgb_vae() -> VAE:
    torch.manual_seed(0)
    config = VAEConfig(image_channels=3, image_size=16, latent_dim=4, channels=(8, 16))
    return VAE(dataclasses.replace(config, num_mixtures=2))


def _evaluate_folder(model, run: Path, args: list[str], capsys) -> tuple[ModelCard, str]:
    checkpoint = run / "checkpoint"
    save_checkpoint(checkpoint, model)
    assert main([str(checkpoint), *args, *FOLDER_SIZES]) == 0
    printed = capsys.readouterr().out
    stored = json.loads((checkpoint / "model_card.json").read_text())
    card = ModelCard.from_dict(stored)
    assert card.to_dict() == stored  # the folder card's sections round-trip too
    return card, printed


def _check_calibration_honours_its_target(card: ModelCard, other_normal_images: int) -> None:
    for calibration in card.calibration.values():
        assert set(calibration.scores) == CALIBRATED_SCORES
        for fitted in calibration.scores.values():
            assert "held-out normal images of" in fitted.source
            assert set(fitted.thresholds) == {"0.05"}  # 40 or 20 images do not resolve 1%
            observed = fitted.observed_fpr_on_other_normal_images
            assert observed is not None and set(observed) == set(fitted.thresholds)
            scores = np.asarray(fitted.normal_scores)
            for fpr, threshold in fitted.thresholds.items():
                above = int((scores > threshold).sum())
                assert above / len(scores) <= float(fpr)  # on the held-out images
                # On other normal images (exchangeable with the held-out ones), the rate past
                # a threshold with `above` of n scores over it is Beta(above + 1, n - above)
                # distributed, so the count of m images is beta-binomial: its 99.9% quantile.
                m = other_normal_images
                limit = betabinom.ppf(0.999, m, above + 1, len(scores) - above) / m
                assert observed[fpr] <= limit


def _check_servable(checkpoint: Path, card: ModelCard) -> None:
    """The checkpoint directory serves as it is, and /score flags by the card's thresholds."""
    from service.repository import load_repository  # validates the card's calibration

    repository = load_repository({"x": checkpoint}, "cpu")
    assert list(repository) == ["x"]
    scoring = repository["x"].scoring
    for method, calibration in card.calibration.items():
        for correction, kind in SCORE_KINDS.items():
            if kind not in calibration.scores:  # the ratio: no background model here
                continue
            served = scoring.plan(method, correction=correction, fpr=0.05).threshold
            expected = calibration.scores[kind].thresholds["0.05"]
            assert served == pytest.approx(expected, abs=1e-6)


def test_vae_on_a_folder_calibrates_and_detects_the_outlier_folder(tmp_path, folders, capsys):
    normal, noise, _ = folders
    card, printed = _evaluate_folder(
        _rgb_vae(), tmp_path, ["--normal", str(normal), "--outliers", f"noise={noise}"], capsys
    )
    assert card.sample_quality is None and card.sample_grids is not None
    assert "Fashion-MNIST classifier" in card.sample_grids.not_measured
    assert set(card.sample_grids.grids) == {"decoder_mean", "pixel_sample"}
    for grid in card.sample_grids.grids.values():
        with Image.open(tmp_path / "checkpoint" / grid) as image:
            assert image.mode == "RGB" and image.width > 16
    assert card.likelihood.headline.test_images == 40
    assert card.anomaly.outlier_sets == ("noise",)
    for method in card.anomaly.methods.values():
        assert method.normal_images == 40 and set(method.sets) == {"noise"}
        noise_figures = method.sets["noise"]  # an untrained model: any AUROC, but measured
        assert 0 <= noise_figures.raw.auroc <= 1 and 0 <= noise_figures.minus_png.auroc <= 1
    data = card.data
    assert data is not None and data.normal_folder == str(normal)
    assert data.normal_images == NORMAL_IMAGES
    assert (data.measured.images, data.held_out.images) == (40, 40)
    assert data.measured.paths_sha256 != data.held_out.paths_sha256
    assert data.outliers["noise"].folder == str(noise) and data.outliers["noise"].images == 40
    assert any("may include training images" in w for w in data.warnings)
    assert "warning: no " in printed and "AUROC elbo vs noise" in printed
    _check_calibration_honours_its_target(card, other_normal_images=40)
    _check_servable(tmp_path / "checkpoint", card)
    assert "| noise AUROC / FPR95 |" in markdown({"own": card})


def test_folder_evaluation_prefers_the_runs_validation_images(tmp_path, folders, capsys):
    normal, _, paths = folders
    validation = [p.relative_to(normal).as_posix() for p in paths[::2]]  # 40 of 80
    (tmp_path / "validation.txt").write_text("\n".join(validation) + "\n")
    card, _ = _evaluate_folder(_rgb_vae(), tmp_path, ["--normal", str(normal)], capsys)
    data = card.data
    assert data is not None and "validation.txt holds out from training" in data.split
    assert (data.measured.images, data.held_out.images) == (20, 20)
    assert not any("training images" in w for w in data.warnings)
    # No outlier folder: the corruptions of the normal images, not Fashion's digits.
    synthetic = {"gaussian_noise", "inverted", "blurred", "uniform_noise"}
    assert set(card.anomaly.outlier_sets) == synthetic and data.outliers == {}
    for method in card.anomaly.methods.values():
        assert set(method.sets) == synthetic
    _check_calibration_honours_its_target(card, other_normal_images=20)


def test_a_validation_list_only_partly_in_the_normal_folder_is_refused(tmp_path, folders):
    normal, _, paths = folders
    (tmp_path / "validation.txt").write_text(f"{paths[0]}\nelsewhere/missing.png\n")
    save_checkpoint(tmp_path / "checkpoint", _rgb_vae())
    with pytest.raises(SystemExit, match="1 of the 2 validation images are not in"):
        main([str(tmp_path / "checkpoint"), "--normal", str(normal), *FOLDER_SIZES])


def test_ddpm_on_a_folder_calibrates_and_serves(tmp_path, folders, capsys):
    normal, noise, _ = folders
    torch.manual_seed(0)
    unet = UNetConfig(
        image_channels=3, image_size=16, base_channels=8, channel_mults=(1, 2),
        num_res_blocks=1, attention_resolutions=(), num_heads=1,
    )  # fmt: skip
    ddpm = DDPM(DDPMConfig(unet, DiffusionConfig(num_timesteps=10, variance="learned_range")))
    card, _ = _evaluate_folder(
        ddpm, tmp_path, ["--normal", str(normal), "--outliers", str(noise)], capsys
    )
    assert card.sample_quality is None and card.sample_grids is not None
    assert set(card.sample_grids.grids) == {"ddim_3", "ddim_3_eta0", "ancestral_3", "ancestral_10"}
    assert card.anomaly.outlier_sets == (noise.name,)
    exact = card.anomaly.methods["vlb_exact"]
    assert exact.normal_images == 8 and set(exact.sets) == {noise.name}
    assert card.calibration["vlb_exact"].scores["bits_per_dim"].num_images == 20
    _check_calibration_honours_its_target(card, other_normal_images=8)
    _check_servable(tmp_path / "checkpoint", card)
