"""`eligen annotate`: caption images and ground their entities with the MLLM, as a training dataset.

The dataset is a folder with `images/` (copies of the inputs, under their own file names) and
`metadata.jsonl`, one line per image: `{"image": "images/NAME", "prompt": ..., "entities":
[{"prompt": ..., "box": [x1, y1, x2, y2]}]}` with boxes in pixels of the upright image (EXIF
orientation applied), the vocabulary of layout files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eligen.pipeline.images import open_rgb
from eligen.pipeline.layout import LayoutError
from eligen.pipeline.outputs import OutputError, check_writable, write_atomic

from .config import Family
from .errors import AgentError
from .layout_yaml import layout_data
from .messages import ChatBackend
from .plan import annotate_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class Annotation:
    """What one image became: its metadata line, or the reason it was skipped."""

    image: Path
    record: dict[str, Any] | None
    problem: str | None = None
    notes: tuple[str, ...] = ()


def image_files(folder: Path) -> list[Path]:
    """The images directly in `folder`, by name."""
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def annotate_images(backend: ChatBackend, family: Family, images: list[Path]) -> Iterator[Annotation]:
    """Caption and ground each image; an unreadable image or an unusable answer skips that image only."""
    for path in images:
        try:
            image = open_rgb(path, str(path), "(image)")
        except LayoutError as exc:
            yield Annotation(path, None, f"not a readable image ({exc.expected})")
            continue
        try:
            result = annotate_image(backend, family, image)
        except AgentError as exc:
            yield Annotation(path, None, str(exc))
            continue
        data = layout_data(result.layout)
        record = {"image": f"images/{path.name}", "prompt": data["prompt"], "entities": data["entities"]}
        yield Annotation(path, record, None, tuple(result.notes))


def write_dataset(results: Iterator[Annotation], dataset: Path, overwrite: bool,
                  report: Callable[[Annotation], None]) -> int:
    """Copy the annotated images into `dataset/images/` and write `metadata.jsonl` (atomically, at the end);
    the number of lines written."""
    metadata = dataset / METADATA
    check_writable([metadata], overwrite)
    lines = []
    for result in results:
        report(result)
        if result.record is None:
            continue
        target = dataset / result.record["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != result.image.resolve():
            shutil.copyfile(result.image, target)
        lines.append(json.dumps(result.record, ensure_ascii=False))
    text = "".join(f"{line}\n" for line in lines)
    write_atomic(metadata, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return len(lines)
