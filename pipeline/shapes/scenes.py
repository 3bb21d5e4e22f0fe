"""Synthetic shape scenes: flat circles, squares and triangles on plain light backgrounds.

Each scene has a global caption ("a red circle and a blue square"), one entity per shape ("a red circle")
with its box, and the exact mask of every shape. `write_shapes_dataset` writes them in the training dataset
format (docs/dataset-format.md) with the masks beside, and optionally as layout files for `eligen eval`.
Everything depends only on the seed.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 215), "yellow": (235, 200, 30),
    "purple": (135, 50, 165), "orange": (245, 135, 25), "black": (25, 25, 25),
}  # fmt: skip
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MIN_SIDE, MAX_SIDE = 0.15, 0.45  # shape sides as fractions of the image side


@dataclass(frozen=True)
class Shape:
    """One flat shape: its kind, colour name and square box (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    kind: str
    colour: str
    box: tuple[int, int, int, int]

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """A background colour and its shapes, in drawing order."""

    size: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]

    @property
    def caption(self) -> str:
        return " and ".join(s.prompt for s in self.shapes)


def shape_mask(shape: Shape, size: int) -> np.ndarray:
    """(size, size) bool mask of the shape, drawn without anti-aliasing."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = shape.box
    if shape.kind == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif shape.kind == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    else:  # an upright triangle filling its box
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=255)
    return np.asarray(canvas) > 127


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image."""
    pixels = np.empty((scene.size, scene.size, 3), dtype=np.uint8)
    pixels[:] = scene.background
    for shape in scene.shapes:
        pixels[shape_mask(shape, scene.size)] = PALETTE[shape.colour]
    return Image.fromarray(pixels)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def random_scene(rng: random.Random, size: int = 64, counts: tuple[int, ...] = (1, 2, 3, 4)) -> Scene:
    """A scene with `rng.choice(counts)` non-overlapping shapes of distinct colours (fewer if they do not fit)."""
    background = tuple(rng.randint(232, 252) for _ in range(3))
    count = rng.choice(counts)
    colours = rng.sample(sorted(PALETTE), count)
    shapes: list[Shape] = []
    for colour in colours:
        for _ in range(50):  # rejection sampling of a free spot
            side = rng.randint(round(MIN_SIDE * size), round(MAX_SIDE * size))
            x, y = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x, y, x + side, y + side)
            if not any(_overlaps(box, s.box, 2) for s in shapes):
                shapes.append(Shape(rng.choice(SHAPES), colour, box))
                break
    return Scene(size, background, tuple(shapes))  # type: ignore[arg-type]


def scenes(count: int, seed: int, size: int = 64, counts: tuple[int, ...] = (1, 2, 3, 4)) -> list[Scene]:
    """`count` scenes, a function of `seed` only."""
    rng = random.Random(seed)
    return [random_scene(rng, size, counts) for _ in range(count)]


SHAPES_MODEL = "shapes"  # the built-in model these scenes are for (docs/shapes.md)


RegionKind = Literal["box", "polygon", "mask"]
CIRCLE_VERTICES = 32


def shape_polygon(shape: Shape) -> list[list[float]]:
    """The outline of the shape in pixel coordinates: its square, its triangle, or a 32-gon for a circle."""
    x0, y0, x1, y1 = shape.box
    if shape.kind == "square":
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    if shape.kind == "triangle":
        return [[x0, y1], [x1, y1], [(x0 + x1) / 2, y0]]
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    return [[round(cx + r * math.cos(a), 2), round(cy + r * math.sin(a), 2)]
            for a in (2 * math.pi * k / CIRCLE_VERTICES for k in range(CIRCLE_VERTICES))]


def layout_data(scene: Scene, seed: int = 0, regions: RegionKind = "box",
                masks: list[str] | None = None) -> dict:
    """The scene as a layout file's data for the shapes model, for `eligen generate` and `eligen eval`.

    Each entity's region is its box (pixels), the outline of its shape (`polygon`), or, with `regions="mask"`,
    the mask file named by `masks` (one path per shape, relative to the layout file).
    """
    def region(i: int, shape: Shape) -> dict:
        if regions == "polygon":
            return {"polygon": shape_polygon(shape)}
        if regions == "mask":
            if masks is None:
                raise ValueError("regions='mask' needs the mask paths (masks)")
            return {"mask": masks[i]}
        return {"box": list(shape.box)}

    return {"model": SHAPES_MODEL, "size": [scene.size, scene.size], "seed": seed, "prompt": scene.caption,
            "entities": [{"prompt": s.prompt, **region(i, s)} for i, s in enumerate(scene.shapes)]}


def write_shapes_dataset(
    folder: Path, count: int, seed: int = 0, size: int = 64, counts: tuple[int, ...] = (1, 2, 3, 4),
    layouts: Path | None = None, regions: RegionKind = "box",
) -> list[Scene]:
    """Write `count` scenes to `folder`: images/, masks/ (one PNG per shape), metadata.jsonl (entity boxes).

    With `layouts`, also one layout YAML per scene there (held-out layouts for `eligen eval`), each entity's
    region given as `regions` says; mask regions are PNGs in `layouts/masks/`.
    """
    chosen = scenes(count, seed, size, counts)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    if layouts is not None:
        (layouts / "masks" if regions == "mask" else layouts).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, scene in enumerate(chosen):
        render(scene).save(folder / "images" / f"{i:05d}.png")
        for j, shape in enumerate(scene.shapes):
            Image.fromarray(shape_mask(shape, size)).save(folder / "masks" / f"{i:05d}-{j}.png")
        data = layout_data(scene)
        lines.append(json.dumps({"image": f"images/{i:05d}.png", "prompt": data["prompt"],
                                 "entities": data["entities"]}))
        if layouts is not None:
            masks = [f"masks/{i:05d}-{j}.png" for j in range(len(scene.shapes))]
            if regions == "mask":
                for j, shape in enumerate(scene.shapes):
                    Image.fromarray(shape_mask(shape, size)).save(layouts / masks[j])
            written = layout_data(scene, regions=regions, masks=masks)
            (layouts / f"{i:05d}.yaml").write_text(yaml.safe_dump(written, sort_keys=False), encoding="utf-8")
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return chosen
