"""Measure how well a model places entities: generate layouts over seeds and score them with `detect`.

Per entity: the box IoU of the detected shape of its colour (and, for a mask or polygon region, its mask IoU
and coverage of the region); per run: mIoU and the success rate (right colour and shape class with box IoU
>= 0.5), and a contact sheet with each layout drawn over its images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from ..layout import Layout
from ..preview import draw_preview
from .detector import EntityScore, detect, mask_box, score_entity

SUCCESS_IOU = 0.5
CELL = 192  # contact-sheet cell side in pixels


@dataclass
class ImageResult:
    """The scores of one generated image."""

    layout: str
    seed: int
    entities: list[EntityScore]


@dataclass
class EvalReport:
    """Every image's scores and the totals."""

    images: list[ImageResult] = field(default_factory=list)

    @property
    def scores(self) -> list[EntityScore]:
        return [e for image in self.images for e in image.entities]

    @property
    def miou(self) -> float:
        scores = self.scores
        return float(np.mean([s.iou for s in scores])) if scores else 0.0

    @property
    def success_rate(self) -> float:
        scores = self.scores
        return float(np.mean([s.success for s in scores])) if scores else 0.0

    @property
    def region_scores(self) -> dict[str, float]:
        """Mean mask IoU and coverage over the entities with mask or polygon regions (empty when none)."""
        scored = [s for s in self.scores if s.mask_iou is not None]
        if not scored:
            return {}
        return {"mask_iou": float(np.mean([s.mask_iou for s in scored])),
                "coverage": float(np.mean([s.coverage for s in scored]))}

    def to_json(self) -> dict:
        """Totals and every entity's score, JSON-ready."""
        return {
            "entities": len(self.scores), "images": len(self.images),
            "miou": round(self.miou, 4), "success_rate": round(self.success_rate, 4),
            **{k: round(v, 4) for k, v in self.region_scores.items()},
            "per_image": [{"layout": i.layout, "seed": i.seed,
                           "entities": [{**asdict(e), "iou": round(e.iou, 4), "success": e.success}
                                        for e in i.entities]} for i in self.images],
        }


def score_image(image: Image.Image, layout: Layout, masks: Sequence[np.ndarray] | None = None) -> list[EntityScore]:
    """Score every entity of a layout in one image of its size: boxes in pixels, or with `masks` (the entities'
    pixel masks, `regions.entity_masks`) any region, a non-box one against its bounding box and its pixels."""
    components = detect(image)
    if masks is None:
        return [score_entity(components, e.prompt, e.box) for e in layout.entities if e.box is not None]
    return [score_entity(components, e.prompt, e.box) if e.box is not None
            else score_entity(components, e.prompt, mask_box(mask), mask)
            for e, mask in zip(layout.entities, masks, strict=True)]


def contact_sheet(cells: Sequence[Image.Image], columns: int) -> Image.Image:
    """Cells (resized to CELL x CELL) in a grid of `columns` columns."""
    rows = max(1, math.ceil(len(cells) / columns))
    sheet = Image.new("RGB", (columns * CELL, rows * CELL), (255, 255, 255))
    for i, cell in enumerate(cells):
        sheet.paste(cell.convert("RGB").resize((CELL, CELL)), ((i % columns) * CELL, (i // columns) * CELL))
    return sheet


def overlay(image: Image.Image, layout: Layout, pixel_masks: list[np.ndarray], token_masks: np.ndarray,
            token_size: int) -> Image.Image:
    """The layout's regions and labels drawn over a generated image."""
    return draw_preview(layout, pixel_masks, token_masks, token_size, background=image)


def evaluate(
    items: Sequence[tuple[str, Layout, Sequence[np.ndarray]]], seeds: Sequence[int],
    render: Callable[[str, Layout, int], Image.Image],
) -> tuple[EvalReport, list[tuple[str, int, Image.Image]]]:
    """Render each (name, layout, entity pixel masks) for each seed with `render(name, layout, seed)` and score it.

    Returns the report and the images as (name, seed, image).
    """
    report, images = EvalReport(), []
    for name, layout, masks in items:
        for seed in seeds:
            image = render(name, layout, seed)
            report.images.append(ImageResult(name, seed, score_image(image, layout, masks)))
            images.append((name, seed, image))
    return report, images
