"""Validation during training: layouts rendered with the weights being trained (through `render`, with the model's
defaults as `eligen generate` applies them), drawn as one grid with each layout's regions over its image
(`preview.draw_preview`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..dataset import Sample, bucket_masks
from ..layout import Entity, Layout, load_layout
from ..preview import draw_preview
from ..regions import PATCH, entity_masks, mask_data_url
from ..render import Render, prepare_render

if TYPE_CHECKING:
    from ..generate import EligenPipeline

VALIDATION_SEED = 0  # for layouts without a seed


def layout_files(path: Path) -> list[Path]:
    """A layout file, or the `*.yaml` / `*.yml` files of a folder in name order."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    return [path]


def holdout_layout(sample: Sample, base_dir: Path) -> Layout:
    """A held-out dataset line as a layout at its training canvas, its regions inlined as masks."""
    masks = bucket_masks(entity_masks(sample.layout, base_dir, sample.source), sample.bucket)
    entities = [Entity(prompt=e.prompt, mask=mask_data_url(m)) for e, m in zip(sample.layout.entities, masks,
                                                                               strict=True)]
    return Layout(size=sample.bucket, prompt=sample.layout.prompt, entities=entities, loras=[])


def prepare_cases(pipe: EligenPipeline, layouts: list[tuple[Layout, Path, str]],
                  max_sequence_length: int) -> list[Render]:
    """Each (layout, base folder, source) validated for this model, its prompts encoded once (before any text
    encoder is freed); no LoRA but the one being trained."""
    return [prepare_render(pipe, layout.model_copy(update={"loras": [], "max_sequence_length": max_sequence_length}),
                           base_dir=base_dir, source=source) for layout, base_dir, source in layouts]


def read_validation(path: Path | None, held: list[Sample], base_dir: Path) -> list[tuple[Layout, Path, str]]:
    """The validation layouts: the files of `path` and the held-out samples."""
    files = [(load_layout(p), p.parent, str(p)) for p in layout_files(path)] if path is not None else []
    return files + [(holdout_layout(s, base_dir), base_dir, s.source) for s in held]


def render_grid(pipe: EligenPipeline, cases: list[Render]) -> Image.Image:
    """Each case rendered (its first seed, else 0) with its regions drawn over it, in a grid of up to 4 columns."""
    tiles = []
    for case in cases:
        image = case.image((case.layout.seeds or [VALIDATION_SEED])[0]).image
        tiles.append(draw_preview(case.layout, case.masks, case.regions, pipe.scale_factor * PATCH, background=image))
    columns = min(4, len(tiles))
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    grid = Image.new("RGB", (columns * cell_w, math.ceil(len(tiles) / columns) * cell_h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * cell_w, (i // columns) * cell_h))
    return grid
