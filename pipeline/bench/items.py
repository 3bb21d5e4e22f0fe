"""What a benchmark item is: an eligen layout to generate, and the instances a scorer looks for in the image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..layout import Layout

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the generated image


@dataclass(frozen=True)
class Instance:
    """One thing the image should show: an entity's prompt in its region."""

    prompt: str  # the entity prompt, e.g. "a red banana"
    box: Box  # the region's bounding box in pixels
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)  # (H, W) bool, for non-box regions
    colour: str | None = None  # the benchmark's colour word, where it has one (COCO-MIG: "red")
    category: str | None = None  # the benchmark's object name, where it has one (COCO-MIG: "banana")


@dataclass(frozen=True)
class BenchItem:
    """A layout to generate and the instances to score in it."""

    id: str  # unique in its benchmark and safe as a file name
    level: str  # the group its tables report it in, e.g. "L3" (COCO-MIG) or "3 entities"
    layout: Layout
    instances: tuple[Instance, ...]
    base_dir: Path = Path(".")  # where the layout's relative paths (mask PNGs) resolve
    source: str = ""  # the file it came from, for messages
