"""Rendering for the chat: layouts to images and edits of an image, through the pipeline's render entry point
(`eligen.pipeline.render`, the one every `eligen` command uses), so every image the chat writes carries the same
metadata and can be re-run with `eligen generate IMAGE.png`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from eligen.pipeline.images import open_rgb
from eligen.pipeline.layout import Edits, Layout
from eligen.pipeline.layout_warnings import check_layout
from eligen.pipeline.model_defaults import with_model_defaults
from eligen.pipeline.model_info import resolve_model
from eligen.pipeline.outputs import save_png
from eligen.pipeline.regions import entity_masks

if TYPE_CHECKING:
    from eligen.pipeline.generate import EligenPipeline
    from eligen.pipeline.sampler import StepCallback


class Renderer:
    """Loads each model (any family) once, on the chosen device and dtype, and renders layouts and edits with it."""

    def __init__(self, device: str | None = None, dtype: str | None = None) -> None:
        self.device, self.dtype = device, dtype
        self.loaded: dict[str, EligenPipeline] = {}

    def pipeline(self, model: str) -> EligenPipeline:
        from eligen.pipeline.devices import use_threads
        from eligen.pipeline.generate import EligenPipeline

        if model not in self.loaded:
            self.loaded[model] = EligenPipeline.from_pretrained(model, device=self.device, dtype=self.dtype)
            use_threads(None, self.loaded[model].device, self.loaded[model].transformer)  # one for small models
        return self.loaded[model]

    def generate(self, layout: Layout, base_dir: Path, seed: int, out: Path,
                 on_step: StepCallback | None = None) -> None:
        """Render the layout for one seed to `out`, with the resolved layout embedded; warns as `eligen generate`
        does of what the model will not draw as written (checked with the model's defaults, as rendered)."""
        from eligen.pipeline.render import prepare_render

        layout = with_model_defaults(layout.model_copy(update={"model": resolve_model(layout.model, base_dir)}))
        pipe = self.pipeline(layout.model)
        check_layout(layout, entity_masks(layout, base_dir), pipe.scale_factor)
        result = prepare_render(pipe, layout, base_dir=base_dir).image(seed, on_step)
        save_png(result.image, out, result.metadata)

    def inpaint(self, image_path: Path, edits: Edits, base_dir: Path, seed: int, out: Path,
                on_step: StepCallback | None = None) -> None:
        """Repaint the edits' regions of the image for one seed to `out`, with the edits embedded."""
        from eligen.pipeline.inpaint import place
        from eligen.pipeline.render import SourceImage, prepare_render

        data = image_path.read_bytes()
        image = open_rgb(image_path, str(image_path), "(image)")
        edits = with_model_defaults(edits.model_copy(update={"model": resolve_model(edits.model, base_dir)}))
        pipe = self.pipeline(edits.model)
        canvas = place(edits, entity_masks(edits, base_dir, same_size=True), image.size, pipe.scale_factor)
        check_layout(canvas.layout, canvas.grid_masks, pipe.scale_factor)
        picture = SourceImage(image, image_path.name, hashlib.sha256(data).hexdigest())
        result = prepare_render(pipe, edits, base_dir=base_dir, source_image=picture).image(seed, on_step)
        save_png(result.image, out, result.metadata)
