"""Inpainting fusion (the paper's Algorithm 1) as a ComfyUI model patch: repaint the entity regions of a source.

At every step the paper keeps the regional prediction inside the union U of the entity masks and replaces it
outside by the background velocity (z_t - z_init) / sigma, which follows the source's own noising path. ComfyUI's
models predict x0 = z_t - sigma * v, and for that background velocity x0 is z_init itself, so the fusion is
`where(U, x0, z_init)` on the predictions before CFG (ComfyUI's `sampler_pre_cfg_function`). U is built by
`eligen.pipeline.inpaint_canvas.paper_union`, as the reference builds it.
"""

from __future__ import annotations

from typing import Any

import torch

from eligen.pipeline.inpaint_canvas import paper_union

from .entities import SCALE_FACTOR, Entity, pixel_mask


def union_mask(entities: list[Entity], width: int, height: int) -> torch.Tensor:
    """(h/8, w/8) bool: the latent pixels the entities repaint."""
    if not entities:
        raise ValueError("EliGen Inpaint: expected at least one entity (the regions to repaint)")
    masks = [pixel_mask(e, (width, height)) for e in entities]  # a LayoutError (a ValueError) names the entity
    return torch.from_numpy(paper_union(masks, SCALE_FACTOR))


def fused(model: Any, source: torch.Tensor, union: torch.Tensor, both_branches: bool) -> Any:
    """A clone of the MODEL whose positive prediction (and negative, with `both_branches`) keeps the source's
    latents `source` (ComfyUI's LATENT samples) outside `union`."""
    latent_h, latent_w = source.shape[-2:]
    if (latent_h, latent_w) != tuple(union.shape):
        source_size = f"{latent_w * SCALE_FACTOR}x{latent_h * SCALE_FACTOR}"
        canvas = f"{union.shape[1] * SCALE_FACTOR}x{union.shape[0] * SCALE_FACTOR}"
        raise ValueError(f"EliGen Inpaint: the source latent is {source_size}, the entities were placed on {canvas}; "
                         "encode the source at the entities' width and height")
    z_init = model.model.process_latent_in(source)

    def fuse(args: dict[str, Any]) -> list[torch.Tensor | None]:
        x0 = list(args["conds_out"])
        if x0[0].shape[-2:] != union.shape:
            raise ValueError("EliGen Inpaint: the sampler's latent is not the source latent's size")
        keep = union.to(x0[0].device)
        background = z_init.to(x0[0])
        for i in range(2 if both_branches else 1):
            if x0[i] is not None:
                x0[i] = torch.where(keep, x0[i], background)
        return x0

    patched = model.clone()
    patched.set_model_sampler_pre_cfg_function(fuse)
    return patched
