"""Where layouts come from: a YAML file, a PNG that eligen wrote (its embedded layout), or an image
plus an edits file for inpainting. Everything here is validated before any model is loaded."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from eligen.pipeline.images import open_rgb
from eligen.pipeline.layout import Edits, Layout, LayoutError, LoraSpec, load_layout, parse_layout, with_overrides
from eligen.pipeline.model_defaults import with_model_defaults
from eligen.pipeline.model_info import is_hub_file, resolve_model
from eligen.pipeline.outputs import read_png_metadata
from eligen.pipeline.regions import entity_masks

L = TypeVar("L", bound=Layout)


def seeded_paths(target: Path, seeds: list[int]) -> list[Path]:
    """One output per seed: `target` itself for one seed, `<stem>-<seed><suffix>` for several."""
    if len(seeds) == 1:
        return [target]
    return [target.with_name(f"{target.stem}-{seed}{target.suffix or '.png'}") for seed in seeds]


def resolve_transformer(value: str, base_dir: Path, source: str = "<layout>", field: str = "transformer") -> str:
    """A single-file transformer: an existing local file (absolute path, resolved against `base_dir`), or
    `hub-repo-id/path/in/repo.safetensors` unchanged."""
    local = (base_dir / Path(value).expanduser()).resolve()
    if local.is_file():
        return str(local)
    if is_hub_file(value):
        return value
    raise LayoutError(source, field, f"expected a local .safetensors file or hub-repo-id/path/in/repo.safetensors, "
                      f"{local} does not exist")


def _resolve(layout: L, overrides: dict[str, Any], base_dir: Path, source: str) -> L:
    """The layout with its model and transformer resolved (command-line values against the current folder,
    the file's own against the file's folder), and what it leaves out taken from the model's defaults."""
    update: dict[str, Any] = {}
    if "model" not in overrides:
        update["model"] = resolve_model(layout.model, base_dir, source)
    if layout.transformer is not None and "transformer" not in overrides:
        update["transformer"] = resolve_transformer(layout.transformer, base_dir, source)
    if any(e.loras for e in layout.entities):  # local entity LoRAs made absolute: the PNG re-runs from anywhere
        update["entities"] = [e.model_copy(update={"loras": [_absolute_lora(s, base_dir) for s in e.loras]})
                              if e.loras else e for e in layout.entities]
    return with_model_defaults(layout.model_copy(update=update))


def _absolute_lora(spec: LoraSpec, base_dir: Path) -> LoraSpec:
    local = (base_dir / Path(spec.path).expanduser()).resolve()
    return spec.model_copy(update={"path": str(local)}) if spec.file is None and local.is_file() else spec


def cli_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "model" in overrides:
        overrides["model"] = resolve_model(overrides["model"], Path.cwd(), "--model", "--model")
    if "transformer" in overrides:
        overrides["transformer"] = resolve_transformer(overrides["transformer"], Path.cwd(), "--transformer",
                                                       "--transformer")
    return overrides


@dataclass(frozen=True)
class LayoutSource:
    """A validated layout with what is needed to run it: where it came from and its seeds."""

    path: Path
    layout: Layout
    base_dir: Path
    seeds: list[int]

    @property
    def source(self) -> str:
        return str(self.path)

    def output_paths(self, output: Path | None) -> list[Path]:
        """`-o PATH`, else `<stem>.png` in the current folder; several seeds add `-<seed>` to the stem."""
        stem = self.path.stem + ("-rerun" if self.path.suffix.lower() == ".png" else "")
        return seeded_paths(output or Path(f"{stem}.png"), self.seeds)


def _png_layout_data(path: Path) -> dict[str, Any]:
    try:
        metadata = read_png_metadata(path)
    except (OSError, ValueError) as exc:
        raise LayoutError(str(path), "(file)", f"expected a readable PNG written by eligen ({exc})") from None
    if metadata and isinstance(metadata.get("edits"), dict):
        source = metadata.get("source_image", "the source image")
        raise LayoutError(str(path), "(metadata)", f"expected a PNG written by `eligen generate`; this one was written "
                          f"by `eligen inpaint` (edits of {source}, SHA-256 {metadata.get('source_sha256', '?')})",
                          f"re-run it with `eligen inpaint {source} EDITS.yaml`, the source image and the edits file; "
                          "the edits are in this PNG's `eligen` text chunk")
    if not metadata or not isinstance(metadata.get("layout"), dict):
        raise LayoutError(str(path), "(metadata)", "expected a PNG written by eligen, it has no `eligen` layout chunk")
    return metadata["layout"]


def load_source(path: Path, overrides: dict[str, Any]) -> LayoutSource:
    """Read and validate a layout (YAML, or a PNG written by eligen), apply overrides, resolve model and seeds."""
    overrides = cli_overrides(overrides)
    if path.suffix.lower() == ".png" and path.is_file():
        layout = parse_layout(with_overrides(_png_layout_data(path), overrides, str(path)), str(path))
    else:
        layout = load_layout(path, overrides)
    layout = _resolve(layout, overrides, path.parent, str(path))
    return LayoutSource(path, layout, path.parent, layout.seeds or [secrets.randbelow(2**32)])


@dataclass(frozen=True)
class EditsJob:
    """An inpainting job: the source image, the validated edits and their masks at the image's size."""

    image_path: Path
    image: Image.Image
    sha256: str
    edits_path: Path
    edits: Edits
    masks: list[np.ndarray]
    seeds: list[int]

    @property
    def source(self) -> str:
        return str(self.edits_path)

    @property
    def base_dir(self) -> Path:
        return self.edits_path.parent

    def output_paths(self, output: Path | None) -> list[Path]:
        """`-o PATH`, else `<image stem>-edited.png` in the current folder; several seeds add `-<seed>`."""
        return seeded_paths(output or Path(f"{self.image_path.stem}-edited.png"), self.seeds)


def read_source_image(path: Path) -> tuple[Image.Image, str]:
    """The image to edit, upright (EXIF orientation applied) and RGB, with the SHA-256 of its file."""
    image = open_rgb(path, str(path), "(image)")
    return image, hashlib.sha256(path.read_bytes()).hexdigest()


def load_edits(image_path: Path, edits_path: Path, overrides: dict[str, Any]) -> EditsJob:
    """Read the image and the edits file, validate the edits against the image and rasterise the regions."""
    image, sha256 = read_source_image(image_path)
    overrides = cli_overrides(overrides)
    edits = load_layout(edits_path, overrides, image_size=image.size)
    edits = _resolve(edits, overrides, edits_path.parent, str(edits_path))
    masks = entity_masks(edits, edits_path.parent, str(edits_path), same_size=True)
    return EditsJob(image_path, image, sha256, edits_path, edits, masks, edits.seeds or [secrets.randbelow(2**32)])
