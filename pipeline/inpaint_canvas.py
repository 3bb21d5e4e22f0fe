"""Where an inpainting job's regions land on the model's canvas; numpy and PIL only, so the command line checks
an edits file against the model before torch is imported.

A source image of any size is worked on at a canvas of at most MAX_PIXELS whose sides are whole tokens; the
entity masks (drawn at the source size) are resized onto it, and each must still cover a token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .layout import Edits, Layout
from .regions import PATCH, token_masks

MAX_PIXELS = 1024 * 1024  # larger sources are scaled down to this area for the model, then back up


def model_size(image_size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The model canvas for a source image: at most MAX_PIXELS in area, sides rounded to `multiple`."""
    width, height = image_size
    scale = min(1.0, (MAX_PIXELS / (width * height)) ** 0.5)
    return (max(multiple, int(width * scale / multiple + 0.5) * multiple),
            max(multiple, int(height * scale / multiple + 0.5) * multiple))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to (width, height) with nearest sampling."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize(size, Image.Resampling.NEAREST)) > 127


def paper_union(masks: list[np.ndarray], scale_factor: int) -> np.ndarray:
    """Latent-grid union as the reference builds it: each mask (as RGB) resized with PIL's default
    resampling (bicubic), on where the mean over RGB is above half."""
    h, w = masks[0].shape
    union = np.zeros((h // scale_factor, w // scale_factor), dtype=bool)
    for mask in masks:
        rgb = Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB").resize((w // scale_factor, h // scale_factor))
        union |= np.asarray(rgb, dtype=np.float32).mean(axis=2) / 127.5 - 1 > 0
    return union


@dataclass(frozen=True)
class Canvas:
    """The edits placed on the model canvas: validated before any model is loaded."""

    layout: Layout  # the edits at the model canvas size
    masks: list[np.ndarray]  # entity masks at the source image size
    grid_masks: list[np.ndarray]  # the same at the model canvas size
    regions: np.ndarray  # (k, n_tokens) token regions for the attention mask


def place(edits: Edits, masks: list[np.ndarray], image_size: tuple[int, int], scale_factor: int,
          source: str = "<edits>") -> Canvas:
    """Map source-size entity masks onto the model canvas and check every entity still covers a token."""
    size = model_size(image_size, scale_factor * PATCH)
    layout = edits.model_copy(update={"size": size})
    grid_masks = [resize_mask(m, size) for m in masks]
    return Canvas(layout, masks, grid_masks, token_masks(grid_masks, scale_factor, layout, source))
