"""Where layouts come from: a YAML file, or a PNG that eligen wrote (its embedded layout)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eligen.pipeline.layout import Layout, LayoutError, load_layout, parse_layout
from eligen.pipeline.model_info import resolve_model
from eligen.pipeline.outputs import read_png_metadata


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
        target = output or Path(f"{stem}.png")
        if len(self.seeds) == 1:
            return [target]
        return [target.with_name(f"{target.stem}-{seed}{target.suffix or '.png'}") for seed in self.seeds]


def _png_layout_data(path: Path) -> dict[str, Any]:
    try:
        metadata = read_png_metadata(path)
    except (OSError, ValueError) as exc:
        raise LayoutError(str(path), "(file)", f"expected a readable PNG written by eligen ({exc})") from None
    if not metadata or not isinstance(metadata.get("layout"), dict):
        raise LayoutError(str(path), "(metadata)", "expected a PNG written by eligen, it has no `eligen` layout chunk")
    return metadata["layout"]


def load_source(path: Path, overrides: dict[str, Any]) -> LayoutSource:
    """Read and validate a layout (YAML, or a PNG written by eligen), apply overrides, resolve model and seeds.

    An override `model` is resolved against the current folder; the file's own `model` against the file.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "model" in overrides:
        overrides["model"] = resolve_model(overrides["model"], Path.cwd(), "--model", "--model")
    if path.suffix.lower() == ".png" and path.is_file():
        data = {**_png_layout_data(path), **overrides}
        layout = parse_layout(data, str(path))
    else:
        layout = load_layout(path, overrides)
    base_dir = path.parent
    if "model" not in overrides:
        layout = layout.model_copy(update={"model": resolve_model(layout.model, base_dir, str(path))})
    seeds = layout.seeds or [secrets.randbelow(2**32)]
    return LayoutSource(path, layout, base_dir, seeds)
