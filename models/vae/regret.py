"""Likelihood Regret of a VAE: how much the ELBO of one image improves when its posterior is
fitted to that image alone rather than amortised by the encoder.

Xiao, Yan & Amit 2020, "Likelihood Regret: An Out-of-Distribution Detection Score for
Variational Auto-encoder" (NeurIPS 2020, arXiv 2003.02977): an image the VAE was trained on
is encoded about as well as it can be, so re-fitting its posterior gains little; an image
unlike the training data gains more, whatever its raw likelihood (simple images that a VAE
over-rates, the failure of Nalisnick et al. 2019, are not singled out by it).

    regret(x) = ELBO(x; q*_x) - ELBO(x; q_phi(.|x)) >= 0        nats, or / (D ln 2) bits/dim

**Which posterior is optimised.** Xiao et al. re-fit the encoder's *weights* on the single
image. We optimise the image's posterior *parameters* (mean, log-variance) of q(z|x) instead,
starting from the encoder's output: the local variational parameters of Cremer, Li & Duvenaud
2018 ("Inference Suboptimality in Variational Autoencoders", arXiv 1801.03558), refined from
the amortised ones as in semi-amortised VI (Kim et al. 2018, arXiv 1802.02550). The ELBO of x
depends on the encoder's weights only through the (mean, log-variance) they give x, so both
optimise the same objective over the same posteriors and have the same optimum; the
parameters are 2Z numbers per image instead of a copy of the encoder, every image in a batch
is optimised independently in one decoder call per step (Adam is element-wise), and there is
no backward pass through the encoder. The path differs (Adam in another parameterisation), so
finite-step values are not Xiao et al.'s.

**Bounded and deterministic.** A fixed number of Adam steps at a fixed learning rate, and one
fixed reparameterisation draw eps ~ N(0, I) per image, drawn once from the request's
generators and reused at every step (common random numbers): the objective is a deterministic
function of (mean, log-variance), so the same seed gives the same regret. The draw is the one
:meth:`models.vae.model.VAE.negative_elbo` makes with the same generators, so the amortised
-ELBO here is the served ``elbo`` bound. Every iterate's -ELBO is evaluated on that draw and
the best one is kept, the amortised one included: the optimised -ELBO is never above the
amortised one and the regret never negative, by construction; zero steps give zero regret.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.core.likelihood import nats_to_bits_per_dim, standard_normal_kl_nats
from models.core.noise import Generators, randn_rows
from models.core.progressive import Progressive, run_to_end
from models.vae.model import VAE

# Adam steps a request may ask for: the cost is one decoder call forward and one backward per
# step, so 500 steps are about 1,000 decoder evaluations per image.
REGRET_STEPS_RANGE = (0, 500)
DEFAULT_REGRET_STEPS = 30
# Adam's step size on (mean, log-variance), not tuned: Adam moves each parameter by about the
# step size per step, so 30 steps can move a posterior mean by about 1.5 prior standard
# deviations, enough to leave the encoder's answer and not so much that one draw is overfitted.
DEFAULT_REGRET_LEARNING_RATE = 0.05
_LOGVAR_RANGE = (-30.0, 20.0)  # the encoder's clamp (models.vae.model.VAE.encode)


@dataclass(frozen=True)
class LikelihoodRegret:
    """-ELBO of B images with the encoder's posterior and with the best per-image posterior
    found, in nats summed over the D dimensions: both (B,), optimised <= amortised."""

    amortised_nats: torch.Tensor
    optimised_nats: torch.Tensor
    num_dims: int
    steps: int
    learning_rate: float

    @property
    def regret_nats(self) -> torch.Tensor:
        """ELBO(q*) - ELBO(q_phi) = amortised - optimised -ELBO: (B,) >= 0."""
        return self.amortised_nats - self.optimised_nats

    @property
    def amortised_bits_per_dim(self) -> torch.Tensor:
        return nats_to_bits_per_dim(self.amortised_nats, self.num_dims)

    @property
    def optimised_bits_per_dim(self) -> torch.Tensor:
        return nats_to_bits_per_dim(self.optimised_nats, self.num_dims)

    @property
    def regret_bits_per_dim(self) -> torch.Tensor:
        return nats_to_bits_per_dim(self.regret_nats, self.num_dims)


def negative_elbo_at(
    vae: VAE, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """-ELBO in nats (B,) of x (B, C, H, W) with q(z|x) = N(mean, exp(logvar)) (B, Z), its
    reconstruction term estimated with the one draw z = mean + exp(logvar / 2) * eps (B, Z)
    and its KL to N(0, I) in closed form (Kingma & Welling 2013, Eq. 10 and Appendix B)."""
    logvar = logvar.clamp(*_LOGVAR_RANGE)
    z = mean + torch.exp(0.5 * logvar) * eps  # (B, Z)
    log_px_z = vae._log_likelihood_nats(x, z.unsqueeze(0))[0]  # (B,)
    return standard_normal_kl_nats(mean, logvar).sum(dim=1) - log_px_z


def likelihood_regret_progressive(
    vae: VAE,
    x: torch.Tensor,
    generators: Generators,
    steps: int = DEFAULT_REGRET_STEPS,
    learning_rate: float = DEFAULT_REGRET_LEARNING_RATE,
    max_batch: int = 256,
) -> Progressive[LikelihoodRegret]:
    """The Likelihood Regret of x (B, C, H, W) in [-1, 1]: ``steps`` Adam steps at
    ``learning_rate`` on each image's (mean, log-variance), from the encoder's, about
    ``max_batch`` images optimised together; yields (decoder calls done, total) after each.

    The draw eps (B, Z) comes from ``generators`` (one, or one per row) exactly as the served
    ``elbo`` draws it, once, before the images are split into chunks."""
    low, high = REGRET_STEPS_RANGE
    if not low <= steps <= high:
        raise ValueError(f"steps must be in {low}..{high}, got {steps}")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    with torch.no_grad():
        posterior = vae.encode(x)
    eps = randn_rows(posterior.mean.shape, generators, posterior.mean.device)  # (B, Z)
    rows = max(1, max_batch)
    chunks = list(range(0, x.shape[0], rows))
    total = len(chunks) * (steps + 1)
    amortised, optimised = [], []
    for index, start in enumerate(chunks):
        part = slice(start, start + rows)
        mean, logvar = posterior.mean[part], posterior.logvar[part]
        loop = _optimise(vae, x[part], mean, logvar, eps[part], steps, learning_rate)
        while True:
            try:
                done, _ = next(loop)
            except StopIteration as end:
                first, best = end.value
                break
            yield index * (steps + 1) + done, total
        amortised.append(first)
        optimised.append(best)
    empty = x.new_zeros(0)
    return LikelihoodRegret(
        torch.cat(amortised) if amortised else empty,
        torch.cat(optimised) if optimised else empty,
        vae.num_dims,
        steps,
        learning_rate,
    )


def likelihood_regret(
    vae: VAE,
    x: torch.Tensor,
    generators: Generators,
    steps: int = DEFAULT_REGRET_STEPS,
    learning_rate: float = DEFAULT_REGRET_LEARNING_RATE,
    max_batch: int = 256,
) -> LikelihoodRegret:
    """:func:`likelihood_regret_progressive`, run to the end."""
    return run_to_end(
        likelihood_regret_progressive(vae, x, generators, steps, learning_rate, max_batch)
    )


def _optimise(
    vae: VAE,
    x: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor,
    steps: int,
    learning_rate: float,
) -> Progressive[tuple[torch.Tensor, torch.Tensor]]:
    """(amortised -ELBO, best -ELBO over the iterates) (B,) of one chunk, detached.

    Gradients flow to (mean, log-variance) only (``torch.autograd.grad`` computes no weight
    gradient), and grad mode is set inside each step, as the caller may resume this loop under
    ``torch.no_grad``."""
    mean = mean.detach().clone().requires_grad_(True)
    logvar = logvar.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([mean, logvar], lr=learning_rate)
    with torch.set_grad_enabled(steps > 0):
        loss = negative_elbo_at(vae, x, mean, logvar, eps)  # (B,)
    amortised = loss.detach()
    best = amortised.clone()
    yield 1, steps + 1
    for step in range(steps):
        with torch.enable_grad():
            # Each image's loss depends on its own parameters only: the sum's gradient is
            # every image's own gradient, and Adam's update is element-wise.
            mean.grad, logvar.grad = torch.autograd.grad(loss.sum(), (mean, logvar))
        optimiser.step()
        with torch.set_grad_enabled(step + 1 < steps):
            loss = negative_elbo_at(vae, x, mean, logvar, eps)
        best = torch.minimum(best, loss.detach())
        yield step + 2, steps + 1
    return amortised, best
