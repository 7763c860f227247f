"""Which timesteps a DDIM loop visits: ours, or a diffusers scheduler's ``set_timesteps`` rules.

A loop of S steps is a list of (t, t_prev) pairs, from the noisiest t down; t_prev = -1 stands
for x_0, whose alpha-bar is 1 (or alpha-bar_0 for a diffusers ``DDIMScheduler`` with
``set_alpha_to_one`` false). Our own checkpoints space S indices evenly over 0..T-1 and step to
the next one. A diffusers folder follows its scheduler config exactly, so that our DDIM equals
its ``DDIMScheduler`` loop: ``timestep_spacing`` ("linspace", "leading", "trailing"; Lin et al.
2023, arXiv 2305.08891, Table 2) with ``steps_offset``, and each step going to
t - T // S, as ``DDIMScheduler.step`` computes its previous timestep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Spacing = Literal["even", "linspace", "leading", "trailing"]


def spaced_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """``steps`` increasing timestep indices from 0 to T-1, evenly spaced: (steps,).

    The last one is always T-1, so even a one-step sampler starts from the true prior.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps}, got {steps}")
    return torch.linspace(num_timesteps - 1, 0, steps).round().long().flip(0)


@dataclass(frozen=True)
class DDIMTimesteps:
    """How DDIM steps through a chain of T timesteps, and how it treats a clipped x_0.

    ``keep_model_eps``: after clipping the predicted x_0, step with the network's own eps
    (diffusers' ``use_clipped_model_output=False``) rather than the eps re-derived from the
    clipped x_0 (Glide's choice, and ours). ``decode_clips``: /decode clips x_0 like sampling
    (a diffusers scheduler's loop does whenever its ``clip_sample`` is set); ours decodes
    unclipped, so that decoding retraces the inversion (DDIM Sec. 5.4).
    """

    spacing: Spacing = "even"
    steps_offset: int = 0
    final_alpha_bar_is_one: bool = True
    keep_model_eps: bool = False
    decode_clips: bool = False

    def pairs(self, num_timesteps: int, steps: int) -> list[tuple[int, int]]:
        """The (t, t_prev) of each of the ``steps`` steps, noisiest first."""
        if not 1 <= steps <= num_timesteps:
            raise ValueError(f"steps must be in 1..{num_timesteps}, got {steps}")
        if self.spacing == "even":
            times = spaced_timesteps(num_timesteps, steps).flip(0).tolist()  # T-1 ... 0
            return [(t, times[i + 1] if i + 1 < steps else -1) for i, t in enumerate(times)]
        times = self._diffusers_timesteps(num_timesteps, steps)
        if max(times) >= num_timesteps:
            raise ValueError(
                f"{steps} steps with {self.spacing} spacing and steps_offset {self.steps_offset} "
                f"would start at timestep {max(times)}, past T - 1 = {num_timesteps - 1}; "
                f"take at most {self.max_steps(num_timesteps)}"
            )
        ratio = num_timesteps // steps
        return [(t, t - ratio) for t in times]

    def _diffusers_timesteps(self, num_timesteps: int, steps: int) -> list[int]:
        """``DDIMScheduler.set_timesteps(steps)``'s timesteps, in float64 as its numpy does."""
        if self.spacing == "linspace":
            times = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round()
            return times.long().flip(0).tolist()
        if self.spacing == "leading":
            ratio = num_timesteps // steps
            return [i * ratio + self.steps_offset for i in reversed(range(steps))]
        ratio = num_timesteps / steps  # trailing
        times = torch.arange(num_timesteps, 0, -ratio, dtype=torch.float64).round().long() - 1
        return times.tolist()

    def max_steps(self, num_timesteps: int) -> int:
        """The most steps whose timesteps all lie in 0..T-1 (T, unless steps_offset shifts
        the leading spacing's last timestep past T - 1)."""
        for steps in range(num_timesteps, 0, -1):
            if self.spacing == "even" or max(self._diffusers_timesteps(num_timesteps, steps)) < (
                num_timesteps
            ):
                return steps
        return 1
