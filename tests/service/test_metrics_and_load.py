"""Prometheus metrics move as requests are served; concurrent single-image requests share
model calls and none is dropped."""

import dataclasses
import statistics

import pytest
from service_testing import concurrently, metric_value, png_b64

N_CONCURRENT = 16


def test_concurrent_single_image_scores_share_calls_and_all_succeed(client, test_images):
    images = [png_b64(image) for image in test_images[:N_CONCURRENT]]
    labels = {"model": "vae", "operation": "likelihood_elbo"}
    calls_before = metric_value(client, "elbo_serve_batch_items_count", **labels)
    items_before = metric_value(client, "elbo_serve_batch_items_sum", **labels)
    scored_before = metric_value(client, "elbo_serve_images_scored_total", model="vae")
    responses = concurrently(
        [
            lambda image=image: client.post(
                "/score", json={"model": "vae", "images": [image], "fpr": 0.25}
            )
            for image in images
        ]
    )
    assert [r.status_code for r in responses] == [200] * N_CONCURRENT
    calls = metric_value(client, "elbo_serve_batch_items_count", **labels) - calls_before
    items = metric_value(client, "elbo_serve_batch_items_sum", **labels) - items_before
    assert items == N_CONCURRENT
    assert 1 <= calls < N_CONCURRENT
    scored = metric_value(client, "elbo_serve_images_scored_total", model="vae") - scored_before
    assert scored == N_CONCURRENT


def test_sampling_moves_the_generation_metrics(client):
    generated = metric_value(client, "elbo_serve_images_generated_total", model="ddpm")
    steps = metric_value(client, "elbo_serve_denoising_steps_total", operation="sample")
    rows = metric_value(client, "elbo_serve_denoising_rows_total", operation="sample")
    seconds = metric_value(client, "elbo_serve_inference_seconds_count", model="ddpm")
    client.post("/sample", json={"model": "ddpm", "n": 3, "steps": 4, "seed": 1})
    assert metric_value(client, "elbo_serve_images_generated_total", model="ddpm") == generated + 3
    after = metric_value(client, "elbo_serve_denoising_steps_total", operation="sample")
    assert after == steps + 4
    rows_after = metric_value(client, "elbo_serve_denoising_rows_total", operation="sample")
    assert rows_after == rows + 3 * 4  # three images through four steps
    assert metric_value(client, "elbo_serve_inference_seconds_count", model="ddpm") == seconds + 1


def test_likelihood_and_anomaly_metrics_move(client):
    bpd = metric_value(client, "elbo_serve_likelihood_bits_per_dim_count", model="vae")
    flagged = metric_value(client, "elbo_serve_anomalies_flagged_total", model="vae")
    noise = [[[(i * 37 + j * 91) % 256 for j in range(28)] for i in range(28)]] * 2
    response = client.post("/score", json={"model": "vae", "images": noise, "fpr": 0.25}).json()
    newly_flagged = sum(result["is_anomaly"] for result in response["results"])
    assert metric_value(client, "elbo_serve_likelihood_bits_per_dim_count", model="vae") == bpd + 2
    assert (
        metric_value(client, "elbo_serve_anomalies_flagged_total", model="vae")
        == flagged + newly_flagged
    )


def test_load_and_warm_up_are_recorded_with_bentomls_own_metrics(client):
    text = client.get("/metrics").text
    assert metric_value(client, "elbo_serve_checkpoint_load_seconds", model="vae") > 0
    assert metric_value(client, "elbo_serve_warmup_seconds") > 0
    assert "bentoml_service_request_total" in text or "bentoml_api_server" in text


def test_calibration_gauges_carry_each_served_cards_normal_scores(client, served_checkpoints):
    """For every served model and calibrated method, the mean, standard deviation and count of
    its card's held-out normal bounds, labelled as the bits/dim histogram labels served images
    (so that PromQL matches them one to one)."""
    from prometheus_client.parser import text_string_to_metric_families

    from models.core.checkpoints import read_model_card

    expected = {}
    for name, directory in served_checkpoints.items():
        for method, entry in read_model_card(directory)["calibration"].items():
            normal = entry["scores"]["bits_per_dim"]["normal_scores"]
            expected[name, method] = (
                statistics.fmean(normal),
                statistics.stdev(normal),
                len(normal),
            )
    assert expected

    def labelled(name: str) -> dict[tuple[str, str], float]:
        families = text_string_to_metric_families(client.get("/metrics").text)
        return {
            (s.labels["model"], s.labels["method"]): s.value
            for family in families
            for s in family.samples
            if s.name == name and s.labels["model"] in served_checkpoints  # not other tests'
        }

    means = labelled("elbo_serve_calibration_mean_bits_per_dim")
    stds = labelled("elbo_serve_calibration_std_bits_per_dim")
    images = labelled("elbo_serve_calibration_images")
    assert means.keys() == stds.keys() == images.keys() == expected.keys()
    for key, (mean, std, count) in expected.items():
        assert means[key] == pytest.approx(mean, abs=1e-9), key
        assert stds[key] == pytest.approx(std, abs=1e-9), key
        assert images[key] == count, key
    # the warm-up bounded an image per model with its default method: the same labels
    from _bentoml_sdk.service import get_current_service

    bounded = labelled("elbo_serve_likelihood_bits_per_dim_count")
    for name, served in get_current_service().calls.repository.items():
        default = (name, served.method(None).name)
        assert default in bounded and default in means, (default, sorted(bounded))


@pytest.fixture
def uncalibrated_vae(client, monkeypatch):
    """The running service instance, its VAE card stripped of calibration for one test."""
    from _bentoml_sdk.service import get_current_service

    served = get_current_service().calls.repository._served
    vae = served["vae"]
    card = {key: value for key, value in vae.checkpoint.card.items() if key != "calibration"}
    checkpoint = dataclasses.replace(vae.checkpoint, card=card)
    monkeypatch.setitem(served, "vae", dataclasses.replace(vae, checkpoint=checkpoint))
    return client


def test_score_without_calibration_is_a_409_naming_it(uncalibrated_vae):
    blank = [[0] * 28] * 28
    response = uncalibrated_vae.post("/score", json={"model": "vae", "images": [blank]})
    assert response.status_code == 409
    assert "no calibration for method 'elbo'" in response.json()["error"]
    likelihood = uncalibrated_vae.post("/likelihood", json={"model": "vae", "images": [blank]})
    assert likelihood.status_code == 200
