"""Entity transfer's two-panel canvas (paper C.2, In-Context LoRA): the source image on the left panel, the target on
the right, the layout's entities placed on the right panel. numpy and PIL only, so the command line checks a
transfer file before torch is imported.

A transfer file is an edits file (`Edits`) with a `target:` image (relative to the file); its entities' coordinates
refer to the target image, as an edits file's refer to its source image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from .images import open_rgb
from .inpaint_canvas import MAX_PIXELS
from .layout import Edits, LayoutError, LoraSpec, parse_layout, read_layout_data

# ali-vilab/In-Context-LoRA's identity-design LoRA, the one the reference's entity_transfer example stacks on EliGen's
IN_CONTEXT_LORA = LoraSpec(path="ali-vilab/In-Context-LoRA/visual-identity-design.safetensors")
PANEL_PIXELS = MAX_PIXELS // 2  # two panels side by side stay within the inpainting canvas's area


class Transfer(Edits):
    """A transfer file: the target image and the entities to place on it (coordinates in the target's pixels)."""

    target: str = Field(min_length=1)


def open_image(path: Path, source: str, field: str) -> Image.Image:
    """An image file upright and RGB (`images.open_rgb`), with an error naming the field."""
    return open_rgb(path, source, field)


def read_transfer(path: Path, overrides: dict[str, Any] | None = None) -> tuple[Transfer, Image.Image]:
    """A transfer file validated against its target image (read from `target:`, relative to the file)."""
    source = str(path)
    data = read_layout_data(path)
    if "size" in data:
        raise LayoutError(source, "size", "expected no `size` in a transfer file",
                          "the coordinates refer to the target image; the panel size is --panel")
    target = data.get("target")
    if not isinstance(target, str) or not target:
        raise LayoutError(source, "target", "expected the target image the entities are placed on, e.g. "
                          "`target: tote.png` (relative to the file)")
    image = open_image((path.parent / target).resolve(), source, "target")
    merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}, "size": list(image.size)}
    transfer = parse_layout(merged, source, Transfer)
    assert isinstance(transfer, Transfer)
    return transfer, image


def panel_size(target_size: tuple[int, int], multiple: int, requested: tuple[int, int] | None = None
               ) -> tuple[int, int]:
    """The panel (width, height): `requested` (sides multiples of `multiple`), else the target's aspect at most
    PANEL_PIXELS in area, sides rounded to `multiple`."""
    if requested is not None:
        if requested[0] % multiple or requested[1] % multiple or min(requested) <= 0:
            raise ValueError(f"expected a panel size W x H with both sides positive multiples of {multiple}, got "
                             f"{requested[0]}x{requested[1]}")
        return requested
    width, height = target_size
    scale = (PANEL_PIXELS / (width * height)) ** 0.5
    return (max(multiple, int(width * scale / multiple) * multiple),
            max(multiple, int(height * scale / multiple) * multiple))


def _cover_box(size: tuple[int, int], panel: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The scaled size that covers the panel and the centred crop box of it, as the reference's crop_and_resize."""
    scale = max(panel[0] / size[0], panel[1] / size[1])
    scaled = (max(panel[0], round(size[0] * scale)), max(panel[1], round(size[1] * scale)))
    left, top = (scaled[0] - panel[0]) // 2, (scaled[1] - panel[1]) // 2
    return scaled, (left, top, left + panel[0], top + panel[1])


def crop_and_resize(image: Image.Image, panel: tuple[int, int]) -> Image.Image:
    """Scale to cover the panel (bicubic) and crop its centre."""
    scaled, box = _cover_box(image.size, panel)
    return image.resize(scaled, Image.Resampling.BICUBIC).crop(box)


def crop_and_resize_mask(mask: np.ndarray, panel: tuple[int, int]) -> np.ndarray:
    """The same geometry for a boolean mask (nearest sampling)."""
    scaled, box = _cover_box((mask.shape[1], mask.shape[0]), panel)
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize(scaled, Image.Resampling.NEAREST).crop(box)
    return np.asarray(image) > 127


@dataclass(frozen=True)
class TransferCanvas:
    """The two panels and the entities placed on the right one."""

    panel: tuple[int, int]  # (width, height) of one panel
    two_panel: Image.Image  # (2 width, height): source | target
    edits: Transfer  # the transfer at the two-panel size
    masks: list[np.ndarray]  # entity masks at the two-panel size, all on the right panel


def transfer_canvas(transfer: Transfer, target_masks: list[np.ndarray], source: Image.Image, target: Image.Image,
                    panel: tuple[int, int]) -> TransferCanvas:
    """The source and target cropped and resized to the panel, side by side, and the entity masks (drawn at the
    target's size) moved onto the right panel."""
    width, height = panel
    two_panel = Image.new("RGB", (2 * width, height))
    two_panel.paste(crop_and_resize(source, panel), (0, 0))
    two_panel.paste(crop_and_resize(target, panel), (width, 0))
    masks = []
    for mask in target_masks:
        placed = np.zeros((height, 2 * width), dtype=bool)
        placed[:, width:] = crop_and_resize_mask(mask, panel)
        masks.append(placed)
    return TransferCanvas(panel, two_panel, transfer.model_copy(update={"size": (2 * width, height)}), masks)
