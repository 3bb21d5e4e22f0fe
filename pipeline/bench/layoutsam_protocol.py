"""LayoutSAM-Eval's scoring protocol, the parts that need no VLM: the image the judge looks at, each region's
crop, the images written as the benchmark's own scripts name them, and the aggregation of the verdicts.

From CreatiLayout's `score_layoutsam_benchmark.py` (and the generation scripts beside it):

* the generated image is saved under the row's `file_name` by PIL (a `.jpg` name: JPEG at PIL's default
  quality, 75) and scored from that file; `protocol_image` re-encodes a generated PNG the same way in memory,
  so the judge sees the pixels the benchmark's scorer would read;
* each region is cut out at `int(fraction * side)` for each coordinate of its normalised box (no margin), and
  the crop alone is shown to the VLM;
* per region, the spatial question first; only when it is answered "yes" the colour, texture and shape
  questions; a region whose spatial answer is not a yes scores 0 in all four dimensions;
* a dimension's score is its "yes" count over every region of every image, as a percentage in the papers'
  tables (the script writes the fraction, rounded to 4 decimals).

Here a question whose answers stay unusable after the re-asks (or whose request fails) counts as not a yes,
as the published script counts every answer without "yes" in it; the count of such failures is reported
beside each score, so a failing judge cannot pass for a bad model.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..outputs import write_atomic
from .items import BenchItem
from .layoutsam import image_format
from .run import Shard, image_path

DIMENSIONS = ("spatial", "color", "texture", "shape")
STATUSES = ("yes", "no", "failed", "not asked")
EXPORT_FOLDER = "layoutsam-images"  # s<seed>/<file_name>: the folder the benchmark's scorer reads, per seed


def score_key(dimension: str) -> str:
    """The per-instance key of a dimension's 0/1 score (its mean over instances is the benchmark's score)."""
    return f"layoutsam_{dimension}"


def status_key(dimension: str) -> str:
    return f"layoutsam_{dimension}_status"


def encoded(image: Image.Image, file_name: str) -> bytes:
    """`image` as the benchmark's generation script writes it under `file_name` (PIL's defaults for its format)."""
    fmt = image_format(file_name)
    if fmt is None:
        raise ValueError(f"PIL cannot write an image named {file_name!r}")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def protocol_image(image: Image.Image, file_name: str) -> Image.Image:
    """The image the benchmark's scorer would read back from the file its generation script saved."""
    with Image.open(io.BytesIO(encoded(image, file_name))) as opened:
        return opened.convert("RGB")


def crop_rect(size: tuple[int, int], box: Sequence[float]) -> tuple[int, int, int, int]:
    """The protocol's crop of a box given in fractions: each coordinate times the side, truncated; ValueError when
    nothing is left (a box under one pixel at this size)."""
    width, height = size
    x1, y1, x2, y2 = (int(box[0] * width), int(box[1] * height), int(box[2] * width), int(box[3] * height))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"the box {list(box)} is under one pixel wide or high in the {width}x{height} image")
    return x1, y1, x2, y2


def region_crops(image: Image.Image, item: BenchItem) -> list[Image.Image | str]:
    """Each instance's crop, or why it has none, in order (the boxes are the layout's fractions)."""
    crops: list[Image.Image | str] = []
    for entity in item.layout.entities:
        if item.layout.units != "fraction" or entity.box is None:
            crops.append("the region is not a box in fractions of the image")
            continue
        try:
            crops.append(image.crop(crop_rect(image.size, entity.box)))
        except ValueError as exc:
            crops.append(str(exc))
    return crops


def export_images(items: Sequence[BenchItem], seeds: Sequence[int], out: Path, file_names: Mapping[str, str],
                  shard: Shard) -> int:
    """Write this shard's generated images as `layoutsam-images/s<seed>/<file_name>`, encoded as the benchmark's
    generation script saves them, so its own scorer can read a seed's folder; returns how many were written
    (one already written from the same image is kept; one older than its image, from an earlier run, is not)."""
    written = 0
    for item, seed in shard.pairs(items, seeds):
        target, source = out / EXPORT_FOLDER / f"s{seed}" / file_names[item.id], image_path(out, item, seed)
        if target.is_file() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns:
            continue
        with Image.open(source) as opened:
            data = encoded(opened, target.name)
        write_atomic(target, lambda tmp, data=data: tmp.write_bytes(data))
        written += 1
    return written


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dimension, over every instance row: the count of each status, the regions, and `score`, the
    percentage of regions answered yes (the benchmark's number; failures count as not yes)."""
    summary: dict[str, dict[str, Any]] = {}
    for dimension in DIMENSIONS:
        counts = dict.fromkeys(STATUSES, 0)
        for row in rows:
            status = row.get(status_key(dimension))
            if status not in counts:
                raise ValueError(f"an instance has no LayoutSAM-Eval {dimension} status (got {status!r})")
            counts[status] += 1
        regions = len(rows)
        summary[dimension] = {"regions": regions, **counts,
                              "score": 100.0 * counts["yes"] / regions if regions else None}
    return summary
