"""Previews of planned layouts and edits, drawn by the pipeline's own preview code."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from eligen.pipeline.inpaint_canvas import place
from eligen.pipeline.layout import Layout
from eligen.pipeline.model_info import scale_factor
from eligen.pipeline.preview import draw_preview
from eligen.pipeline.regions import PATCH, check_canvas, entity_masks, token_masks


def preview_image(layout: Layout, base_dir: Path = Path("."), background: Image.Image | None = None) -> Image.Image:
    """A layout's regions and token cells (as `eligen preview`), or with `background` the edits' regions over
    the source image (as `eligen inpaint --preview`)."""
    factor = scale_factor(layout.model)
    if background is None:
        check_canvas(layout, factor)
        masks = entity_masks(layout, base_dir)
        return draw_preview(layout, masks, token_masks(masks, factor, layout), factor * PATCH)
    canvas = place(layout, entity_masks(layout, base_dir, same_size=True), background.size, factor)  # type: ignore[arg-type]
    return draw_preview(canvas.layout, canvas.grid_masks, canvas.regions, factor * PATCH, background=background)
