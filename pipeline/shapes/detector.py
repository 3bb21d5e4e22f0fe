"""A classical detector for shape scenes: which coloured shape is where.

Pixels take the nearest palette colour when it is within `MAX_DISTANCE` and nearer than the background
(the median of the image border); connected components of one colour (4-neighbourhood, at least
`MIN_AREA` pixels at 64x64, scaled with the image area) are candidate shapes; the fill ratio of a
component in its bounding box gives its class (square >= 0.89, circle >= 0.64, else triangle).
An entity whose region is a mask or polygon is also scored on pixels: the mask IoU of the detected shape with
the region, and the coverage (the share of the region the detected shape covers).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .scenes import PALETTE, SHAPES

MAX_DISTANCE = 90.0  # RGB distance to the palette colour
MIN_AREA = 12  # pixels at 64x64
SQUARE_FILL, CIRCLE_FILL = 0.89, 0.64

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive


@dataclass(frozen=True)
class Component:
    """A connected region of one palette colour."""

    colour: str
    box: Box
    area: int
    pixels: np.ndarray = field(compare=False, repr=False)  # (H, W) bool: the component's pixels

    @property
    def fill(self) -> float:
        return self.area / ((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    @property
    def shape(self) -> str:
        return "square" if self.fill >= SQUARE_FILL else "circle" if self.fill >= CIRCLE_FILL else "triangle"


@dataclass(frozen=True)
class EntityScore:
    """How well one entity ("a red circle" in its box) came out in an image."""

    prompt: str
    colour: str | None
    shape: str | None
    found_shape: str | None  # the shape class of the best component of the right colour, None when none
    iou: float
    mask_iou: float | None = None  # for a mask or polygon region: pixel IoU of that component with the region
    coverage: float | None = None  # ... and the share of the region's pixels it covers

    @property
    def success(self) -> bool:
        return self.colour is not None and self.found_shape == self.shape and self.iou >= 0.5


def parse_entity(prompt: str) -> tuple[str | None, str | None]:
    """(colour, shape) named in an entity prompt, None for a word it lacks."""
    words = prompt.lower().replace(",", " ").split()
    colour = next((w for w in words if w in PALETTE), None)
    shape = next((w for w in words if w in SHAPES), None)
    return colour, shape


def colour_labels(pixels: np.ndarray) -> np.ndarray:
    """(H, W) index into `PALETTE` of each pixel's colour, -1 for background or no palette colour."""
    rgb = pixels.astype(np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    palette = np.array(list(PALETTE.values()), dtype=np.float32)
    distances = np.linalg.norm(rgb[:, :, None, :] - palette[None, None], axis=-1)
    nearest = distances.argmin(axis=-1)
    best = distances.min(axis=-1)
    to_background = np.linalg.norm(rgb - background, axis=-1)
    return np.where((best <= MAX_DISTANCE) & (best < to_background), nearest, -1)


def _components(mask: np.ndarray) -> list[tuple[Box, np.ndarray]]:
    """(box, pixel mask) of each 4-connected component of a bool mask."""
    seen = np.zeros_like(mask)
    height, width = mask.shape
    found = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, x0, y0, x1, y1 = deque([(y, x)]), x, y, x, y
        pixels = np.zeros_like(mask)
        while queue:
            cy, cx = queue.popleft()
            pixels[cy, cx] = True
            x0, y0, x1, y1 = min(x0, cx), min(y0, cy), max(x1, cx), max(y1, cy)
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append(((int(x0), int(y0), int(x1) + 1, int(y1) + 1), pixels))
    return found


def detect(image: Image.Image) -> list[Component]:
    """Every shape-sized component of a palette colour in the image."""
    pixels = np.asarray(image.convert("RGB"))
    labels = colour_labels(pixels)
    min_area = max(1, round(MIN_AREA * pixels.shape[0] * pixels.shape[1] / 64**2))
    names = list(PALETTE)
    return [Component(names[index], box, int(pixels.sum()), pixels)
            for index in np.unique(labels[labels >= 0])
            for box, pixels in _components(labels == index) if pixels.sum() >= min_area]


def box_iou(a: Box | tuple[float, ...], b: Box | tuple[float, ...]) -> float:
    """Intersection over union of two boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_box(mask: np.ndarray) -> Box:
    """The bounding box of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def best_component(components: list[Component], colour: str | None, box: tuple[float, ...]) -> Component | None:
    """The component of `colour` whose box overlaps `box` best: the one an entity is scored with; None when there
    is none of that colour."""
    candidates = [c for c in components if c.colour == colour]
    return max(candidates, key=lambda c: box_iou(c.box, box)) if candidates else None


def score_entity(components: list[Component], prompt: str, box: tuple[float, ...],
                 region: np.ndarray | None = None) -> EntityScore:
    """Score one entity: the component of its colour that overlaps its box best, its IoU and shape class.

    With `region` (the entity's pixel mask, for a mask or polygon region; `box` is then its bounding box), also
    that component's mask IoU with the region and its coverage of it.
    """
    colour, shape = parse_entity(prompt)
    best = best_component(components, colour, box)
    if best is None:
        zero = 0.0 if region is not None else None
        return EntityScore(prompt, colour, shape, None, 0.0, zero, zero)
    mask_iou = coverage = None
    if region is not None:
        inter = float((best.pixels & region).sum())
        mask_iou, coverage = inter / float((best.pixels | region).sum()), inter / float(region.sum())
    return EntityScore(prompt, colour, shape, best.shape, box_iou(best.box, box), mask_iou, coverage)
