"""COCO-MIG (MIGC, CVPR 2024) as eligen benchmark items, read from the benchmark's own files, in either of the
two forms it is published in (eligen ships neither; docs/bench.md says where to get them):

* the MIGC repository's `bench_file/`: `mig_bench.txt` (one global prompt a line, "a photo of a red car and a
  blue bus ...") and `mig_bench_anno.yaml` (per prompt: each instance phrase, e.g. "a red car", with a list of
  boxes as fractions x0, y0, x1, y1, and `coco_id`, the prompt's id);
* MIG_Bench's `sample_prompt_color_split.json`, the file its `eval_mig.py` scores against: per id a `caption`
  and a `segment` list of instances, each a `label` ("red car": the colour, then the object) and a `bbox` in
  fractions.

Each box is one instance; an item's level is its instance count (L2 ... L6, as eval_mig.py groups them). The
item keeps the benchmark's prompt as the global prompt and each phrase (or label) as an entity prompt in its
box, as the benchmark's own generation script passes them. Item ids are the benchmark's ids, so images are
named `s<seed>_<id>.png` and the benchmark's own eval_mig.py can read the same folder: it takes the id back as the
text between the last `_` and the first `.`, so an id is a non-negative integer (digits only), unique in its file.
Every phrase starts with one of the benchmark's colour words (after an article), as eval_mig.py reads its first
word as the colour to check.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from ..layout import LayoutError, parse_layout
from ..model_defaults import with_model_defaults
from ..structured_text import NestingError, load_json, load_yaml
from .items import BenchItem, Instance

PROMPTS_FILE = "mig_bench.txt"
ANNOTATION_FILE = "mig_bench_anno.yaml"
SPLIT_FILE = "sample_prompt_color_split.json"
COLOURS = ("red", "yellow", "green", "blue", "white", "black", "brown")  # the benchmark's colour words


def is_coco_mig(path: Path) -> bool:
    """Whether `path` is a COCO-MIG folder (holding one of its annotation files) or one of those files."""
    if path.is_dir():
        return (path / ANNOTATION_FILE).is_file() or (path / SPLIT_FILE).is_file()
    return path.name in (ANNOTATION_FILE, SPLIT_FILE)


def benchmark_files(path: Path) -> list[Path]:
    """The files the items are read from: MIG_Bench's JSON, else the annotation YAML with the prompts file
    (when there is one; without it, the annotation's order is used)."""
    folder = path if path.is_dir() else path.parent
    if path.name == SPLIT_FILE or (path.is_dir() and (folder / SPLIT_FILE).is_file()):
        return [folder / SPLIT_FILE]
    prompts = folder / PROMPTS_FILE
    return [folder / ANNOTATION_FILE, *([prompts] if prompts.is_file() else [])]


def files_sha256(paths: list[Path]) -> str:
    """One SHA-256 over the files' bytes, in order (recorded in results.json)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def split_phrase(phrase: str) -> tuple[str | None, str]:
    """("red", "teddy bear") from "a red teddy bear" (or MIG_Bench's "red teddy bear"); the colour is None when
    the phrase has none of COLOURS."""
    words = phrase.split()
    if words and words[0] in ("a", "an"):
        words = words[1:]
    if words and words[0] in COLOURS:
        return words[0], " ".join(words[1:])
    return None, " ".join(words)


def _phrase(phrase: Any, source: str, field: str) -> str:
    """A phrase or label of the benchmark: text whose first word (after an article) is one of COLOURS."""
    if not isinstance(phrase, str) or split_phrase(phrase)[0] is None or not split_phrase(phrase)[1]:
        raise LayoutError(source, field, f"expected a phrase like 'a red car': one of the benchmark's colours "
                          f"({', '.join(COLOURS)}), then the object, got {phrase!r}",
                          "COCO-MIG scores every instance's colour; its scorer knows no other colour words")
    return phrase


def _item_id(value: Any, source: str, field: str) -> str:
    """The benchmark's id as the file name part eval_mig.py reads back: a non-negative integer, as written."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isascii() or not text.isdigit():
        raise LayoutError(source, field, f"expected a non-negative integer id (the benchmark's ids are 0-799), "
                          f"got {value!r}", "images are named s<seed>_<id>.png and read back by that id")
    return text


def _unique(entries: list[tuple[str, str, Any]], source: str, what: str) -> None:
    """Two entries with one id would write one image file: refuse, naming both."""
    seen: dict[str, str] = {}
    for item_id, prompt, _ in entries:
        if item_id in seen:
            raise LayoutError(source, f"{prompt}: {what}", f"expected ids unique in the file, {item_id!r} is also "
                              f"the id of {seen[item_id]!r}", "each id names one image file")
        seen[item_id] = prompt


def _box(box: Any, source: str, field: str) -> list[float]:
    ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
    if not ok or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise LayoutError(source, field, f"expected a box of 4 fractions x0 < x1, y0 < y1 within 0-1, got {box!r}")
    return [float(v) for v in box]


def _instances(prompt: str, entry: Any, source: str) -> list[tuple[str, list[float]]]:
    """(phrase, box) for every box of every phrase of one annotation entry, in the file's order."""
    if not isinstance(entry, dict):
        raise LayoutError(source, prompt, f"expected a mapping of phrases to boxes, got {type(entry).__name__}")
    found = []
    for phrase, boxes in entry.items():
        if phrase == "coco_id":
            continue
        _phrase(phrase, source, f"{prompt}: {phrase}")
        if not isinstance(boxes, list) or not boxes:
            raise LayoutError(source, f"{prompt}: {phrase}", "expected a list of boxes [x0, y0, x1, y1]")
        for i, box in enumerate(boxes):
            found.append((phrase, _box(box, source, f"{prompt}: {phrase}[{i}]")))
    if not found:
        raise LayoutError(source, prompt, "expected at least one instance box")
    return found


def _split_entries(path: Path) -> list[tuple[str, str, list[tuple[str, list[float]]]]]:
    """(id, caption, [(label, box)]) of MIG_Bench's JSON, in the file's order."""
    source = str(path)
    try:
        data = load_json(path.read_text(encoding="utf-8"), object_pairs_hook=_pairs)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError and NestingError are ValueErrors
        raise LayoutError(source, "(file)", f"expected MIG_Bench's JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise LayoutError(source, "(top level)", "expected a mapping of ids to {caption, segment}")
    entries = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
            raise LayoutError(source, f"{key}.caption", "expected a caption string")
        segment = entry.get("segment")
        if not isinstance(segment, list) or not segment:
            raise LayoutError(source, f"{key}.segment", "expected a list of {label, bbox}")
        found = []
        for i, instance in enumerate(segment):
            label = instance.get("label") if isinstance(instance, dict) else None
            found.append((_phrase(label, source, f"{key}.segment[{i}].label"),
                          _box(instance.get("bbox"), source, f"{key}.segment[{i}].bbox")))
        entries.append((_item_id(key, source, f"{key} (id)"), entry["caption"], found))
    _unique(entries, source, "id")
    return entries


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that refuses a key given twice (json keeps the last one silently: two items, one image)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key!r} is given twice in one object")
        data[key] = value
    return data


def _yaml_entries(path: Path) -> list[tuple[str, str, list[tuple[str, list[float]]]]]:
    """(id, prompt, [(phrase, box)]) of MIGC's annotation YAML, in the prompts file's order when there is one."""
    annotation_path, *rest = benchmark_files(path)
    source = str(annotation_path)
    try:
        annotation = load_yaml(annotation_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, NestingError) as exc:
        raise LayoutError(source, "(file)", f"expected COCO-MIG's annotation YAML ({exc})") from None
    if not isinstance(annotation, dict) or not annotation:
        raise LayoutError(source, "(top level)", "expected a mapping of prompts to their instances")
    if not rest:
        prompts = list(annotation)
    else:
        try:
            prompts = [line.strip() for line in rest[0].read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise LayoutError(str(rest[0]), "(file)", f"expected UTF-8 text, one prompt a line ({exc})") from None
        if not prompts:
            raise LayoutError(str(rest[0]), "(file)", f"expected one prompt of {ANNOTATION_FILE} a line, the file "
                              "has none", f"remove it to use {ANNOTATION_FILE}'s own order")
        missing = [p for p in prompts if p not in annotation]
        if missing:
            raise LayoutError(str(rest[0]), f"line {prompts.index(missing[0]) + 1}",
                              f"expected a prompt of {ANNOTATION_FILE}, {missing[0]!r} is not in it")
    entries = []
    for index, prompt in enumerate(prompts):
        instances = _instances(prompt, annotation[prompt], source)
        coco_id = annotation[prompt].get("coco_id")
        item_id = str(index) if coco_id is None else _item_id(coco_id, source, f"{prompt}: coco_id")
        entries.append((item_id, prompt, instances))
    _unique(entries, source, "coco_id")
    return entries


def read_coco_mig(path: Path, overrides: dict[str, Any] | None = None) -> list[BenchItem]:
    """The benchmark's prompts as items, in its files' order; `overrides` (model, steps, cfg, ...) apply to every
    layout, and what they leave out comes from the model's defaults (its native size, steps, cfg)."""
    files = benchmark_files(path)
    entries = _split_entries(files[0]) if files[0].name == SPLIT_FILE else _yaml_entries(path)
    items = []
    for item_id, prompt, instances in entries:
        data = {"prompt": prompt, "units": "fraction",
                "entities": [{"prompt": phrase, "box": box} for phrase, box in instances]}
        layout = with_model_defaults(parse_layout({**data, **(overrides or {})}, f"{files[0]}: {item_id}"))
        width, height = layout.size
        items.append(BenchItem(
            id=item_id, level=f"L{len(instances)}", layout=layout, source=str(files[0]), base_dir=files[0].parent,
            instances=tuple(Instance(phrase, (box[0] * width, box[1] * height, box[2] * width, box[3] * height),
                                     colour=split_phrase(phrase)[0], category=split_phrase(phrase)[1])
                            for phrase, box in instances)))
    return items
