"""The DDPM variational bound per image, term by term (Ho et al. 2020 Eq. 5; Luo 2022 Eq. 58):

    -log p(x_0) <= L_T + sum_{t=2}^{T} L_{t-1} + L_0
      L_T     = KL(q(x_T | x_0) || N(0, I))                    prior matching (closed form)
      L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))  denoising matching
      L_0     = -log p(x_0 | x_1)                              reconstruction (discrete decoder)

Two estimators of the denoising sum: every one of the T-1 terms (:func:`vlb_exact`), or k
stratified timesteps (:func:`vlb_monte_carlo`, unbiased, with a standard error). Each term
is itself an expectation over x_t ~ q(x_t | x_0), estimated with one draw, so even the "exact"
sum is random; it is exact in that no timestep is skipped. All values are codelengths in nats,
summed over the D dimensions of an image; ``*_bits_per_dim`` divide by D ln 2. Each estimator
also has a ``*_progressive`` form that yields after every network call
(:mod:`models.core.progressive`).

Per dimension: every term is a KL between diagonal Gaussians or a discretized-Gaussian NLL, so
it factorises over the D dimensions, and each estimator is a fixed weighted sum of terms. With
``per_dim=True`` the estimators also return that same weighted sum kept per dimension,
``total_nats_per_dim`` (B, C, H, W), from the same draws: it sums over (C, H, W) to
``total_nats`` (to float rounding), which is what an anomaly map shows (:mod:`models.eval.maps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.core.likelihood import nats_to_bits_per_dim
from models.core.noise import Generators, rand_rows, randn_rows
from models.core.progressive import ProgressCallback, Progressive, run_to_end
from models.diffusion.gaussian import GaussianDiffusion
from models.diffusion.samplers import Denoiser


@dataclass(frozen=True)
class DiffusionBound:
    """Per-image terms of the bound, each (B,) in nats summed over dimensions."""

    prior_nats: torch.Tensor  # L_T
    denoising_nats: torch.Tensor  # sum_{t=2}^{T} L_{t-1}
    reconstruction_nats: torch.Tensor  # L_0
    num_dims: int
    # Standard error of denoising_nats over the timestep sampling; None for the full sum.
    denoising_stderr_nats: torch.Tensor | None = None
    # The Monte-Carlo estimator's per-stratum sums |S_j| mean_j, (B, S), adding up to
    # denoising_nats; stratum j covers the timesteps between stratum_edges' j-th and j+1-th.
    denoising_band_nats: torch.Tensor | None = None
    # The same estimate per dimension (B, C, H, W), summing to total_nats; when asked for.
    total_nats_per_dim: torch.Tensor | None = None

    @property
    def total_nats(self) -> torch.Tensor:
        return self.prior_nats + self.denoising_nats + self.reconstruction_nats

    @property
    def total_bits_per_dim(self) -> torch.Tensor:
        return nats_to_bits_per_dim(self.total_nats, self.num_dims)

    def bits_per_dim(self, nats: torch.Tensor) -> torch.Tensor:
        """Any of this bound's nats fields in bits per dimension."""
        return nats_to_bits_per_dim(nats, self.num_dims)


def vlb_terms_nats(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_start: torch.Tensor,
    t: torch.Tensor,
    generator: Generators,
    max_batch: int = 256,
    clip_denoised: bool = True,
    on_rows: ProgressCallback | None = None,
) -> torch.Tensor:
    """Bound terms for every (row of t, image): x_start (B, C, H, W), t (n, B) -> (n, B) nats.

    Network calls carry about ``max_batch`` images (at least one row of t). Noise for each row
    of t is drawn per image group from ``generator``, in row order.
    """
    loop = vlb_terms_nats_progressive(
        diffusion, model, x_start, t, generator, max_batch, clip_denoised
    )
    return run_to_end(loop, on_rows)


@torch.no_grad()
def vlb_terms_nats_progressive(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_start: torch.Tensor,
    t: torch.Tensor,
    generator: Generators,
    max_batch: int = 256,
    clip_denoised: bool = True,
) -> Progressive[torch.Tensor]:
    """:func:`vlb_terms_nats`, yielding (rows of t done, n) after every network call."""
    terms, _ = yield from _vlb_terms_progressive(
        diffusion, model, x_start, t, generator, max_batch, clip_denoised
    )
    return terms


@torch.no_grad()
def _vlb_terms_progressive(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_start: torch.Tensor,
    t: torch.Tensor,
    generator: Generators,
    max_batch: int,
    clip_denoised: bool,
    row_weights: torch.Tensor | None = None,
) -> Progressive[tuple[torch.Tensor, torch.Tensor | None]]:
    """The terms (n, B) of :func:`vlb_terms_nats_progressive`, and with ``row_weights`` (n,)
    also sum_r w_r L_{t_r} per dimension, (B, C, H, W) float64 nats, from the same draws."""
    n, b = t.shape
    rows_per_call = max(1, max_batch // b)
    terms = torch.empty(n, b, dtype=torch.float64)
    weighted = None if row_weights is None else torch.zeros(x_start.shape, dtype=torch.float64)
    for start in range(0, n, rows_per_call):
        t_chunk = t[start : start + rows_per_call]  # (r, B)
        r = t_chunk.shape[0]
        noise = torch.cat([randn_rows(x_start.shape, generator, x_start.device) for _ in range(r)])
        x0 = x_start.repeat(r, *([1] * (x_start.ndim - 1)))  # (r*B, C, H, W), row-major in t
        t_flat = t_chunk.reshape(-1).to(x_start.device)
        x_t = diffusion.q_sample(x0, t_flat, noise)
        output = model(x_t, t_flat)
        per_dim = diffusion.vlb_term_nats_per_dim(output, x0, x_t, t_flat, clip_denoised)
        terms[start : start + r] = per_dim.flatten(1).sum(dim=1).reshape(r, b).double().cpu()
        if weighted is not None and row_weights is not None:
            w = row_weights[start : start + r].double().reshape(r, 1, 1, 1, 1)
            weighted += (w * per_dim.reshape(r, *x_start.shape).double().cpu()).sum(dim=0)
        yield start + r, n
    return terms, weighted


def vlb_exact(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_start: torch.Tensor,
    generator: Generators,
    max_batch: int = 256,
    clip_denoised: bool = True,
    on_rows: ProgressCallback | None = None,
    per_dim: bool = False,
) -> DiffusionBound:
    """The bound with all T terms: T network evaluations per image, batched over timesteps."""
    loop = vlb_exact_progressive(
        diffusion, model, x_start, generator, max_batch, clip_denoised, per_dim
    )
    return run_to_end(loop, on_rows)


def vlb_exact_progressive(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_start: torch.Tensor,
    generator: Generators,
    max_batch: int = 256,
    clip_denoised: bool = True,
    per_dim: bool = False,
) -> Progressive[DiffusionBound]:
    """:func:`vlb_exact`, yielding (timesteps done, T) after every network call; with
    ``per_dim`` also the bound per dimension (every term with weight 1)."""
    b = x_start.shape[0]
    all_t = torch.arange(diffusion.num_timesteps).unsqueeze(1).expand(-1, b)  # (T, B)
    weights = torch.ones(diffusion.num_timesteps, dtype=torch.float64) if per_dim else None
    terms, weighted = yield from _vlb_terms_progressive(
        diffusion, model, x_start, all_t, generator, max_batch, clip_denoised, weights
    )
    return DiffusionBound(
        prior_nats=diffusion.prior_kl_nats(x_start).double().cpu(),
        denoising_nats=terms[1:].sum(dim=0),
        reconstruction_nats=terms[0],
        num_dims=x_start[0].numel(),
        total_nats_per_dim=_with_prior(diffusion, x_start, weighted),
    )


def _with_prior(
    diffusion: GaussianDiffusion, x_start: torch.Tensor, weighted: torch.Tensor | None
) -> torch.Tensor | None:
    """L_T per dimension added to the weighted terms per dimension (B, C, H, W), if any."""
    if weighted is None:
        return None
    return weighted + diffusion.prior_kl_nats_per_dim(x_start).double().cpu()


def stratum_edges(first: int, end: int, num_strata: int) -> torch.Tensor:
    """num_strata + 1 strictly increasing edges splitting first..end-1, spaced geometrically.

    The bound's terms fall by orders of magnitude over the first few timesteps (Nichol &
    Dhariwal 2021, Fig. 2), so small t get strata of their own and the long flat tail is
    sampled coarsely: for T = 1000 and 10 strata the edges are 1, 2, 4, 8, 16, 32, 63, ...
    """
    count = end - first
    if not 1 <= num_strata <= count:
        raise ValueError(f"need 1..{count} strata, got {num_strata}")
    geometric = (first - 1) + (count + 1) ** (torch.arange(num_strata + 1) / num_strata)
    edges = [first]
    for j in range(1, num_strata + 1):
        room_left = end - (num_strata - j)  # leave at least one timestep per later stratum
        edges.append(int(min(max(round(geometric[j].item()), edges[-1] + 1), room_left)))
    return torch.tensor(edges)


def vlb_monte_carlo(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_start: torch.Tensor,
    k: int,
    generator: Generators,
    max_batch: int = 256,
    clip_denoised: bool = True,
    on_rows: ProgressCallback | None = None,
    per_dim: bool = False,
) -> DiffusionBound:
    """Unbiased estimate of the bound from k stratified timesteps per image (k + 1 rows of
    network work per image).

    L_T is exact and L_0 is evaluated directly. The T-1 denoising terms are split into
    k // 2 geometrically spaced strata (:func:`stratum_edges`) with two uniform draws each
    (three in the last when k is odd): sum_t L_t ~= sum_j |S_j| mean_j. Two draws per stratum
    give an unbiased variance estimate, sum_j |S_j|^2 s_j^2 / n_j (Cochran 1977, Eq. 5.6).
    """
    loop = vlb_monte_carlo_progressive(
        diffusion, model, x_start, k, generator, max_batch, clip_denoised, per_dim
    )
    return run_to_end(loop, on_rows)


@torch.no_grad()
def vlb_monte_carlo_progressive(
    diffusion: GaussianDiffusion,
    model: Denoiser,
    x_start: torch.Tensor,
    k: int,
    generator: Generators,
    max_batch: int = 256,
    clip_denoised: bool = True,
    per_dim: bool = False,
) -> Progressive[DiffusionBound]:
    """:func:`vlb_monte_carlo`, yielding (rows done, k + 1) after every network call; with
    ``per_dim`` also the estimate per dimension: L_0 and L_T per dimension, and each drawn
    denoising term per dimension with its row's weight |S_j| / n_j, the weights that make
    the stratified sum (B,) from the same draws."""
    num_timesteps = diffusion.num_timesteps
    if not 2 <= k <= 2 * (num_timesteps - 1):
        raise ValueError(f"k must be in 2..{2 * (num_timesteps - 1)}, got {k}")
    b = x_start.shape[0]
    num_strata = k // 2
    edges = stratum_edges(1, num_timesteps, num_strata)
    sizes = edges[1:] - edges[:-1]  # (S,)
    draws = torch.full((num_strata,), 2)
    draws[-1] += k % 2
    stratum_of_row = torch.repeat_interleave(torch.arange(num_strata), draws)  # (k,)
    u = rand_rows((b, k), generator).double().T  # (k, B), uniform per draw and image
    t_draws = edges[stratum_of_row, None] + torch.floor(u * sizes[stratum_of_row, None]).long()
    t_all = torch.cat([torch.zeros(1, b, dtype=torch.long), t_draws])  # row 0: L_0
    weights = None
    if per_dim:  # row 0 (L_0) counts once, a draw of stratum j |S_j| / n_j times
        per_draw = sizes[stratum_of_row].double() / draws[stratum_of_row]  # (k,)
        weights = torch.cat([torch.ones(1, dtype=torch.float64), per_draw])
    terms, weighted = yield from _vlb_terms_progressive(
        diffusion, model, x_start, t_all, generator, max_batch, clip_denoised, weights
    )
    denoising = torch.zeros(b, dtype=torch.float64)
    bands = torch.zeros(b, num_strata, dtype=torch.float64)
    variance = torch.zeros(b, dtype=torch.float64)
    for j, rows in enumerate(torch.split(terms[1:], draws.tolist())):  # rows: (n_j, B)
        bands[:, j] = sizes[j] * rows.mean(dim=0)
        denoising += bands[:, j]
        variance += sizes[j] ** 2 * rows.var(dim=0, unbiased=True) / rows.shape[0]
    return DiffusionBound(
        prior_nats=diffusion.prior_kl_nats(x_start).double().cpu(),
        denoising_nats=denoising,
        reconstruction_nats=terms[0],
        num_dims=x_start[0].numel(),
        denoising_stderr_nats=variance.sqrt(),
        denoising_band_nats=bands,
        total_nats_per_dim=_with_prior(diffusion, x_start, weighted),
    )
