"""A benchmark's report: the scores of every image merged (from any number of shards), means per level and in
total, results.json and a contact sheet."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..model_info import scale_factor
from ..preview import draw_preview
from ..regions import entity_masks, token_masks
from .items import BenchItem
from .run import image_path, iter_scores
from .scoring import Scorer

CELL = 192  # contact-sheet cell side in pixels
MAX_CELLS = 256  # images on the contact sheet, at most (the first ones in item order)
TOTAL = "all"


@dataclass
class ScoredImage:
    item: BenchItem
    seed: int
    instances: list[dict[str, Any]]
    image: dict[str, Any]


@dataclass
class Report:
    """Every image's merged scores."""

    images: list[ScoredImage] = field(default_factory=list)

    def levels(self) -> dict[str, list[ScoredImage]]:
        """Images by their item's level (sorted by name), then all of them under TOTAL."""
        groups: dict[str, list[ScoredImage]] = defaultdict(list)
        for image in self.images:
            groups[image.item.level].append(image)
        return {**dict(sorted(groups.items())), TOTAL: self.images}


def _numeric(value: Any) -> bool:
    return isinstance(value, bool | int | float) and not (isinstance(value, float) and math.isnan(value))


def means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean of every number or boolean key over the rows that have it (None and strings left out)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for key, value in row.items():
            if _numeric(value):
                sums[key].append(float(value))
    return {key: float(np.mean(values)) for key, values in sums.items()}


def summary(images: Sequence[ScoredImage]) -> dict[str, Any]:
    """Counts and means of one group: instance keys over all its instances, image keys over its images."""
    instances = [row for image in images for row in image.instances]
    return {"images": len(images), "instances": len(instances),
            "instance_means": means(instances), "image_means": means([image.image for image in images])}


def collect(items: Sequence[BenchItem], seeds: Sequence[int], out: Path, scorers: Sequence[Scorer]) -> Report:
    """The report of a finished run: every (item, seed)'s score files, whichever process wrote them."""
    return Report([ScoredImage(item, seed, instances, image)
                   for item, seed, instances, image in iter_scores(items, seeds, out, scorers)])


def results(report: Report, header: dict[str, Any]) -> dict[str, Any]:
    """results.json: `header` (benchmark, options, scorers, processes), the summary per level and every image."""
    return {**header,
            "levels": {level: summary(images) for level, images in report.levels().items()},
            "per_image": [{"item": s.item.id, "level": s.item.level, "seed": s.seed,
                           "instances": [{"prompt": inst.prompt, **row} for inst, row in zip(
                               s.item.instances, s.instances, strict=True)],
                           "image": s.image} for s in report.images]}


def overlay(image: Image.Image, item: BenchItem) -> Image.Image:
    """The item's regions and labels drawn over its generated image."""
    masks = entity_masks(item.layout, item.base_dir, item.source)
    factor = scale_factor(item.layout.model)
    return draw_preview(item.layout, masks, token_masks(masks, factor, item.layout, item.source), 2 * factor,
                        background=image)


def contact_sheet(report: Report, out: Path, columns: int, cell: int = CELL) -> Image.Image:
    """The first MAX_CELLS images with their layouts drawn over them, `columns` a row, each `cell` pixels square."""
    shown = report.images[:MAX_CELLS]
    rows = max(1, math.ceil(len(shown) / columns))
    sheet = Image.new("RGB", (columns * cell, rows * cell), (255, 255, 255))
    for i, scored in enumerate(shown):
        with Image.open(image_path(out, scored.item, scored.seed)) as opened:
            drawn = overlay(opened.convert("RGB"), scored.item)
        sheet.paste(drawn.convert("RGB").resize((cell, cell)), ((i % columns) * cell, (i // columns) * cell))
    return sheet
