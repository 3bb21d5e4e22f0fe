"""The shapes world's scorer: the classical detector (`shapes.detector`) as a benchmark scorer.

Per instance: `iou` (box IoU of the best component of the entity's colour), `success` (right colour and shape
class with IoU >= 0.5), `found_shape`, and for mask or polygon regions `mask_iou` and `coverage`.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..shapes.detector import CIRCLE_FILL, MAX_DISTANCE, MIN_AREA, SQUARE_FILL, detect, parse_entity, score_entity
from .items import BenchItem
from .scoring import ImageScore, Value


def is_shapes_prompt(prompt: str) -> bool:
    """Whether the detector can score this entity prompt ("a red circle": a palette colour and a shape)."""
    colour, shape = parse_entity(prompt)
    return colour is not None and shape is not None


class ShapesScorer:
    """Scores shape scenes with the classical detector."""

    name = "shapes-detector"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "max_rgb_distance": MAX_DISTANCE, "min_area_at_64px": MIN_AREA,
                "square_fill": SQUARE_FILL, "circle_fill": CIRCLE_FILL, "success": "colour and shape right, IoU >= 0.5"}

    def score(self, image: Image.Image, item: BenchItem) -> ImageScore:
        components = detect(image)
        rows: list[dict[str, Value]] = []
        for instance in item.instances:
            s = score_entity(components, instance.prompt, instance.box, instance.mask)
            row: dict[str, Value] = {"iou": s.iou, "success": s.success, "found_shape": s.found_shape}
            if s.mask_iou is not None:
                row |= {"mask_iou": s.mask_iou, "coverage": s.coverage}
            rows.append(row)
        return ImageScore(rows)
