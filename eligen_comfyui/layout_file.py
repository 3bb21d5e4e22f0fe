"""Read an eligen layout (YAML, or the layout a PNG written by `eligen generate` carries) into entity regions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eligen.pipeline.layout import Entity, Layout, LayoutError, load_layout, parse_layout
from eligen.pipeline.outputs import read_png_metadata
from eligen.pipeline.regions import entity_masks, mask_data_url


def _png_layout(path: Path) -> Layout:
    try:
        metadata = read_png_metadata(path)
    except (OSError, ValueError) as exc:
        raise LayoutError(str(path), "(file)", f"expected a readable PNG written by eligen ({exc})") from None
    if not metadata or not isinstance(metadata.get("layout"), dict):
        raise LayoutError(str(path), "(metadata)", "expected a PNG written by `eligen generate`, it has no eligen "
                          "layout")
    return parse_layout(metadata["layout"], str(path))


def layout_entities(path_text: str) -> tuple[Layout, list[tuple[Entity, dict[str, Any]]]]:
    """The validated layout and each entity with its region as an inline mask at the layout's size."""
    try:
        if not path_text:
            raise LayoutError("Load EliGen layout", "path", "expected the path of a layout .yaml file or an eligen PNG")
        path = Path(path_text).expanduser()
        layout = _png_layout(path) if path.suffix.lower() == ".png" and path.is_file() else load_layout(path)
        source = str(path)
        if layout.ip_adapter is not None:
            raise LayoutError(source, "ip_adapter", "expected none: the ComfyUI nodes do not run IP-Adapters")
        masks = entity_masks(layout, path.parent, source)
    except LayoutError as exc:
        raise ValueError(str(exc)) from None
    return layout, [(e, {"mask": mask_data_url(m)}) for e, m in zip(layout.entities, masks, strict=True)]
