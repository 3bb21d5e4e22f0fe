"""The rectified-flow training loss (paper §3.4, Esser et al. 2024) and how timesteps are drawn.

    x_t = (1 - t) x0 + t noise,    target v = noise - x0,    loss = w(t) * |v_theta(x_t, t) - v|^2

The reference implementation draws t uniformly from its 1000 inference sigmas with the static shift 3
(`sampler.diffsynth_schedule(1000)`) and weighs the loss with a Gaussian bump over t (`reference_timesteps`);
logit-normal t with weight 1 (SD3) is the other choice.
"""

from __future__ import annotations

import torch

from ..conditioning import Conditioning
from ..families.base import Velocity
from ..sampler import diffsynth_schedule
from .config import TimestepSampling

TRAIN_TIMESTEPS = 1000


def reference_timesteps() -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's 1000 training sigmas (shift 3, from 1 down to about 0.001) and their loss weights
    `w = 1000 (y - min y) / sum(y - min y)`, `y = exp(-2 ((1000 sigma - 500) / 1000)^2)` (mean weight 1)."""
    sigmas = diffsynth_schedule(TRAIN_TIMESTEPS)[0][:-1]
    bump = torch.exp(-2 * ((sigmas * TRAIN_TIMESTEPS - TRAIN_TIMESTEPS / 2) / TRAIN_TIMESTEPS) ** 2)
    bump = bump - bump.min()
    return sigmas, bump * (TRAIN_TIMESTEPS / bump.sum())


def draw_timestep(sampling: TimestepSampling, generator: torch.Generator) -> tuple[float, float]:
    """(t, loss weight) for one sample."""
    if sampling == "logit-normal":
        return torch.sigmoid(torch.randn((), generator=generator)).item(), 1.0
    sigmas, weights = reference_timesteps()
    index = int(torch.randint(TRAIN_TIMESTEPS, (), generator=generator))
    return sigmas[index].item(), weights[index].item()


def rectified_flow_loss(
    velocity: Velocity, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, weight: torch.Tensor,
    cond: Conditioning,
) -> torch.Tensor:
    """Weighted mean over the batch of the per-sample MSE between the predicted and the true velocity.

    `x0` and `noise` are packed latents (B, n, 4C); `t` and `weight` are (B,) float32.
    """
    s = t.view(-1, 1, 1)
    x_t = ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)
    v = velocity(x_t, t * TRAIN_TIMESTEPS, cond)
    per_sample = ((v.float() - (noise.float() - x0.float())) ** 2).mean(dim=(1, 2))
    return (weight * per_sample).mean()
