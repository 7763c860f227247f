"""The resumable Fréchet-distance measurement: chunks kept as feature sums, skipped on a rerun,
giving the distance that all the samples' features give at once."""

import json

import pytest
import torch

from models.core.config import ClassifierConfig
from models.diffusion.ddpm import DDPM
from models.eval.fd_resumable import (
    RESULTS,
    Plan,
    chunk_path,
    chunk_seed,
    draw_chunk,
    load_sums,
    measure_in_chunks,
    parse_options,
    save_sums,
)
from models.eval.frechet import FeatureStatistics, FeatureSums, frechet_distance
from models.kinds import kind_of
from models.nn.classifier import FashionClassifier
from models.training.classifier import extract_features


@pytest.fixture(scope="module")
def setting(tiny_ddpm_config):
    """A T = 20 DDPM and a classifier for 8x8 images, 30 reference and 30 floor images."""
    torch.manual_seed(0)
    model = DDPM(tiny_ddpm_config(size=8)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    classifier = FashionClassifier(
        ClassifierConfig(image_size=8, channels=(4, 8), norm_groups=2, feature_dim=5)
    ).eval()
    images = torch.randint(0, 256, (60, 1, 8, 8), dtype=torch.uint8)
    return model, classifier, images[:30], images[30:]


def _plan(kind, model, samples=7, chunk_size=3) -> Plan:
    samplers = {
        "ddim_2": kind.sample_options_for(model, "ddim", {"steps": 2, "eta": 0.0}),
        "ancestral_2": kind.sample_options_for(model, "ancestral", {"steps": 2}),
    }
    return Plan("weights", "classifier", samples, chunk_size, "30 random images", samplers)


def test_a_resumed_measurement_skips_finished_chunks_and_equals_one_run(setting, tmp_path):
    model, classifier, reference, floor = setting
    kind = kind_of(model)
    plan = _plan(kind, model)
    lines: list[str] = []
    measure_in_chunks(kind, model, classifier, plan, tmp_path / "a", reference, floor,
                      lines.append, max_chunks=2)  # fmt: skip
    partial = json.loads((tmp_path / "a" / RESULTS).read_text())["samplers"]
    assert [partial[s]["num_samples"] for s in plan.samplers] == [3, 3]  # they take turns
    assert "chunk 1/3" in lines[-1] and "2/6 chunks done" in lines[-1]
    first_chunk = chunk_path(tmp_path / "a", "ddim_2", 0).stat().st_mtime_ns
    resumed = measure_in_chunks(kind, model, classifier, plan, tmp_path / "a", reference, floor,
                                lines.append)  # fmt: skip
    assert "4 chunks to draw of 6" in lines[3]
    assert chunk_path(tmp_path / "a", "ddim_2", 0).stat().st_mtime_ns == first_chunk
    at_once = measure_in_chunks(kind, model, classifier, plan, tmp_path / "b", reference, floor,
                                lines.append)  # fmt: skip
    for sampler, options in plan.samplers.items():
        figures = resumed["samplers"][sampler]
        assert figures["complete"] and figures["num_samples"] == 7
        assert figures["frechet_distance"] == pytest.approx(
            at_once["samplers"][sampler]["frechet_distance"], rel=1e-12
        )
        # Independently: every chunk redrawn, all features together, torch.cov, the distance
        # (features chunk by chunk: a float32 convolution's rounding depends on the batch).
        features = torch.cat([extract_features(classifier, draw_chunk(
            kind, model, options, plan.chunk_rows(c), chunk_seed(sampler, c))) for c in range(3)
        ])  # fmt: skip
        direct = frechet_distance(
            FeatureStatistics.of(features),
            FeatureStatistics.of(extract_features(classifier, reference)),
        )
        assert figures["frechet_distance"] == pytest.approx(direct, rel=1e-9)
        floor_direct = frechet_distance(
            FeatureStatistics.of(extract_features(classifier, floor[:7])),
            FeatureStatistics.of(extract_features(classifier, reference)),
        )
        assert figures["real_data_floor"] == pytest.approx(floor_direct, rel=1e-9)


def test_a_folder_measured_with_other_options_is_refused(setting, tmp_path):
    model, classifier, reference, floor = setting
    kind = kind_of(model)
    measure_in_chunks(kind, model, classifier, _plan(kind, model, samples=3), tmp_path,
                      reference, floor, lambda line: None, max_chunks=1)  # fmt: skip
    with pytest.raises(SystemExit, match="other samples"):
        measure_in_chunks(kind, model, classifier, _plan(kind, model, samples=6), tmp_path,
                          reference, floor, lambda line: None)  # fmt: skip


def test_saved_sums_read_back_exactly(tmp_path):
    features = torch.randn(9, 4, generator=torch.Generator().manual_seed(0)).double()
    sums = FeatureSums.of(features)
    save_sums(tmp_path / "s" / "chunk.safetensors", sums, {"seconds": "1.0"})
    back = load_sums(tmp_path / "s" / "chunk.safetensors")
    assert back.count == 9
    assert torch.equal(back.total, sums.total)
    assert torch.equal(back.outer, sums.outer)


def test_sampler_options_are_parsed_as_numbers_where_they_are():
    assert parse_options(["sampler=ddim", "steps=50", "eta=0.5"]) == {
        "sampler": "ddim", "steps": 50, "eta": 0.5,
    }  # fmt: skip
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_options(["steps"])
