"""What the browser sends, validated exactly as the CLI validates files: layouts, edits, uploaded files.

Everything from the browser is untrusted. The studio reads no file on the server for it but those the person
listed when starting it (paths.py): masks and colour masks are inline PNGs (data URLs) or files uploaded in the
same request, and the model and transformer are always the server's own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from eligen.pipeline.images import to_rgb
from eligen.pipeline.layout import (
    DATA_URL_PREFIX,
    Edits,
    Layout,
    LayoutError,
    layout_data_from_bytes,
    parse_edits,
    parse_layout,
)
from eligen.pipeline.model_defaults import with_model_defaults
from eligen.pipeline.outputs import png_bytes, read_png_metadata
from eligen.pipeline.regions import entity_masks, inline_masks, mask_data_url

from .paths import Allowed, checked_paths

MAX_FILE_BYTES = 20 * 1024 * 1024  # one uploaded file
MAX_YAML_BYTES = 2 * 1024 * 1024
MAX_PIXELS = 4096 * 4096  # an uploaded image, before any decoding beyond its header
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_COLOURS = 32  # distinct colours of a colour-coded region PNG
OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")  # what a message must not show the browser
SERVER_KEYS = ("model", "transformer")  # the server's, never the browser's
NO_FOLDER = Path("/nonexistent/eligen-studio")  # the base folder of browser layouts: their masks are inline


@dataclass(frozen=True)
class Upload:
    """A file from the browser: its name (the last path part only) and bytes."""

    name: str
    data: bytes


def uploads(items: Any, source: str = "upload") -> list[Upload]:
    """`[{name, data (base64)}]` -> Uploads, refusing what is not that or is too large."""
    if not isinstance(items, list) or not items:
        raise LayoutError(source, "(files)", "expected one or more files")
    result = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("data"), str):
            raise LayoutError(source, f"files[{i}]", "expected a file with a name and base64 data")
        name = re.split(r"[\\/]", item["name"])[-1] or "upload"
        try:
            data = base64.b64decode(item["data"], validate=True)
        except (binascii.Error, ValueError):
            raise LayoutError(name, "(file)", "expected base64 file data") from None
        if len(data) > MAX_FILE_BYTES:
            raise LayoutError(name, "(file)", f"expected at most {MAX_FILE_BYTES // 2**20} MiB, got "
                              f"{len(data) / 2**20:.1f} MiB")
        result.append(Upload(name, data))
    return result


def open_image(upload: Upload) -> Image.Image:
    """An uploaded PNG, JPEG or WebP within MAX_PIXELS, as every command reads images: upright (EXIF orientation
    applied) and RGB, transparency composited on white."""
    try:
        image = Image.open(io.BytesIO(upload.data))
        if image.format not in IMAGE_FORMATS:
            raise LayoutError(upload.name, "(image)", f"expected a PNG, JPEG or WebP image, got {image.format}")
        if image.width * image.height > MAX_PIXELS:
            raise LayoutError(upload.name, "(image)", f"expected at most {MAX_PIXELS} pixels, got "
                              f"{image.width}x{image.height}")
        return to_rgb(image)
    except UnidentifiedImageError:
        raise LayoutError(upload.name, "(image)", "expected a readable PNG, JPEG or WebP image, this is none of "
                          "them") from None
    except (OSError, Image.DecompressionBombError) as exc:
        reason = OBJECT_REPR.sub("the file", str(exc))
        raise LayoutError(upload.name, "(image)", f"expected a readable PNG, JPEG or WebP image ({reason})") from None


@dataclass(frozen=True)
class SourceImage:
    """An image to inpaint, as `eligen inpaint` reads it: upright RGB, its file name and the SHA-256 of its bytes."""

    name: str
    image: Image.Image
    sha256: str


def source_image(upload: Upload) -> SourceImage:
    return SourceImage(upload.name, open_image(upload), hashlib.sha256(upload.data).hexdigest())


def png_of(image: Image.Image) -> bytes:
    """An image as PNG bytes (for showing an upright source image in the page)."""
    return png_bytes(image)


def _server_data(data: Any, model: str, allowed: Allowed, source: str, transformer: str | None = None
                 ) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise LayoutError(source, "(top level)", f"expected a mapping of keys, got {type(data).__name__}")
    data = checked_paths(data, allowed, model, transformer, source)
    server = {"model": model} if transformer is None else {"model": model, "transformer": transformer}
    return {**data, **server}


def browser_layout(data: Any, model: str, allowed: Allowed, source: str = "layout",
                   transformer: str | None = None) -> Layout:
    """A layout from the browser, validated as a layout file, on the server's model (and its `transformer`); what it
    leaves out (size, steps, cfg) comes from the model's defaults, as in `eligen generate`."""
    return with_model_defaults(parse_layout(_server_data(data, model, allowed, source, transformer), source))


def browser_edits(data: Any, image_size: tuple[int, int], model: str, allowed: Allowed,
                  source: str = "edits", transformer: str | None = None) -> Edits:
    """Edits from the browser for an image of `image_size`, validated as an edits file, on the server's model (and
    its `transformer`)."""
    data = _server_data(data, model, allowed, source, transformer)
    data.pop("size", None)
    return parse_edits(data, image_size, source)


DRAFT_PROMPT = "a"  # stands in for a prompt not typed yet while the regions are checked


def with_draft_prompts(data: Any) -> tuple[Any, list[str]]:
    """Layout data whose blank (or missing) prompts are a stand-in, and the fields that were blank: the regions of a
    layout being drawn can be checked before its prompts are written."""
    if not isinstance(data, dict):
        return data, []
    blank: list[str] = []

    def filled(item: dict[str, Any], field: str) -> dict[str, Any]:
        value = item.get("prompt")
        if value is None or (isinstance(value, str) and not value.strip()):
            blank.append(field)
            return {**item, "prompt": DRAFT_PROMPT}
        return item

    data = filled(data, "prompt")
    if isinstance(data.get("entities"), list):
        data = {**data, "entities": [filled(e, f"entities[{i}].prompt") if isinstance(e, dict) else e
                                     for i, e in enumerate(data["entities"])]}
    return data, blank


def layout_json(layout: Layout, masks: list[np.ndarray]) -> dict[str, Any]:
    """A validated layout as the browser holds it: every mask and colour region inline."""
    data = inline_masks(layout, masks).model_dump(mode="json", exclude_none=True)
    for key in SERVER_KEYS:
        data.pop(key, None)
    return data


def _with_uploaded_files(data: Any, files: dict[str, Upload], source: str, allowed: Allowed) -> Any:
    """Layout data whose mask files name files uploaded with it (or allowed ones), with the uploaded files
    inlined."""
    if not isinstance(data, dict):
        return data

    def inline(value: Any, field: str) -> Any:
        if not isinstance(value, str) or value.startswith(DATA_URL_PREFIX) or value in allowed.files:
            return value
        if value not in files:
            raise LayoutError(source, field, f"expected a file uploaded with the layout, {value!r} was not",
                              "drop the layout together with its mask files; the studio reads no files on the "
                              "server")
        open_image(files[value])  # type and size checks
        return DATA_URL_PREFIX + base64.b64encode(files[value].data).decode("ascii")

    data = dict(data)
    if "color_mask" in data:
        data["color_mask"] = inline(data["color_mask"], "color_mask")
    if isinstance(data.get("entities"), list):
        data["entities"] = [
            {**e, "mask": inline(e["mask"], f"entities[{i}].mask")} if isinstance(e, dict) and "mask" in e else e
            for i, e in enumerate(data["entities"])]
    return data


@dataclass(frozen=True)
class Restored:
    """A layout (or edits) recovered from files dropped on the studio."""

    kind: str  # "layout" or "edits"
    data: dict[str, Any]  # as the browser holds it (`layout_json`)
    notes: list[str]


def _model_note(data: Any, model: str) -> list[str]:
    theirs = data.get("model") if isinstance(data, dict) else None
    if isinstance(theirs, str) and theirs != model:
        return [f"made for the model {theirs}; the studio runs {model}"]
    return []


def restore(files: list[Upload], model: str, allowed: Allowed, image_size: tuple[int, int] | None,
            transformer: str | None = None) -> Restored:
    """The layout of a PNG written by eligen, or of a layout YAML (with the mask files it names, uploaded with
    it), opened on the studio's model and transformer (the file's are noted). With `image_size` (inpaint mode) edits
    are restored, validated against that image size."""
    yamls = [f for f in files if f.name.lower().endswith((".yaml", ".yml"))]
    if yamls:
        upload = yamls[0]
        if len(upload.data) > MAX_YAML_BYTES:
            raise LayoutError(upload.name, "(file)", f"expected at most {MAX_YAML_BYTES // 2**20} MiB of YAML")
        raw = layout_data_from_bytes(upload.data, upload.name)
        data = _with_uploaded_files(raw, {f.name: f for f in files if f is not upload}, upload.name, allowed)
        kind = "edits" if image_size is not None else "layout"
    else:
        upload = files[0]
        open_image(upload)
        try:
            metadata = read_png_metadata(io.BytesIO(upload.data)) or {}
        except ValueError as exc:
            raise LayoutError(upload.name, "(metadata)", f"expected readable eligen metadata ({exc})") from None
        if image_size is not None and isinstance(metadata.get("edits"), dict):
            kind, raw = "edits", metadata["edits"]
        elif isinstance(metadata.get("layout"), dict):
            kind, raw = "layout", metadata["layout"]
        else:
            what = "an edits or layout" if image_size is not None else "a layout"
            raise LayoutError(upload.name, "(metadata)", f"expected a PNG written by eligen with {what} embedded, "
                              "it has none", "drop a PNG made by eligen or a layout YAML")
        data = raw
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in SERVER_KEYS}
    if kind == "edits":
        assert image_size is not None
        layout: Layout = browser_edits(data, image_size, model, allowed, upload.name, transformer)
    else:
        layout = browser_layout(data, model, allowed, upload.name, transformer)
    masks = entity_masks(layout, NO_FOLDER, upload.name, same_size=kind == "edits")
    return Restored(kind, layout_json(layout, masks), _model_note(raw, model))


def colour_regions(upload: Upload) -> list[dict[str, str]]:
    """The regions of a colour-coded PNG: one `{color, mask}` per colour other than black and white (at most
    MAX_COLOURS), the mask an inline PNG, most pixels first."""
    rgb = np.asarray(open_image(upload))
    packed = rgb.reshape(-1, 3).astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
    values, counts = np.unique(packed, return_counts=True)
    colours = [int(v) for v in values[np.argsort(-counts)] if v not in (0, 0xFFFFFF)]
    if not colours:
        raise LayoutError(upload.name, "(image)", "expected regions in colours other than black and white")
    if len(colours) > MAX_COLOURS:
        raise LayoutError(upload.name, "(image)", f"expected at most {MAX_COLOURS} region colours, got "
                          f"{len(colours)}", "is it a photo? a colour-coded PNG has flat colours, one per entity")
    flat = packed.reshape(rgb.shape[:2])
    return [{"color": f"#{c:06x}", "mask": mask_data_url(flat == c)} for c in colours]
