"""Layout previews: the regions as drawn, and the token cells the model will actually see."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .layout import Layout

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]
MIN_SIDE = 512  # small canvases are scaled up so labels stay legible


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask that touch a pixel outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_preview(
    layout: Layout,
    pixel_masks: list[np.ndarray],
    token_masks: np.ndarray,
    token_size: int,
    background: Image.Image | None = None,
) -> Image.Image:
    """Canvas with each entity's token cells tinted, its drawn region outlined, the token grid and labels.

    `token_masks` is (k, n_tokens) in row-major token order; `token_size` is pixels per token side.
    """
    width, height = layout.size
    base = background.convert("RGB").resize((width, height)) if background else Image.new("RGB", (width, height),
                                                                                             (250, 250, 247))
    canvas = np.asarray(base, dtype=np.float32).copy()
    grid_w = width // token_size
    for i, (mask, tokens) in enumerate(zip(pixel_masks, token_masks, strict=True)):
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        cells = tokens.reshape(-1, grid_w).repeat(token_size, axis=0).repeat(token_size, axis=1)
        canvas[cells] = 0.65 * canvas[cells] + 0.35 * colour
        canvas[_outline(mask)] = colour
    image = Image.fromarray(canvas.round().astype(np.uint8))
    scale = max(1, -(-MIN_SIDE // max(width, height)))
    if scale > 1:
        image = image.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image, "RGBA")
    step = token_size * scale
    for x in range(0, image.width + 1, step):
        draw.line([(x, 0), (x, image.height)], fill=(0, 0, 0, 28))
    for y in range(0, image.height + 1, step):
        draw.line([(0, y), (image.width, y)], fill=(0, 0, 0, 28))
    font = ImageFont.load_default(size=max(12, image.width // 48))
    for i, (entity, mask) in enumerate(zip(layout.entities, pixel_masks, strict=True)):
        ys, xs = np.nonzero(mask)
        label = f"{i + 1}: {entity.prompt[:40]}"
        width_px = draw.textlength(label, font=font)
        x = max(0, min(int(xs.min()) * scale + 3, int(image.width - width_px - 3)))
        y = int(ys.min()) * scale + 3
        box = draw.textbbox((x, y), label, font=font)
        draw.rectangle(box, fill=(*PALETTE[i % len(PALETTE)], 220))
        draw.text((x, y), label, fill=(255, 255, 255), font=font)
    draw.text((4, image.height - font.size - 6), f"global: {layout.prompt[:80]}", fill=(0, 0, 0, 200), font=font)
    return image
