import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.core.card import OUTLIER_SETS as CARD_OUTLIER_SETS
from models.core.card import ModelCard
from models.core.checkpoints import save_checkpoint
from models.core.config import ClassifierConfig, DDPMConfig, DiffusionConfig, UNetConfig, VAEConfig
from models.diffusion.ddpm import DDPM
from models.evaluate import EvaluationSizes, main
from models.kinds import kind_of
from models.nn.classifier import FashionClassifier
from models.report import markdown
from models.vae.model import VAE

OUTLIER_SETS = set(CARD_OUTLIER_SETS)
ROOT = Path(__file__).resolve().parents[2]
TINY_SIZES = [
    "--likelihood-images", "6", "--iwae-images", "2", "--iwae-k", "4", "--score-iwae-k", "2",
    "--score-mc-k", "4", "--fd-samples", "12", "--ddim-steps", "3", "--ancestral-samples", "3",
    "--anomaly-images", "8", "--anomaly-exact-images", "4", "--calibration-images", "20",
    "--calibration-exact-images", "20", "--batch-size", "8", "--threads", "1",
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
    assert table.count("| tiny-vae | elbo") == 4  # two detection rows, two calibration rows


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
    _check_common_sections(card, tmp_path, ["vlb_exact", "vlb_mc"], ["ddim_3", "ancestral_10"])
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
