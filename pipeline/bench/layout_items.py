"""Any eligen layouts as benchmark items: each entity is an instance in its region (a box, or a polygon's or a
mask's pixels with their bounding box); an item's level is its number of entities."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..layout import Layout
from ..regions import unit_scale
from ..shapes.detector import mask_box
from .items import BenchItem, Instance


def layout_item(item_id: str, layout: Layout, masks: Sequence[np.ndarray], base_dir: Path, source: str
                ) -> BenchItem:
    """One layout (its entities' pixel masks from `regions.entity_masks`) as a benchmark item."""
    sx, sy = unit_scale(layout)
    instances = []
    for entity, mask in zip(layout.entities, masks, strict=True):
        if entity.box is not None:
            x0, y0, x1, y1 = entity.box
            instances.append(Instance(entity.prompt, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)))
        else:
            instances.append(Instance(entity.prompt, tuple(map(float, mask_box(mask))), mask))  # type: ignore[arg-type]
    count = len(instances)
    return BenchItem(item_id, f"{count} entit{'y' if count == 1 else 'ies'}", layout, tuple(instances), base_dir,
                     source)


def item_ids(paths: Sequence[Path]) -> list[str]:
    """File-safe, unique ids for layout files: their stems, with the parent folder's name where stems repeat."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text)

    stems = [p.stem for p in paths]
    ids = [safe(p.stem) if stems.count(p.stem) == 1 else safe(f"{p.parent.name}-{p.stem}") for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for value in ids:
        seen[value] = seen.get(value, 0) + 1
        unique.append(value if seen[value] == 1 else f"{value}-{seen[value]}")
    return unique
