"""COCO-MIG (MIGC, CVPR 2024) as eligen benchmark items, read from the benchmark's own files.

The MIGC repository's `bench_file/` holds `mig_bench.txt` (one global prompt a line, "a photo of a red car and
a blue bus ...") and `mig_bench_anno.yaml` (per prompt: each instance phrase, e.g. "a red car", with a list of
boxes as fractions x0, y0, x1, y1 of the image, and the COCO image id). Each box is one instance; an item's
level is its instance count (L2 ... L6). The item keeps the benchmark's prompt as the global prompt and each
phrase as an entity prompt in its box, as MIGC's own benchmark script passes them; eligen does not ship these
files (the user downloads them, docs/bench.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from ..layout import LayoutError, parse_layout
from ..model_defaults import with_model_defaults
from .items import BenchItem, Instance

PROMPTS_FILE = "mig_bench.txt"
ANNOTATION_FILE = "mig_bench_anno.yaml"
COLOURS = ("red", "yellow", "green", "blue", "white", "black", "brown")  # the benchmark's colour words


def is_coco_mig(path: Path) -> bool:
    """Whether `path` is a COCO-MIG folder (it holds the annotation file) or that annotation file."""
    return (path / ANNOTATION_FILE).is_file() if path.is_dir() else path.name == ANNOTATION_FILE


def benchmark_files(path: Path) -> tuple[Path | None, Path]:
    """The prompts file (None when the folder has none: the annotation's order is used) and the annotation file."""
    folder = path if path.is_dir() else path.parent
    prompts = folder / PROMPTS_FILE
    return (prompts if prompts.is_file() else None), folder / ANNOTATION_FILE


def files_sha256(paths: list[Path]) -> str:
    """One SHA-256 over the files' bytes, in order (recorded in results.json)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def split_phrase(phrase: str) -> tuple[str | None, str]:
    """("red", "teddy bear") from "a red teddy bear"; the colour is None when the phrase has none of COLOURS."""
    words = phrase.split()
    if words and words[0] in ("a", "an"):
        words = words[1:]
    if words and words[0] in COLOURS:
        return words[0], " ".join(words[1:])
    return None, " ".join(words)


def _instances(prompt: str, entry: Any, source: str) -> list[tuple[str, list[float]]]:
    """(phrase, box) for every box of every phrase of one annotation entry, in the file's order."""
    if not isinstance(entry, dict):
        raise LayoutError(source, prompt, f"expected a mapping of phrases to boxes, got {type(entry).__name__}")
    found = []
    for phrase, boxes in entry.items():
        if phrase == "coco_id":
            continue
        if not isinstance(boxes, list) or not boxes:
            raise LayoutError(source, f"{prompt}: {phrase}", "expected a list of boxes [x0, y0, x1, y1]")
        for i, box in enumerate(boxes):
            ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
            if not ok or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
                raise LayoutError(source, f"{prompt}: {phrase}[{i}]",
                                  f"expected a box of 4 fractions x0 < x1, y0 < y1 within 0-1, got {box!r}")
            found.append((str(phrase), [float(v) for v in box]))
    if not found:
        raise LayoutError(source, prompt, "expected at least one instance box")
    return found


def read_coco_mig(path: Path, overrides: dict[str, Any] | None = None) -> list[BenchItem]:
    """The benchmark's prompts as items, in the prompts file's order; `overrides` (model, steps, cfg, ...) apply
    to every layout, and what they leave out comes from the model's defaults (its native size, steps, cfg)."""
    prompts_path, annotation_path = benchmark_files(path)
    source = str(annotation_path)
    try:
        annotation = yaml.safe_load(annotation_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise LayoutError(source, "(file)", f"expected COCO-MIG's annotation YAML ({exc})") from None
    if not isinstance(annotation, dict) or not annotation:
        raise LayoutError(source, "(top level)", "expected a mapping of prompts to their instances")
    if prompts_path is None:
        prompts = list(annotation)
    else:
        prompts = [line.strip() for line in prompts_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        missing = [p for p in prompts if p not in annotation]
        if missing:
            raise LayoutError(str(prompts_path), f"line {prompts.index(missing[0]) + 1}",
                              f"expected a prompt of {ANNOTATION_FILE}, {missing[0]!r} is not in it")
    items = []
    for index, prompt in enumerate(prompts):
        instances = _instances(prompt, annotation[prompt], source)
        data = {"prompt": prompt, "units": "fraction",
                "entities": [{"prompt": phrase, "box": box} for phrase, box in instances]}
        layout = with_model_defaults(parse_layout({**data, **(overrides or {})}, f"{source}: {prompt}"))
        width, height = layout.size
        items.append(BenchItem(
            id=f"{index:04d}", level=f"L{len(instances)}", layout=layout, source=source, base_dir=path,
            instances=tuple(Instance(phrase, (box[0] * width, box[1] * height, box[2] * width, box[3] * height),
                                     colour=split_phrase(phrase)[0], category=split_phrase(phrase)[1])
                            for phrase, box in instances)))
    return items
