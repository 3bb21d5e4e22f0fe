"""Draw docs/images/entity-lora-outlines.png: an outline-style LoRA on one entity of a shapes layout, against no LoRA
and the same LoRA as a global LoRA, and print the inside/outside pixel-change ratios (docs/entity-loras.md).

    python scripts/entity_lora_figure.py LORA.safetensors [-o docs/images/entity-lora-outlines.png] [--seeds 4]

LORA is a LoRA of the built-in `shapes` model, e.g. the outline LoRA that docs/entity-loras.md trains. The layout is
layouts/shapes.yaml (a red circle, a blue square, a yellow triangle); the LoRA goes on the red circle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_layout

LAYOUT = Path(__file__).resolve().parent.parent / "layouts" / "shapes.yaml"
ZOOM = 4
COLUMNS = ["no LoRA", "LoRA on the red circle", "the same LoRA, global"]


def render(pipe: EligenPipeline, data: dict, seed: int) -> np.ndarray:
    image = pipe.generate(parse_layout(data), [seed])[0]
    return np.asarray(image.convert("RGB")).astype(np.float64)


def inside_outside(change: np.ndarray, box: list[int]) -> tuple[float, float]:
    """Mean per-pixel change (mean over RGB, in 0-255 levels) inside the box and outside it."""
    inside = np.zeros(change.shape, dtype=bool)
    x0, y0, x1, y1 = box
    inside[y0:y1, x0:x1] = True
    return float(change[inside].mean()), float(change[~inside].mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lora", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/entity-lora-outlines.png"))
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1, one row each (default 4)")
    parser.add_argument("--scale", type=float, default=1.0, help="the LoRA's scale (default 1.0)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = EligenPipeline.from_pretrained("shapes", device="cpu")
    base = yaml.safe_load(LAYOUT.read_text())
    spec = {"path": str(args.lora.resolve()), "scale": args.scale}
    local = {**base, "entities": [{**base["entities"][0], "loras": [spec]}, *base["entities"][1:]]}
    variants = [{**base, "loras": []}, {**local, "loras": []}, {**base, "loras": [spec]}]
    box = base["entities"][0]["box"]
    rows, changes = [], {"entity": [], "global": []}
    for seed in range(args.seeds):
        images = [render(pipe, data, seed) for data in variants]
        for name, image in zip(changes, images[1:], strict=True):
            changes[name].append(inside_outside(np.abs(image - images[0]).mean(axis=2), box))
        rows.append(images)
    print("LoRA | seed | mean change inside the red circle's box | outside | inside / outside")
    for name, values in changes.items():
        for seed, (inside, outside) in enumerate(values):
            print(f"{name} | {seed} | {inside:.2f} | {outside:.2f} | {inside / outside:.2f}")

    side = 64 * ZOOM
    gap, head, left = 8, 28, 64
    sheet = Image.new("RGB", (left + len(COLUMNS) * (side + gap), head + len(rows) * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(COLUMNS):
        draw.text((left + c * (side + gap) + 4, 8), title, fill="black")
    for r, images in enumerate(rows):
        y = head + r * (side + gap)
        draw.text((6, y + side // 2), f"seed {r}", fill="black")
        for c, image in enumerate(images):
            x = left + c * (side + gap)
            tile = Image.fromarray(image.astype(np.uint8)).resize((side, side), Image.NEAREST)
            sheet.paste(tile, (x, y))
            if c == 1:
                draw.rectangle([x + box[0] * ZOOM, y + box[1] * ZOOM, x + box[2] * ZOOM - 1, y + box[3] * ZOOM - 1],
                               outline=(255, 0, 255))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.stem + ".partial.png")
    sheet.save(partial)
    partial.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
