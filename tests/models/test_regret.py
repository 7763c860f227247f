"""The Likelihood Regret of a VAE (Xiao et al. 2020; models/vae/regret.py): never negative,
equal to the gap between the amortised and the optimised -ELBO as an independent per-image
optimisation computes them, deterministic for a seed, zero without steps; offered through
the kind interface by the VAE and refused, naming the model, by a DDPM."""

from __future__ import annotations

import math

import pytest
import torch

from models.core.card import calibrations_in
from models.core.config import VAEConfig
from models.core.noise import seeded_generator
from models.core.progressive import run_to_end
from models.eval.plan import NoCalibrationError, Scoring
from models.eval.regret import measure_regret, with_regret_calibration
from models.kinds import OPTIMISED_TOTAL_BITS_PER_DIM, OptionError, kind_of
from models.vae.model import VAE
from models.vae.regret import likelihood_regret

STEPS, RATE = 12, 0.05


@pytest.fixture(scope="module")
def vae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(latent_dim=4, channels=(8, 16), num_mixtures=2)).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    """Five images on the 8-bit grid in [-1, 1]: (5, 1, 28, 28)."""
    pixels = torch.randint(0, 256, (5, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    return pixels.float() / 127.5 - 1.0


def _generators(n: int, seed: int = 7) -> list[torch.Generator]:
    """One generator per image, each seeded on its own: row i's draw is row i's alone."""
    return [seeded_generator(seed + i) for i in range(n)]


def _independent_regret(vae: VAE, image: torch.Tensor, seed: int, steps: int, rate: float):
    """(amortised, best) -ELBO in nats of one image (1, C, H, W), written out here: the draw
    eps ~ N(0, I) from its own generator, the Gaussian KL of Kingma & Welling 2013 App. B
    summed by hand, log p(x|z) from the decoder, Adam on this image's (mean, log-variance)
    alone, the lowest -ELBO over every iterate, the encoder's included."""
    with torch.no_grad():
        posterior = vae.encode(image)
    eps = torch.randn((1, vae.config.latent_dim), generator=seeded_generator(seed))
    mean = posterior.mean.clone().requires_grad_(True)
    logvar = posterior.logvar.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([mean, logvar], lr=rate)

    def negative_elbo() -> torch.Tensor:
        z = mean + torch.exp(0.5 * logvar) * eps
        kl = 0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar).sum()
        return kl - vae.decode(z).log_prob_nats(image).sum()

    values = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = negative_elbo()
        values.append(loss.item())
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        values.append(negative_elbo().item())
    return values[0], min(values)


def test_regret_is_never_negative_and_is_the_independently_computed_elbo_gap(vae, x):
    n = len(x)
    found = likelihood_regret(vae, x, _generators(n), STEPS, RATE)
    assert (found.regret_nats >= 0).all()
    assert (found.optimised_nats <= found.amortised_nats).all()
    for i in range(n):
        amortised, best = _independent_regret(vae, x[i : i + 1], 7 + i, STEPS, RATE)
        assert found.amortised_nats[i].item() == pytest.approx(amortised, rel=1e-5, abs=1e-3)
        assert found.optimised_nats[i].item() == pytest.approx(best, rel=1e-4, abs=1e-2)
        expected_bits = (amortised - best) / (vae.num_dims * math.log(2.0))
        assert found.regret_bits_per_dim[i].item() == pytest.approx(expected_bits, abs=1e-5)
    assert (found.regret_nats > 0).any(), "twelve Adam steps improved no image's ELBO"


def test_the_amortised_bound_is_the_served_elbo_with_the_same_seed(vae, x):
    found = likelihood_regret(vae, x, _generators(len(x)), STEPS, RATE)
    with torch.no_grad():
        elbo = vae.negative_elbo(x, _generators(len(x)))
    torch.testing.assert_close(found.amortised_nats, elbo.total_nats, rtol=1e-6, atol=1e-3)


def test_regret_is_deterministic_for_a_seed_and_changes_with_it(vae, x):
    first = likelihood_regret(vae, x, seeded_generator(3), STEPS, RATE)
    again = likelihood_regret(vae, x, seeded_generator(3), STEPS, RATE)
    other = likelihood_regret(vae, x, seeded_generator(4), STEPS, RATE)
    assert torch.equal(first.optimised_nats, again.optimised_nats)
    assert torch.equal(first.amortised_nats, again.amortised_nats)
    assert not torch.equal(first.optimised_nats, other.optimised_nats)


def test_zero_steps_give_exactly_zero_regret(vae, x):
    found = likelihood_regret(vae, x, seeded_generator(0), steps=0)
    assert torch.equal(found.regret_nats, torch.zeros(len(x)))
    assert found.steps == 0


def test_more_steps_never_give_a_smaller_regret(vae, x):
    """The first n steps of a longer run are the same iterates, and the best is kept."""
    regrets = [
        likelihood_regret(vae, x, seeded_generator(5), steps, RATE).regret_nats
        for steps in (0, 1, 4, 12)
    ]
    for fewer, more in zip(regrets, regrets[1:], strict=False):
        assert (more >= fewer).all()


def test_an_images_regret_does_not_depend_on_its_batch_or_chunking(vae, x):
    generators = _generators(len(x))
    together = likelihood_regret(vae, x, generators, STEPS, RATE, max_batch=256)
    in_twos = likelihood_regret(vae, x, _generators(len(x)), STEPS, RATE, max_batch=2)
    alone = likelihood_regret(vae, x[3:4], [seeded_generator(7 + 3)], STEPS, RATE)
    torch.testing.assert_close(together.optimised_nats, in_twos.optimised_nats)
    torch.testing.assert_close(together.optimised_nats[3:4], alone.optimised_nats)


def test_steps_outside_the_range_are_refused(vae, x):
    with pytest.raises(ValueError, match="steps must be in 0..500"):
        likelihood_regret(vae, x, seeded_generator(0), steps=501)


# Through the kind interface and the scoring plan ---------------------------------------------


def test_the_vae_kind_offers_the_regret_of_its_elbo_through_the_interface(vae, x):
    kind = kind_of(vae)
    regret = kind.likelihood_regret(vae)
    assert regret is not None and regret.bound == "elbo" and regret.steps_range == (0, 500)
    terms = run_to_end(regret.run(vae, x, 3, regret.learning_rate, seeded_generator(0), 64))
    direct = likelihood_regret(vae, x, seeded_generator(0), 3, regret.learning_rate)
    torch.testing.assert_close(terms[OPTIMISED_TOTAL_BITS_PER_DIM], direct.optimised_bits_per_dim)
    from models.kinds import Work

    evaluations = kind.evaluations(vae, Work("regret", 2, "elbo", steps=30))
    assert evaluations == {"encoder": 1, "decoder": 61}


def _card_with_regret(vae, steps: int = STEPS) -> dict:
    kind = kind_of(vae)
    pixels = torch.randint(0, 256, (24, 1, 28, 28), generator=torch.Generator().manual_seed(2))
    record = measure_regret(
        kind.likelihood_regret(vae),
        vae,
        pixels[:8],
        {"noise": pixels[8:12]},
        pixels[12:],
        "fixture",
        seeded_generator(0),
        steps=steps,
        learning_rate=RATE,
    )
    return with_regret_calibration({}, "elbo", record)


def test_a_card_records_the_regret_calibration_and_reads_it_back(vae):
    card = _card_with_regret(vae)
    entry = calibrations_in(card)["elbo"]
    assert entry.likelihood_regret.steps == STEPS and entry.likelihood_regret.learning_rate == RATE
    assert entry.likelihood_regret.calibration.num_images == 12
    assert min(entry.likelihood_regret.calibration.normal_scores) >= 0
    assert set(entry.likelihood_regret.detection) == {"noise"}
    section = {"calibration": card["calibration"]}
    assert calibrations_in(section)["elbo"].to_dict() == card["calibration"]["elbo"]


def test_the_regret_plan_runs_the_calibrated_steps_and_scores_the_gap(vae, x):
    from models.eval.calibrated import CalibratedScorer

    card = _card_with_regret(vae)
    scoring = Scoring("tiny", kind_of(vae), vae, card)
    plan = scoring.plan(correction="regret", fpr=0.25)
    assert plan.method.name == "elbo" and plan.regret_steps == STEPS
    assert plan.regret_learning_rate == RATE
    pixels = ((x + 1.0) * 127.5).round().to(torch.uint8)
    scorer = CalibratedScorer.of("tiny", kind_of(vae), vae, card, correction="regret", fpr=0.25)
    judged = scorer.score(pixels, seeded_generator(9), 64)
    direct = likelihood_regret(vae, x, seeded_generator(9), STEPS, RATE)
    assert judged.score == pytest.approx(direct.regret_bits_per_dim.double().numpy(), abs=1e-6)
    assert (judged.score >= 0).all()
    assert judged.bits_per_dim - judged.optimised_bits_per_dim == pytest.approx(judged.score)


def test_the_regret_plan_refuses_other_steps_and_other_bounds(vae):
    scoring = Scoring("tiny", kind_of(vae), vae, _card_with_regret(vae))
    with pytest.raises(OptionError, match=f"used {STEPS} steps") as error:
        scoring.plan(correction="regret", fpr=0.25, regret_steps=STEPS + 1)
    assert error.value.field == "regret_steps"
    with pytest.raises(OptionError, match="refines its 'elbo' bound") as error:
        scoring.plan(method="iwae", correction="regret", fpr=0.25)
    assert error.value.field == "method"
    with pytest.raises(OptionError, match="only correction 'regret' takes regret_steps"):
        scoring.plan(correction="none", fpr=0.25, regret_steps=STEPS)


def test_a_card_without_a_regret_calibration_is_a_no_calibration_error_saying_how(vae):
    scoring = Scoring("tiny", kind_of(vae), vae, {"calibration": {}})
    with pytest.raises(NoCalibrationError, match="python -m models.eval.regret") as error:
        scoring.plan(correction="regret")
    assert error.value.field == "correction"


def test_a_ddpm_offers_no_regret_and_the_plan_says_which_model_lacks_what(tiny_ddpm):
    kind = kind_of(tiny_ddpm)
    assert kind.likelihood_regret(tiny_ddpm) is None
    scoring = Scoring("my-ddpm", kind, tiny_ddpm, {"calibration": {}})
    with pytest.raises(OptionError, match="my-ddpm model offers no likelihood regret") as error:
        scoring.plan(correction="regret")
    assert not isinstance(error.value, NoCalibrationError)  # a 400, not a 409
    assert "no amortised posterior" in str(error.value) and error.value.field == "correction"
