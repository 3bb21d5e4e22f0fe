"""Inpainting fusion (paper §4.2, Algorithm 1): repaint the entity regions of an image, keep the rest.

At every step the regional prediction `Nf` is kept inside the union `U` of the entity masks and
replaced outside it by the background velocity `Nb = (z_t - z_init) / sigma_t`, which moves the
latents along the source image's own noising path:

    N = Nf * U + Nb * (1 - U)

`paper` fuses the positive branch only, before CFG, with `U` built as the reference builds it;
`exact` fuses both branches, so the latents outside `U` follow the source exactly, and the decoded
pixels are composited over the source outside a dilated, feathered mask, so untouched pixels stay
bit-identical to the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .conditioning import Conditioning
from .inpaint_canvas import Canvas, paper_union, resize_mask
from .inpaint_canvas import place as place  # re-exported: the public inpainting API (docs/python-api.md)
from .layout import Edits, Layout
from .model_defaults import with_model_defaults
from .sampler import StepCallback, pack

if TYPE_CHECKING:
    from .generate import EligenPipeline


@dataclass(frozen=True)
class Fusion:
    """The background fusion of one inpainting run: source latents and the union mask, both packed."""

    z_init: torch.Tensor  # (1, n_tokens, 4C) packed latents of the source image
    union: torch.Tensor  # (1, n_tokens, 4C) bool, True inside the regions to repaint

    def __call__(self, v: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Algorithm 1: `Nf * U + Nb * (1 - U)` with `Nb = (z_t - z_init) / sigma_t`."""
        background = (x - self.z_init) / sigma
        return torch.where(self.union, v, background)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean mask by `radius` pixels in every direction (square neighbourhood, separable)."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    rows = np.zeros((h + 2 * radius, w), dtype=bool)
    for shift in range(2 * radius + 1):
        rows |= padded[:, shift:shift + w]
    out = np.zeros((h, w), dtype=bool)
    for shift in range(2 * radius + 1):
        out |= rows[shift:shift + h]
    return out


def feathered_alpha(union: np.ndarray, grow: int, feather: int) -> np.ndarray:
    """Blend weights in [0, 1]: 1 on the union grown by `grow` px, falling linearly to 0 over `feather` px.

    Exactly 0 farther than `grow + feather` px (square distance) from the union.
    """
    inside = dilate(union, grow)
    alpha = inside.astype(np.float32)
    ring = inside
    for step in range(1, feather + 1):
        grown = dilate(ring, 1)
        alpha[grown & ~ring] = 1.0 - step / (feather + 1)
        ring = grown
    return alpha


def exact_union(alpha: np.ndarray, size: tuple[int, int], scale_factor: int) -> np.ndarray:
    """Latent-grid union for `exact`: a latent pixel is free when its cell touches the blend mask (alpha > 0)
    resized to the model canvas `size` (width, height)."""
    free = resize_mask(alpha > 0, size)
    h, w = free.shape
    return free.reshape(h // scale_factor, scale_factor, w // scale_factor, scale_factor).any(axis=(1, 3))


def packed_union(latent_union: np.ndarray, channels: int, device: torch.device) -> torch.Tensor:
    """A latent-grid mask broadcast over channels and packed like the latents (bool)."""
    grid = torch.from_numpy(latent_union)[None, None].expand(1, channels, *latent_union.shape).contiguous()
    return pack(grid).to(device)


def composite(source: Image.Image, generated: Image.Image, alpha: np.ndarray) -> Image.Image:
    """Blend `generated` over `source` (same size) by `alpha`; where alpha is 0 the source pixel is kept as is."""
    src = np.asarray(source.convert("RGB"))
    gen = np.asarray(generated.convert("RGB"), dtype=np.float32)
    a = alpha[..., None]
    blended = np.clip(np.round(gen * a + src.astype(np.float32) * (1 - a)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.where(a > 0, blended, src))


@dataclass(frozen=True)
class InpaintPlan:
    """Everything an edits file needs on a loaded model, computed once and shared by all its seeds."""

    source: Image.Image  # the input image, RGB, its own size
    layout: Layout  # the edits at the model canvas size
    positive: Conditioning
    negative: Conditioning | None
    fusion: Fusion
    exact: bool
    alpha: np.ndarray | None  # blend weights at the source size (exact mode)


def prepare(pipe: EligenPipeline, canvas: Canvas, image: Image.Image, base_dir: Path = Path("."),
            source: str = "<edits>") -> InpaintPlan:
    """Apply the LoRAs, encode the prompts and the source image, and build the fusion for the chosen mode; what the
    edits leave out of steps, cfg and negative prompt comes from the loaded model (`model_defaults`)."""
    image = image.convert("RGB")
    layout, size, sf = with_model_defaults(canvas.layout, pipe.model), canvas.layout.size, pipe.scale_factor
    positive, negative = pipe.prepare(layout, base_dir, source, canvas.regions)
    z_init = pipe.encode_image(image.resize(size, Image.Resampling.LANCZOS) if image.size != size else image)
    exact = isinstance(layout, Edits) and layout.fusion == "exact"
    if exact:
        alpha = feathered_alpha(np.logical_or.reduce(canvas.masks), layout.dilate, layout.feather)
        latent_union = exact_union(alpha, size, sf)
    else:
        alpha, latent_union = None, paper_union(canvas.grid_masks, sf)
    union = packed_union(latent_union, z_init.shape[-1] // 4, z_init.device)
    return InpaintPlan(image, layout, positive, negative, Fusion(z_init, union), exact, alpha)


def inpaint(pipe: EligenPipeline, plan: InpaintPlan, seed: int, on_step: StepCallback | None = None,
            batch_cfg: bool = False) -> Image.Image:
    """Repaint the plan's regions for one seed and return the image at the source size (`batch_cfg`: both CFG
    branches in one batched pass, the same result)."""
    tokens = pipe.sample(plan.layout, plan.positive, plan.negative, seed, on_step,
                         fuse_positive=plan.fusion, fuse_negative=plan.fusion if plan.exact else None,
                         batch_cfg=batch_cfg)
    image = pipe.decode(tokens, plan.layout)
    if image.size != plan.source.size:
        image = image.resize(plan.source.size, Image.Resampling.LANCZOS)
    return composite(plan.source, image, plan.alpha) if plan.alpha is not None else image
