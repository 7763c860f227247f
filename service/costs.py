"""What a request costs before it runs: network evaluations times GFLOP per evaluation.

The estimate does two jobs. The batcher hands a free model lane to the cheapest waiting work
first, and long work gives its lane up between network calls while cheaper work waits
(:mod:`service.batching`). A synchronous endpoint refuses work past a ceiling with a 413 that
points to the task endpoints, which run it in the background.

What each kind of model evaluates, and how many times per image, is written once, in
``KINDS``; the GFLOP of one evaluation of each network on one image is counted by torch on
the loaded checkpoint, so the estimate follows the weights (a larger UNet costs more).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from service.errors import RequestError
from service.settings import Ceiling

if TYPE_CHECKING:  # torch is imported where FLOPs are counted: importing this stays cheap
    import torch

Operation = Literal["sample", "likelihood", "encode", "decode"]


@dataclass(frozen=True)
class Work:
    """What a request asks of one model, as far as its cost goes."""

    operation: Operation
    images: int  # images in, latents in, or images drawn
    method: str | None = None  # likelihood bound
    k: int | None = None  # IWAE samples or vlb_mc timesteps
    steps: int | None = None  # DDIM steps (sampling, DDPM encoding and decoding)
    sampler: str | None = None  # DDPM sampling: "ddim" or "ancestral"


@dataclass(frozen=True)
class Cost:
    gflop: float
    evaluations: dict[str, int]  # network -> evaluations on one image, over the whole request

    def __str__(self) -> str:
        counts = " and ".join(f"{n:,} {network}" for network, n in self.evaluations.items())
        return f"{self.gflop:,.0f} GFLOP ({counts} evaluations)"


# The kinds ----------------------------------------------------------------------------------


def _vae_evaluations(work: Work, num_timesteps: int) -> dict[str, int]:
    """Per image: the encoder for q(z|x), the decoder for each z (k of them for IWAE)."""
    if work.operation == "likelihood" and work.method == "iwae":
        assert work.k is not None, "iwae needs k"
        return {"encoder": 1, "decoder": work.k}
    if work.operation == "likelihood":  # the ELBO: one z per image
        return {"encoder": 1, "decoder": 1}
    if work.operation == "encode":
        return {"encoder": 1}
    return {"decoder": 1}  # sample, decode


def _ddpm_evaluations(work: Work, num_timesteps: int) -> dict[str, int]:
    """Per image: one UNet call per timestep evaluated or step taken."""
    if work.operation == "likelihood" and work.method == "vlb_exact":
        return {"unet": num_timesteps}
    if work.operation == "likelihood":  # vlb_mc: L_0 and k timesteps
        assert work.k is not None, "vlb_mc needs k"
        return {"unet": work.k + 1}
    if work.operation == "sample" and work.sampler == "ancestral":
        return {"unet": num_timesteps}
    steps = work.steps or 0
    return {"unet": 2 * steps if work.operation == "encode" else steps}  # invert + decode back


def _gflop(network: Callable[..., object], *inputs: torch.Tensor) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(*inputs)
    return counter.get_total_flops() / 1e9


def _vae_networks(vae: torch.nn.Module) -> dict[str, float]:
    import torch

    config, device = vae.config, next(vae.parameters()).device
    x = torch.zeros(1, config.image_channels, config.image_size, config.image_size, device=device)
    z = torch.zeros(1, config.latent_dim, device=device)
    return {"encoder": _gflop(vae.encode, x), "decoder": _gflop(vae.decode, z)}


def _ddpm_networks(ddpm: torch.nn.Module) -> dict[str, float]:
    import torch

    device = next(ddpm.parameters()).device
    x = torch.zeros(1, *ddpm.image_shape, device=device)
    return {"unet": _gflop(ddpm, x, torch.zeros(1, dtype=torch.long, device=device))}


@dataclass(frozen=True)
class Kind:
    # GFLOP of one evaluation of each network on one image, counted on a loaded model.
    networks: Callable[[torch.nn.Module], dict[str, float]]
    # Evaluations of each network per image for some work, given the diffusion's T.
    evaluations: Callable[[Work, int], dict[str, int]]


KINDS: dict[str, Kind] = {
    "vae": Kind(_vae_networks, _vae_evaluations),
    "ddpm": Kind(_ddpm_networks, _ddpm_evaluations),
}


# One served model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCosts:
    kind: str
    gflop_per_evaluation: dict[str, float]
    num_timesteps: int = 0  # diffusion models: T

    @classmethod
    def of(cls, kind: str, model: torch.nn.Module) -> ModelCosts:
        diffusion = getattr(model, "diffusion", None)
        timesteps = diffusion.num_timesteps if diffusion is not None else 0
        return cls(kind, KINDS[kind].networks(model), timesteps)

    def estimate(self, work: Work) -> Cost:
        per_image = KINDS[self.kind].evaluations(work, self.num_timesteps)
        evaluations = {network: n * work.images for network, n in per_image.items()}
        gflop = sum(self.gflop_per_evaluation[net] * n for net, n in evaluations.items())
        return Cost(gflop, evaluations)


# The synchronous ceiling --------------------------------------------------------------------


class RequestTooCostlyError(RequestError):
    """More work than one synchronous answer may carry: 413, as for a body too large."""

    status_code = 413


def refuse_past_ceiling(cost: Cost, ceiling: Ceiling, field: str, instead: str) -> None:
    """Raise :class:`RequestTooCostlyError` naming the cost, the ceiling and ``instead``
    (where the work can go) when ``cost`` is over the ceiling; a ceiling of 0 is none."""
    if 0 < ceiling.gflop < cost.gflop:
        raise RequestTooCostlyError(
            field,
            f"this request would cost about {cost}, more than the {ceiling.gflop:,.0f} GFLOP "
            f"a synchronous request may cost ({ceiling.variable}); {instead}",
        )
