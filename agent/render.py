"""Rendering for the chat: layouts to images and edits of an image, through the pipeline's public functions
(the ones `eligen generate` and `eligen inpaint` use), with the same PNG metadata, so every image the chat
writes can be re-run with `eligen generate IMAGE.png`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from eligen import __version__
from eligen.pipeline.images import open_rgb
from eligen.pipeline.layout import Edits, Layout
from eligen.pipeline.layout_warnings import check_layout
from eligen.pipeline.model_defaults import with_model_defaults
from eligen.pipeline.model_info import resolve_model
from eligen.pipeline.outputs import save_png
from eligen.pipeline.regions import entity_masks, inline_masks

if TYPE_CHECKING:
    from eligen.pipeline.generate import EligenPipeline
    from eligen.pipeline.sampler import StepCallback


class Renderer:
    """Loads each model (any family) once, on the chosen device and dtype, and renders layouts and edits with it."""

    def __init__(self, device: str | None = None, dtype: str | None = None) -> None:
        self.device, self.dtype = device, dtype
        self.loaded: dict[str, EligenPipeline] = {}

    def pipeline(self, model: str) -> EligenPipeline:
        from eligen.pipeline.generate import EligenPipeline

        if model not in self.loaded:
            self.loaded[model] = EligenPipeline.from_pretrained(model, device=self.device, dtype=self.dtype)
        return self.loaded[model]

    def generate(self, layout: Layout, base_dir: Path, seed: int, out: Path,
                 on_step: StepCallback | None = None) -> None:
        """Render the layout for one seed to `out`, with the resolved layout (the model's defaults filled in)
        embedded."""
        layout = with_model_defaults(layout.model_copy(update={"model": resolve_model(layout.model, base_dir)}))
        pipe = self.pipeline(layout.model)
        masks = entity_masks(layout, base_dir)
        check_layout(layout, masks, pipe.scale_factor)
        positive, negative = pipe.prepare(layout, base_dir)
        tokens = pipe.sample(layout, positive, negative, seed, on_step=on_step)
        resolved = inline_masks(layout, masks).model_copy(update={
            "seed": seed, "max_sequence_length": pipe.max_sequence_length(layout), "loras": pipe.lora_specs(layout)})
        metadata = {"eligen_version": __version__, "model": layout.model, "seed": seed,
                    "layout": resolved.model_dump(mode="json", exclude_none=True)}
        save_png(pipe.decode(tokens, layout), out, metadata)

    def inpaint(self, image_path: Path, edits: Edits, base_dir: Path, seed: int, out: Path,
                on_step: StepCallback | None = None) -> None:
        """Repaint the edits' regions of the image for one seed to `out`, with the edits embedded."""
        from eligen.pipeline.inpaint import inpaint, place, prepare

        data = image_path.read_bytes()
        image = open_rgb(image_path, str(image_path), "(image)")
        edits = with_model_defaults(edits.model_copy(update={"model": resolve_model(edits.model, base_dir)}))
        masks = entity_masks(edits, base_dir, same_size=True)
        pipe = self.pipeline(edits.model)
        canvas = place(edits, masks, image.size, pipe.scale_factor)
        check_layout(canvas.layout, canvas.grid_masks, pipe.scale_factor)
        plan = prepare(pipe, canvas, image, base_dir)
        resolved = inline_masks(edits, masks).model_copy(update={"seed": seed, "loras": pipe.lora_specs(edits)})
        metadata = {"eligen_version": __version__, "model": edits.model, "seed": seed,
                    "source_image": image_path.name, "source_sha256": hashlib.sha256(data).hexdigest(),
                    "edits": resolved.model_dump(mode="json", exclude_none=True)}
        save_png(inpaint(pipe, plan, seed, on_step), out, metadata)
