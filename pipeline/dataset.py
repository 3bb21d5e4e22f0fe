"""Training datasets: a folder with `metadata.jsonl`, validated line by line before any step.

One sample a line: `image`, `prompt` and `entities` (each `{prompt, box | polygon | mask | color}`,
the vocabulary of layout files), or the reference implementation's `eligen_entity_prompts` +
`eligen_entity_masks`. Every line becomes a layout at its image's own size, so regions are
checked and rasterised by `regions.py` exactly as layouts are; the masks are then resized to the
sample's training canvas (its aspect-ratio bucket) and turned into token regions by the same rule
as at inference. No torch here: `eligen train --check` stays light. See docs/dataset-format.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import field_validator

from .images import open_rgb
from .layout import DATA_URL_PREFIX, Layout, LayoutError, PositiveInt, parse_layout
from .regions import entity_masks, token_masks
from .structured_text import NestingError, load_json

METADATA_NAMES = ("metadata.jsonl", "metadata.json")
LINE_KEYS = ("image", "prompt", "entities", "units", "color_mask", "eligen_entity_prompts", "eligen_entity_masks")
REFERENCE_KEYS = ("eligen_entity_prompts", "eligen_entity_masks")
EXIF_ORIENTATION = 0x0112  # values 5..8 mean the image is stored rotated by 90 degrees


class SampleLayout(Layout):
    """A dataset line as a layout at its image's own size (any size): `px` means the image's pixels."""

    size: tuple[PositiveInt, PositiveInt]

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, value: tuple[int, int]) -> tuple[int, int]:
        return value  # the image's size; the training canvas is its bucket


@dataclass(frozen=True)
class Sample:
    """One validated training sample."""

    index: int  # position in the metadata file, from 0
    source: str  # `FILE:N`, N the line (or record) number, for messages
    image: Path
    layout: SampleLayout  # prompt and entities, at the image's own size
    bucket: tuple[int, int]  # training canvas (width, height)
    packed_regions: np.ndarray  # (k, ceil(n_tokens / 8)) uint8: token regions at the bucket, bit-packed
    n_tokens: int  # image tokens at the bucket

    @property
    def entity_prompts(self) -> list[str]:
        return [e.prompt for e in self.layout.entities]

    def token_regions(self) -> np.ndarray:
        """(k, n_tokens) bool token regions at the bucket, in packed-latent order."""
        return np.unpackbits(self.packed_regions, axis=1, count=self.n_tokens).astype(bool)


@dataclass(frozen=True)
class Dataset:
    """A validated dataset: where it lives and its samples in file order."""

    metadata: Path
    base_dir: Path
    samples: list[Sample]

    def buckets(self) -> dict[tuple[int, int], int]:
        """Samples per training canvas."""
        counts: dict[tuple[int, int], int] = {}
        for sample in self.samples:
            counts[sample.bucket] = counts.get(sample.bucket, 0) + 1
        return counts


class DatasetError(ValueError):
    """Problems with a dataset, one `LayoutError` per bad line (each names `FILE:LINE` and the field)."""

    def __init__(self, problems: list[LayoutError]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def metadata_file(data: Path) -> Path:
    """The metadata file of `--data`: the file itself, else `metadata.jsonl` (or `metadata.json`) in the folder."""
    if data.is_file():
        return data
    for name in METADATA_NAMES:
        if (data / name).is_file():
            return data / name
    what = "the folder has none" if data.is_dir() else "it does not exist"
    problem = LayoutError(str(data), "(dataset)", f"expected a dataset folder with metadata.jsonl, {what}")
    raise DatasetError([problem])


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(number, record) pairs: JSON Lines by line number (blank lines skipped), a `.json` list by record number.

    A line that is not JSON yields a `LayoutError` in place of its record.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError([LayoutError(source, "(file)", "expected a UTF-8 text file")]) from None
    if path.suffix == ".json":
        try:
            records = load_json(text)
        except json.JSONDecodeError as exc:
            raise DatasetError([LayoutError(f"{source}:{exc.lineno}", "(json)", f"expected valid JSON: {exc.msg}")]) \
                from None
        except NestingError as exc:
            raise DatasetError([LayoutError(source, "(json)", str(exc))]) from None
        if not isinstance(records, list):
            raise DatasetError([LayoutError(source, "(top level)", "expected a JSON list of samples")])
        yield from enumerate(records, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, load_json(line)
        except json.JSONDecodeError as exc:
            yield number, LayoutError(f"{source}:{number}", "(json)", f"expected one JSON object, {exc.msg} "
                                      f"at column {exc.colno}")
        except NestingError as exc:
            yield number, LayoutError(f"{source}:{number}", "(json)", str(exc))


def bucket_size(width: int, height: int, resolution: int, step: int) -> tuple[int, int]:
    """The training canvas of a width x height image: its aspect ratio, about resolution^2 pixels, sides multiples
    of `step` (images sharing a canvas share batches)."""
    scale = resolution / math.sqrt(width * height)
    return max(step, round(width * scale / step) * step), max(step, round(height * scale / step) * step)


def inside(base_dir: Path, reference: str, source: str, field: str) -> Path:
    """`reference` resolved against the dataset folder, refused when it leads outside it."""
    path = Path(reference)
    resolved = (base_dir / path).resolve()
    if path.is_absolute() or not resolved.is_relative_to(base_dir.resolve()):
        raise LayoutError(source, field, f"expected a path inside the dataset folder, {reference!r} leads outside it",
                          "give paths relative to the folder of the metadata file, without `..`")
    return resolved


def image_size(path: Path, source: str, decode: bool) -> tuple[int, int]:
    """(width, height) of an image as shown (EXIF rotation applied); `decode` reads every pixel, not just the header."""
    if not path.is_file():
        raise LayoutError(source, "image", f"expected an image file, {path} does not exist")
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            width, height = image.size
            rotated = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise LayoutError(source, "image", f"expected a readable image, could not decode {path.name} ({exc})") from None
    return (height, width) if rotated else (width, height)


def load_image(sample: Sample) -> Image.Image:
    """The sample's image, upright and RGB, resized to its bucket (a change of aspect ratio of at most half a bucket
    step per side)."""
    image = open_rgb(Path(sample.image), str(sample.image), "image")
    return image.resize(sample.bucket, Image.Resampling.LANCZOS)


def _reference_entities(record: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The reference's `eligen_entity_prompts` + `eligen_entity_masks` as entities with mask regions."""
    for key in REFERENCE_KEYS:
        value = record.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            other = REFERENCE_KEYS[1 - REFERENCE_KEYS.index(key)]
            expected = "a list of strings" if key in record else f"this key with {other}"
            raise LayoutError(source, key, f"expected {expected}, got {value!r}"[:200])
    prompts, masks = record["eligen_entity_prompts"], record["eligen_entity_masks"]
    if len(prompts) != len(masks):
        raise LayoutError(source, "eligen_entity_masks", f"expected one mask per entity prompt, got {len(masks)} masks "
                          f"for {len(prompts)} prompts")
    return [{"prompt": p, "mask": m} for p, m in zip(prompts, masks, strict=True)]


def _reference_field(error: LayoutError) -> LayoutError:
    """Name a reference-style line's fields as the line does (`entities[2].mask` -> `eligen_entity_masks[2]`)."""
    match = re.fullmatch(r"entities\[(\d+)\]\.(prompt|mask)", error.field)
    if match is None:
        return error
    key = {"prompt": "eligen_entity_prompts", "mask": "eligen_entity_masks"}[match[2]]
    return LayoutError(error.source, f"{key}[{match[1]}]", error.expected, error.hint)


def _check_paths(layout: SampleLayout, base_dir: Path, source: str) -> None:
    """Mask and colour-mask files must lie inside the dataset folder (inline data URLs are fine)."""
    references = [("color_mask", layout.color_mask)] + [
        (f"entities[{i}].mask", e.mask) for i, e in enumerate(layout.entities)
    ]
    for field, reference in references:
        if reference is not None and not reference.startswith(DATA_URL_PREFIX):
            inside(base_dir, reference, source, field)


def bucket_masks(masks: list[np.ndarray], bucket: tuple[int, int]) -> list[np.ndarray]:
    """Pixel masks at the image's size resized to the training canvas (nearest: no grey edges)."""
    return [np.asarray(Image.fromarray(m).resize(bucket, Image.Resampling.NEAREST)) for m in masks]


def bucket_regions(masks: list[np.ndarray], layout: SampleLayout, bucket: tuple[int, int], scale_factor: int,
                   source: str) -> np.ndarray:
    """Pixel masks at the image's size -> (k, n_tokens) token regions at the training canvas, by the inference rule
    of `regions.token_masks`."""
    return token_masks(bucket_masks(masks, bucket), scale_factor, layout.model_copy(update={"size": bucket}), source)


def parse_sample(record: Any, index: int, source: str, base_dir: Path, scale_factor: int, resolution: int,
                 step: int, decode: bool = False) -> Sample:
    """Validate one record of the metadata file; a problem raises `LayoutError` naming `source` and the field."""
    if isinstance(record, LayoutError):
        raise record
    if not isinstance(record, dict):
        raise LayoutError(source, "(top level)", f"expected a JSON object, got {type(record).__name__}")
    unknown = [key for key in record if key not in LINE_KEYS]
    if unknown:
        raise LayoutError(source, str(unknown[0]), "unknown key", f"known keys here: {', '.join(LINE_KEYS)}")
    reference = any(key in record for key in REFERENCE_KEYS)
    if reference and "entities" in record:
        raise LayoutError(source, "entities", "expected either `entities` or the reference's eligen_entity_prompts "
                          "and eligen_entity_masks, not both")
    reference_image = record.get("image")
    if not isinstance(reference_image, str) or not reference_image:
        expected = "this key is required" if "image" not in record else f"expected a file name, got {reference_image!r}"
        raise LayoutError(source, "image", expected, "the image file, relative to the folder of the metadata file")
    path = inside(base_dir, reference_image, source, "image")
    size = image_size(path, source, decode)
    data = {key: record[key] for key in ("prompt", "entities", "units", "color_mask") if key in record}
    try:
        if reference:
            data["entities"] = _reference_entities(record, source)
        layout = parse_layout({**data, "size": list(size)}, source, SampleLayout)
        _check_paths(layout, base_dir, source)
        masks = entity_masks(layout, base_dir, source)
        bucket = bucket_size(*size, resolution, step)
        regions = bucket_regions(masks, layout, bucket, scale_factor, source)
    except LayoutError as exc:
        raise _reference_field(exc) if reference else exc from None
    n_tokens = bucket[0] * bucket[1] // (2 * scale_factor) ** 2
    return Sample(index, source, path, layout, bucket, np.packbits(regions.reshape(-1, n_tokens), axis=1), n_tokens)


def read_dataset(data: Path, scale_factor: int, resolution: int, step: int, decode: bool = False) -> Dataset:
    """Read and validate every line of a dataset; raises `DatasetError` listing every bad line."""
    if step % (2 * scale_factor) or resolution % step:
        raise DatasetError([LayoutError("(options)", "bucket_step", f"expected a multiple of {2 * scale_factor} (one "
                                        f"token) that divides the resolution {resolution}, got {step}")])
    metadata = metadata_file(data)
    base_dir = metadata.parent
    samples: list[Sample] = []
    problems: list[LayoutError] = []
    for number, record in read_records(metadata):
        source = f"{metadata}:{number}"
        try:
            samples.append(parse_sample(record, len(samples) + len(problems), source, base_dir, scale_factor,
                                        resolution, step, decode))
        except LayoutError as exc:
            problems.append(exc)
    if not samples and not problems:
        problems.append(LayoutError(str(metadata), "(file)", "expected at least one sample, the file has none"))
    if problems:
        raise DatasetError(problems)
    return Dataset(metadata, base_dir, samples)
