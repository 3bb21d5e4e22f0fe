"""The sampler: noise, schedules, and the Euler loop with true classifier-free guidance.

Small pure functions in the manner of black-forest-labs/flux `sampling.py`, the same for every model family:
the family's transformer pass comes in as a `Velocity` (tokens, timestep, conditioning) -> velocity, with the
regional mask of the conditioning in every block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import numpy as np
import torch

from .attention_backends import Attention, attention_form
from .conditioning import Conditioning, batched
from .entity_lora import active_tokens
from .families.base import Velocity

# The sampler's schedules, named for what they are (a layout's `schedule` names them too, and adds `reference`, the
# family's reference schedule): the model's own scheduler config (diffusers' schedule) and the static shift 3 (FLUX's
# reference)
Schedule = Literal["scheduler", "shift3"]
StepCallback = Callable[[int, int], None]
Fuse = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (v, x, sigma) -> fused v (inpainting)


def get_noise(seed: int, channels: int, latent_height: int, latent_width: int, dtype: torch.dtype) -> torch.Tensor:
    """`randn(1, C, H/f, W/f)` from a CPU generator: the same start as diffusers and the reference on any device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, channels, latent_height, latent_width), generator=generator, dtype=dtype)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens, row-major over 2x2 patches."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Inverse of `pack`."""
    b, _, d = tokens.shape
    patches = tokens.view(b, latent_height // 2, latent_width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, d // 4, latent_height, latent_width)


def flux_schedule(steps: int, n_image_tokens: int, scheduler_config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The schedule of the model's own scheduler config, as diffusers' FluxPipeline and QwenImagePipeline run
    `FlowMatchEulerDiscreteScheduler` (the sampler's `scheduler` schedule; a layout's `schedule: scheduler`, for every
    family).

    Sigmas linear from 1 to 1/steps, shifted: with `use_dynamic_shifting` by the resolution-dependent mu (linear in
    the image tokens between `base_image_seq_len` and `max_image_seq_len`), `e^mu / (e^mu + 1/s - 1)` (or
    `mu / (mu + 1/s - 1)` for `time_shift_type: linear`), else by the static `shift`; then stretched so the last one
    is `shift_terminal` where the config has one (Qwen-Image: 0.02). Computed in float32 in diffusers' order of
    operations, so the values are diffusers' bit for bit (tests/test_generate.py).

    Returns (sigmas with a final 0, length steps + 1; timesteps in 0..1000, length steps).
    """
    config = scheduler_config
    unsupported = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")
                   if config.get(k)]
    if unsupported:
        raise ValueError(f"scheduler config options not supported by eligen's sampler: {', '.join(unsupported)}")
    s = np.linspace(1.0, 1 / steps, steps).astype(np.float32)
    if config.get("use_dynamic_shifting", False):
        base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
        m = (max_shift - base_shift) / (max_len - base_len)
        mu = n_image_tokens * m + (base_shift - m * base_len)
        if config.get("time_shift_type", "exponential") == "linear":
            sigmas = mu / (mu + (1 / s - 1) ** 1.0)
        else:
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
    else:
        shift = config.get("shift", 1.0)
        sigmas = shift * s / (1 + (shift - 1) * s)
    if config.get("shift_terminal"):
        one_minus = 1 - sigmas
        sigmas = 1 - (one_minus / (one_minus[-1] / (1 - config["shift_terminal"])))
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    timesteps = sigmas * config.get("num_train_timesteps", 1000)
    return torch.cat([sigmas, torch.zeros(1)]), timesteps


def diffsynth_schedule(steps: int, shift: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX's reference schedule (the sampler's `shift3`): s linear from 1 to 0.003/1.002,
    sigma = shift*s / (1 + (shift-1)*s)."""
    sigma_min, sigma_max = 0.003 / 1.002, 1.0
    s = torch.linspace(sigma_min + (sigma_max - sigma_min) * 1.0, sigma_min, steps)
    sigmas = shift * s / (1 + (shift - 1) * s)
    return torch.cat([sigmas, torch.zeros(1)]), sigmas * 1000


def get_schedule(schedule: Schedule, steps: int, n_image_tokens: int, scheduler_config: dict) -> tuple:
    """(sigmas, timesteps) of the named schedule."""
    if schedule == "shift3":
        return diffsynth_schedule(steps)
    return flux_schedule(steps, n_image_tokens, scheduler_config)


def branches(positive: Conditioning, negative: Conditioning | None, n_image: int, attention: Attention = "auto",
             batch_cfg: bool = False) -> list[Conditioning]:
    """The transformer passes of one step (CFG's two branches as one batch with `batch_cfg`), masks in the form
    `attention` runs, built once for the whole loop."""
    passes = [positive] if negative is None else [positive, negative]
    if batch_cfg and len(passes) > 1:
        passes = [batched(passes, n_image)]
    return [replace(c, attention_mask=attention_form(c.attention_mask, attention)) for c in passes]


def rescaled_cfg(v_pos: torch.Tensor, v_neg: torch.Tensor, cfg: float) -> torch.Tensor:
    """True CFG with each token's guided vector scaled back to the norm of its positive prediction (over the
    channels), as diffusers' QwenImagePipeline guides; the reference (and the default here) guides plainly."""
    v = v_neg + cfg * (v_pos - v_neg)
    return v * (torch.norm(v_pos, dim=-1, keepdim=True) / torch.norm(v, dim=-1, keepdim=True))


def _velocity(velocity: Velocity, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """One pass under `cond`, with its entity LoRAs' token weights active (`entity_lora`)."""
    with active_tokens(cond.lora_tokens):
        return velocity(x, t, cond)


@torch.inference_mode()
def denoise(
    velocity: Velocity,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    timesteps: torch.Tensor,
    positive: Conditioning,
    negative: Conditioning | None,
    cfg: float,
    on_step: StepCallback | None = None,
    fuse_positive: Fuse | None = None,
    fuse_negative: Fuse | None = None,
    attention: Attention = "auto",
    batch_cfg: bool = False,
    cfg_rescale: bool = False,
) -> torch.Tensor:
    """Euler steps from sigmas[0] to sigmas[-1]; true CFG `v = v_neg + cfg (v_pos - v_neg)` when cfg > 1.

    `fuse_positive` / `fuse_negative` replace a branch's prediction outside the inpainting regions
    before CFG (paper Algorithm 1). `attention` picks how the regional mask runs; `batch_cfg` runs both
    CFG branches in one batched pass (the same result; about twice the activation memory). `cfg_rescale`
    scales each token's guided velocity back to the norm of its positive one (`rescaled_cfg`).
    """
    passes = branches(positive, negative if cfg > 1.0 else None, x.shape[1], attention, batch_cfg)
    for i, t in enumerate(timesteps.to(x.device)):
        sigma = sigmas[i].item()
        both = torch.cat([_velocity(velocity, x, t, c) for c in passes])  # (1 or 2 branches, n, d)
        v = both[:1] if fuse_positive is None else fuse_positive(both[:1], x, sigma)
        if len(both) == 2:
            v_neg = both[1:] if fuse_negative is None else fuse_negative(both[1:], x, sigma)
            v = rescaled_cfg(v, v_neg, cfg) if cfg_rescale else v_neg + cfg * (v - v_neg)
        x = (x.float() + (sigmas[i + 1] - sigmas[i]).item() * v).to(v.dtype)
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return x
