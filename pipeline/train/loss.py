"""The rectified-flow training loss (paper §3.4, Esser et al. 2024) and how timesteps are drawn.

    x_t = (1 - t) x0 + t noise,    target v = noise - x0,    loss = w(t) * |v_theta(x_t, t) - v|^2

The reference implementation draws t uniformly from its family's 1000 training sigmas and weighs the loss with a
Gaussian bump over t (`reference_timesteps`): for FLUX the static shift 3 (`sampler.diffsynth_schedule(1000)`), for
Qwen-Image its own schedule (an exponential shift with mu 0.8, stretched to end at 0.02; `qwen_image_sigmas`).
Logit-normal t with weight 1 (SD3) is the other choice, the same for every family, optionally shifted towards high
noise as SD3 shifts it for larger images (`shift_timestep`).
"""

from __future__ import annotations

import math

import torch

from ..conditioning import Conditioning
from ..families.base import Velocity
from ..families.defaults import FLUX, FamilyDefaults
from ..sampler import diffsynth_schedule
from .config import TimestepSampling

TRAIN_TIMESTEPS = 1000
QWEN_IMAGE_MU = 0.8  # the reference's Qwen-Image shift when no image length is given (its trainer gives none)
QWEN_IMAGE_SHIFT_TERMINAL = 0.02  # the last of its sigmas


def qwen_image_sigmas(steps: int) -> torch.Tensor:
    """The reference's Qwen-Image sigmas (decreasing, length `steps`): s linear from 1 towards 0 without the 0,
    `sigma = e^mu / (e^mu + 1/s - 1)` with mu 0.8, then `1 - sigma` scaled so the last sigma is 0.02."""
    s = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    sigmas = math.exp(QWEN_IMAGE_MU) / (math.exp(QWEN_IMAGE_MU) + (1 / s - 1))
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - QWEN_IMAGE_SHIFT_TERMINAL))


def reference_timesteps(family: FamilyDefaults = FLUX) -> tuple[torch.Tensor, torch.Tensor]:
    """The family's 1000 training sigmas in the reference (FLUX: shift 3, from 1 down to about 0.001; Qwen-Image:
    `qwen_image_sigmas`) and their loss weights `w = 1000 (y - min y) / sum(y - min y)`,
    `y = exp(-2 ((1000 sigma - 500) / 1000)^2)` (mean weight 1)."""
    if family.reference_training == "qwen-image":
        sigmas = qwen_image_sigmas(TRAIN_TIMESTEPS)
    else:
        sigmas = diffsynth_schedule(TRAIN_TIMESTEPS)[0][:-1]
    bump = torch.exp(-2 * ((sigmas * TRAIN_TIMESTEPS - TRAIN_TIMESTEPS / 2) / TRAIN_TIMESTEPS) ** 2)
    bump = bump - bump.min()
    return sigmas, bump * (TRAIN_TIMESTEPS / bump.sum())


def shift_timestep(t: float, shift: float) -> float:
    """`shift t / (1 + (shift - 1) t)`: the sampler's static shift (diffusers' `shift`) applied to a drawn t."""
    return shift * t / (1 + (shift - 1) * t)


def draw_timestep(sampling: TimestepSampling, generator: torch.Generator, family: FamilyDefaults = FLUX,
                  shift: float = 1.0) -> tuple[float, float]:
    """(t, loss weight) for one sample of a model of `family`; logit-normal t is shifted by `shift`."""
    if sampling == "logit-normal":
        return shift_timestep(torch.sigmoid(torch.randn((), generator=generator)).item(), shift), 1.0
    sigmas, weights = reference_timesteps(family)
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
