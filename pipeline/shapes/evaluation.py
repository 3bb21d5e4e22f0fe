"""Score a shape scene against its layout with `detect` (the benchmark runs use `bench.shapes_scorer`).

Per entity: the box IoU of the detected shape of its colour, and for a mask or polygon region its mask IoU and
coverage of the region; success is the right colour and shape class with box IoU >= 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..layout import Layout
from .detector import EntityScore, detect, mask_box, score_entity


def score_image(image: Image.Image, layout: Layout, masks: Sequence[np.ndarray] | None = None) -> list[EntityScore]:
    """Score every entity of a layout in one image of its size: boxes in pixels, or with `masks` (the entities'
    pixel masks, `regions.entity_masks`) any region, a non-box one against its bounding box and its pixels."""
    components = detect(image)
    if masks is None:
        return [score_entity(components, e.prompt, e.box) for e in layout.entities if e.box is not None]
    return [score_entity(components, e.prompt, e.box) if e.box is not None
            else score_entity(components, e.prompt, mask_box(mask), mask)
            for e, mask in zip(layout.entities, masks, strict=True)]
