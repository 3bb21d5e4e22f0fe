"""What the browser sends, validated exactly as the CLI validates files: layouts, edits, uploaded files.

Everything from the browser is untrusted. The studio reads no file on the server for it: masks and colour masks
must be inline PNGs (data URLs) or files uploaded in the same request, LoRAs the files the server was started
with or hub ids, and the model is always the server's own.
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
from PIL import Image, ImageOps, UnidentifiedImageError

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

MAX_FILE_BYTES = 20 * 1024 * 1024  # one uploaded file
MAX_YAML_BYTES = 2 * 1024 * 1024
MAX_PIXELS = 4096 * 4096  # an uploaded image, before any decoding beyond its header
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_COLOURS = 32  # distinct colours of a colour-coded region PNG
HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
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
    """An uploaded PNG, JPEG or WebP, upright (EXIF orientation applied) and RGB, within MAX_PIXELS."""
    try:
        image = Image.open(io.BytesIO(upload.data))
        if image.format not in IMAGE_FORMATS:
            raise LayoutError(upload.name, "(image)", f"expected a PNG, JPEG or WebP image, got {image.format}")
        if image.width * image.height > MAX_PIXELS:
            raise LayoutError(upload.name, "(image)", f"expected at most {MAX_PIXELS} pixels, got "
                              f"{image.width}x{image.height}")
        return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise LayoutError(upload.name, "(image)", f"expected a readable PNG, JPEG or WebP image ({exc})") from None


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


def _check_loras(data: dict[str, Any], server_loras: list[str], source: str) -> dict[str, Any]:
    """The layout's and every entity's LoRAs checked by `_checked_loras`."""
    entities = data.get("entities")
    if isinstance(entities, list):
        entities = [{**e, "loras": _checked_loras(e["loras"], server_loras, source, f"entities[{i}].loras")}
                    if isinstance(e, dict) and isinstance(e.get("loras"), list) else e
                    for i, e in enumerate(entities)]
        data = {**data, "entities": entities}
    loras = data.get("loras")
    if not isinstance(loras, list):
        return data
    return {**data, "loras": _checked_loras(loras, server_loras, source, "loras")}


def _checked_loras(loras: list[Any], server_loras: list[str], source: str, field: str) -> list[Any]:
    """LoRAs may be the server's files (by their path) or hub ids; `repo/path/file.safetensors` becomes `path: repo`
    with `file:`, so nothing is looked up on the server's disk."""
    checked = []
    for i, spec in enumerate(loras):
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            checked.append(spec)  # the schema explains what is wrong
            continue
        path, file = spec["path"], spec.get("file")
        if path in server_loras and file is None:
            checked.append(spec)
            continue
        parts = path.split("/")
        if file is None and len(parts) >= 3 and path.endswith(".safetensors"):
            path, file = "/".join(parts[:2]), "/".join(parts[2:])
        if not (HUB_REPO.fullmatch(path) and isinstance(file, str) and file and ".." not in file.split("/")
                and not file.startswith("/")):
            allowed = ", ".join(server_loras) or "none"
            raise LayoutError(source, f"{field}[{i}].path", "expected a LoRA the studio was started with (--lora) or "
                              f"a hub LoRA (repo-id/path/in/repo.safetensors), got {spec['path']!r}",
                              f"the studio's LoRAs: {allowed}")
        checked.append({**spec, "path": path, "file": file})
    return checked


def _check_inline(data: dict[str, Any], source: str) -> None:
    """Masks must be inline PNGs: the browser cannot name files on the server."""
    references = [("color_mask", data.get("color_mask"))]
    entities = data.get("entities")
    if isinstance(entities, list):
        references += [(f"entities[{i}].mask", e.get("mask")) for i, e in enumerate(entities) if isinstance(e, dict)]
    for field, value in references:
        if isinstance(value, str) and not value.startswith(DATA_URL_PREFIX):
            raise LayoutError(source, field, f"expected an inline PNG ({DATA_URL_PREFIX}...) or a file uploaded "
                              f"with the layout, got {value[:80]!r}", "the studio reads no files on the server")


def _server_data(data: Any, model: str, server_loras: list[str], source: str, transformer: str | None = None
                 ) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise LayoutError(source, "(top level)", f"expected a mapping of keys, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in SERVER_KEYS}
    _check_inline(data, source)
    server = {"model": model} if transformer is None else {"model": model, "transformer": transformer}
    return {**_check_loras(data, server_loras, source), **server}


def browser_layout(data: Any, model: str, server_loras: list[str], source: str = "layout",
                   transformer: str | None = None) -> Layout:
    """A layout from the browser, validated as a layout file, on the server's model (and its `transformer`); what it
    leaves out (size, steps, cfg) comes from the model's defaults, as in `eligen generate`."""
    return with_model_defaults(parse_layout(_server_data(data, model, server_loras, source, transformer), source))


def browser_edits(data: Any, image_size: tuple[int, int], model: str, server_loras: list[str],
                  source: str = "edits", transformer: str | None = None) -> Edits:
    """Edits from the browser for an image of `image_size`, validated as an edits file, on the server's model (and
    its `transformer`)."""
    data = _server_data(data, model, server_loras, source, transformer)
    data.pop("size", None)
    return parse_edits(data, image_size, source)


def layout_json(layout: Layout, masks: list[np.ndarray]) -> dict[str, Any]:
    """A validated layout as the browser holds it: every mask and colour region inline."""
    data = inline_masks(layout, masks).model_dump(mode="json", exclude_none=True)
    for key in SERVER_KEYS:
        data.pop(key, None)
    return data


def _with_uploaded_files(data: Any, files: dict[str, Upload], source: str) -> Any:
    """Layout data whose mask files name files uploaded with it, with those files inlined."""
    if not isinstance(data, dict):
        return data

    def inline(value: Any, field: str) -> Any:
        if not isinstance(value, str) or value.startswith(DATA_URL_PREFIX):
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


def restore(files: list[Upload], model: str, server_loras: list[str], image_size: tuple[int, int] | None
            ) -> Restored:
    """The layout of a PNG written by eligen, or of a layout YAML (with the mask files it names, uploaded with
    it). With `image_size` (inpaint mode) edits are restored, validated against that image size."""
    yamls = [f for f in files if f.name.lower().endswith((".yaml", ".yml"))]
    if yamls:
        upload = yamls[0]
        if len(upload.data) > MAX_YAML_BYTES:
            raise LayoutError(upload.name, "(file)", f"expected at most {MAX_YAML_BYTES // 2**20} MiB of YAML")
        raw = layout_data_from_bytes(upload.data, upload.name)
        data = _with_uploaded_files(raw, {f.name: f for f in files if f is not upload}, upload.name)
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
    if kind == "edits":
        assert image_size is not None
        layout: Layout = browser_edits(data, image_size, model, server_loras, upload.name)
    else:
        layout = browser_layout(data, model, server_loras, upload.name)
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
