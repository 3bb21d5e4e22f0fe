"""Entity regions: pixel masks from boxes, polygons and PNGs, and the token regions the model sees.

Pure numpy and PIL (no torch): `eligen preview` draws from these without loading a model.

The token rule (docs/layout-format.md, "How regions become tokens"): resize the pixel mask to the latent grid
(H/f x W/f) with pixel-centre nearest sampling, a latent pixel is on when the mask is above half, and a token
(a 2x2 latent patch) belongs to the region when any of its four latent pixels is on.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .layout import DATA_URL_PREFIX, Entity, Layout, LayoutError

PATCH = 2  # FLUX packs 2x2 latent pixels into one token


def unit_scale(layout: Layout) -> tuple[float, float]:
    """Factors that turn the layout's coordinates into pixels (x, y)."""
    width, height = layout.size
    return {"px": (1.0, 1.0), "fraction": (width, height), "permille": (width / 1000, height / 1000)}[
        layout.units
    ]


def read_image(reference: str, base_dir: Path, source: str, field: str) -> Image.Image:
    """Open a PNG given as a path (relative to `base_dir`) or as an inlined data URL."""
    inline = reference.startswith(DATA_URL_PREFIX)
    path = base_dir / reference
    if not inline and not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise LayoutError(source, field, f"expected an image file, {path} {problem}")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(reference[len(DATA_URL_PREFIX):])) if inline else path)
        image.load()
    except (UnidentifiedImageError, OSError, binascii.Error) as exc:
        raise LayoutError(
            source, field, f"expected a readable image, could not decode {reference[:80]!r} ({exc})"
        ) from None
    return image


def _to_canvas(image: Image.Image, size: tuple[int, int], source: str, field: str, same_size: bool) -> np.ndarray:
    """An RGB array of the image, resized to the canvas with nearest sampling when its size differs
    (or an error when `same_size` asks for the canvas size exactly)."""
    image = image.convert("RGB")
    if image.size != tuple(size):
        if same_size:
            raise LayoutError(source, field, f"expected a mask of the image's size {size[0]}x{size[1]}, "
                              f"got {image.size[0]}x{image.size[1]}", "was the mask made for another image?")
        image = image.resize(tuple(size), Image.Resampling.NEAREST)
    return np.asarray(image)


def _box_mask(box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside [x1, x2) x [y1, y2)."""
    width, height = size
    x1, y1, x2, y2 = box
    cols = (np.arange(width) + 0.5 >= x1) & (np.arange(width) + 0.5 < x2)
    rows = (np.arange(height) + 0.5 >= y1) & (np.arange(height) + 0.5 < y2)
    return rows[:, None] & cols[None, :]


def _polygon_mask(points: list[tuple[float, float]], size: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside the polygon (even-odd rule), consistent with `_box_mask`."""
    width, height = size
    px = np.arange(width)[None, :] + 0.5
    py = np.arange(height)[:, None] + 0.5
    inside = np.zeros((height, width), dtype=bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True):
        if y0 == y1:
            continue
        crosses = (y0 > py) != (y1 > py)
        x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (px < x_cross)
    return inside


def _check_inside(points: np.ndarray, layout: Layout, source: str, field: str) -> None:
    width, height = layout.size
    sx, sy = unit_scale(layout)
    xs, ys = points[:, 0] * sx, points[:, 1] * sy
    eps = 1e-6
    if xs.min() < -eps or ys.min() < -eps or xs.max() > width + eps or ys.max() > height + eps:
        limits = {"px": f"0..{width} x 0..{height}", "fraction": "0..1", "permille": "0..1000"}[layout.units]
        raise LayoutError(
            source, field, f"expected coordinates inside the canvas ({limits} in units {layout.units}), "
            f"got {points.tolist()}",
            "`units: fraction` takes 0..1 and `units: permille` 0..1000" if layout.units != "px" else None,
        )


def _check_units(layout: Layout, source: str) -> None:
    """Catch the likely mistake of fractional coordinates in a pixel layout."""
    coords = [
        np.asarray(e.box if e.box is not None else e.polygon, dtype=float).ravel()
        for e in layout.entities
        if e.box is not None or e.polygon is not None
    ]
    if layout.units == "px" and coords and all(c.max() <= 1.0 for c in coords):
        raise LayoutError(
            source, "units", "all region coordinates lie within 0..1, too small for `units: px`",
            "add `units: fraction` to the layout (or give coordinates in pixels)",
        )


def entity_mask(
    entity: Entity, layout: Layout, base_dir: Path, source: str, field: str,
    colour_mask: np.ndarray | None = None, same_size: bool = False,
) -> np.ndarray:
    """The entity's region as a boolean (height, width) pixel mask at canvas size."""
    sx, sy = unit_scale(layout)
    if entity.box is not None:
        _check_inside(np.asarray(entity.box, dtype=float).reshape(2, 2), layout, source, f"{field}.box")
        x1, y1, x2, y2 = entity.box
        mask = _box_mask((x1 * sx, y1 * sy, x2 * sx, y2 * sy), layout.size)
    elif entity.polygon is not None:
        points = np.asarray(entity.polygon, dtype=float)
        _check_inside(points, layout, source, f"{field}.polygon")
        mask = _polygon_mask([(x * sx, y * sy) for x, y in points], layout.size)
    elif entity.mask is not None:
        rgb = _to_canvas(read_image(entity.mask, base_dir, source, f"{field}.mask"), layout.size, source,
                         f"{field}.mask", same_size)
        mask = rgb.astype(np.float32).mean(axis=2) > 127.5
    else:
        assert colour_mask is not None and entity.color is not None
        target = np.array([int(entity.color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
        mask = np.all(colour_mask == target, axis=2)
        if not mask.any():
            packed = colour_mask.reshape(-1, 3).astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
            values, counts = np.unique(packed, return_counts=True)
            listed = ", ".join(f"#{v:06x}" for v in values[np.argsort(-counts)][:8])
            raise LayoutError(source, f"{field}.color", f"expected a colour present in color_mask, "
                              f"{entity.color} is not", f"colours present: {listed}")
    if not mask.any():
        raise LayoutError(source, f"{field}.{entity.region_kind}", "expected a non-empty region, it covers no pixel")
    return mask


def entity_masks(
    layout: Layout, base_dir: Path, source: str = "<layout>", same_size: bool = False
) -> list[np.ndarray]:
    """Rasterise every entity's region to a boolean pixel mask at canvas size, validating as it goes.

    Mask PNGs of another size are resized with nearest sampling, or refused when `same_size`.
    """
    _check_units(layout, source)
    colour_mask = None
    if layout.color_mask is not None:
        colour_mask = _to_canvas(read_image(layout.color_mask, base_dir, source, "color_mask"), layout.size,
                                 source, "color_mask", same_size)
    return [
        entity_mask(entity, layout, base_dir, source, f"entities[{i}]", colour_mask, same_size)
        for i, entity in enumerate(layout.entities)
    ]


def latent_mask(mask: np.ndarray, scale_factor: int) -> np.ndarray:
    """Pixel mask -> latent grid with pixel-centre nearest sampling (PIL NEAREST), on above half."""
    height, width = mask.shape
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    small = image.resize((width // scale_factor, height // scale_factor), Image.Resampling.NEAREST)
    return np.asarray(small) > 127.5


def token_mask(mask: np.ndarray, scale_factor: int) -> np.ndarray:
    """Pixel mask -> (H/(2f), W/(2f)) token grid: a token is in when any of its 2x2 latent pixels is on."""
    latent = latent_mask(mask, scale_factor)
    h, w = latent.shape
    return latent.reshape(h // PATCH, PATCH, w // PATCH, PATCH).any(axis=(1, 3))


def token_masks(
    masks: list[np.ndarray], scale_factor: int, layout: Layout, source: str = "<layout>"
) -> np.ndarray:
    """Token regions (k, n_tokens) in the row-major token order of packed FLUX latents."""
    grid_h, grid_w = layout.height // (scale_factor * PATCH), layout.width // (scale_factor * PATCH)
    result = np.zeros((len(masks), grid_h * grid_w), dtype=bool)
    for i, mask in enumerate(masks):
        tokens = token_mask(mask, scale_factor)
        if not tokens.any():
            raise LayoutError(
                source, f"entities[{i}].{layout.entities[i].region_kind}",
                f"expected a region the model can see; it covers no token of the {grid_w}x{grid_h} token grid",
                f"a token is {scale_factor * PATCH}x{scale_factor * PATCH} px and needs the centre of one of "
                f"its {scale_factor}x{scale_factor}-px latent cells inside the region: make the region larger",
            )
        result[i] = tokens.reshape(-1)
    return result


def check_canvas(layout: Layout, scale_factor: int, source: str = "<layout>") -> None:
    """The canvas must split into whole tokens for this model."""
    step = scale_factor * PATCH
    if layout.width % step or layout.height % step:
        raise LayoutError(source, "size", f"expected multiples of {step} for this model, got {list(layout.size)}")


def mask_data_url(mask: np.ndarray) -> str:
    """A boolean mask as an inline 1-bit PNG data URL (white = region)."""
    buffer = io.BytesIO()
    Image.fromarray(mask).convert("1").save(buffer, format="PNG", optimize=True)
    return DATA_URL_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def inline_masks(layout: Layout, masks: list[np.ndarray]) -> Layout:
    """The layout with mask and colour regions replaced by inline masks, so it no longer needs its files."""
    entities = [
        e if e.box is not None or e.polygon is not None
        else e.model_copy(update={"mask": mask_data_url(m), "color": None})
        for e, m in zip(layout.entities, masks, strict=True)
    ]
    return layout.model_copy(update={"entities": entities, "color_mask": None})
