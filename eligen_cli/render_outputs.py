"""The metadata embedded in the PNGs `eligen generate` and `eligen inpaint` write; the studio writes the same, so
its downloads are the bytes these commands write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from eligen import __version__
from eligen.pipeline.layout import Edits, Layout
from eligen.pipeline.regions import inline_masks

if TYPE_CHECKING:
    from eligen.pipeline.generate import EligenPipeline


def resolved_layout(pipe: EligenPipeline, layout: Layout, masks: list[np.ndarray]) -> Layout:
    """The layout as run: masks inlined, the T5 length and the LoRAs made explicit."""
    return inline_masks(layout, masks).model_copy(
        update={"max_sequence_length": pipe.max_sequence_length(layout), "loras": pipe.lora_specs(layout)})


def generate_metadata(resolved: Layout, seed: int) -> dict[str, Any]:
    """What a generated PNG carries: enough to re-run it (`eligen generate IMAGE.png`)."""
    return {"eligen_version": __version__, "model": resolved.model, "seed": seed,
            "layout": resolved.model_copy(update={"seed": seed}).model_dump(mode="json", exclude_none=True)}


def resolved_edits(pipe: EligenPipeline, edits: Edits, masks: list[np.ndarray]) -> dict[str, Any]:
    """The edits as run (masks inlined, the LoRAs made explicit), as file data."""
    resolved = inline_masks(edits, masks).model_copy(update={"loras": pipe.lora_specs(edits)})
    return resolved.model_dump(mode="json", exclude_none=True)


def inpaint_metadata(edits: Edits, resolved: dict[str, Any], seed: int, image_name: str, sha256: str
                     ) -> dict[str, Any]:
    """What an inpainted PNG carries: the edits and which source image they were applied to."""
    return {"eligen_version": __version__, "model": edits.model, "seed": seed, "source_image": image_name,
            "source_sha256": sha256, "edits": {**resolved, "seed": seed}}
