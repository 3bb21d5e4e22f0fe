"""The entity LoRA figure of docs/entity-loras.md: a LoRA trained with `eligen train` on the shapes model to draw
shapes as outlines, applied to one entity, to every entity (global), and not at all.

    python scripts/entity_lora_figure.py OUT_DIR [--scenes 512] [--steps 200] [--seeds 0 1 2 3]

1. Writes a shapes dataset (`write_shapes_dataset`, seed 7) whose images are redrawn with every shape as a 2-pixel
   outline on the background (the style to learn; prompts and boxes unchanged).
2. Trains a LoRA on the built-in `shapes` model with `eligen train` (rank 16, batch 32, cached latents, one thread).
3. Renders one layout (a red circle, a blue square, a yellow triangle) for each seed three ways: without the LoRA,
   with it as entity 0's LoRA only, and as a global LoRA; writes OUT_DIR/entity-lora.png (rows: seeds; columns: the
   three ways) and prints each entity's outline score (the share of the region's shape pixels that show the
   background colour, high for an outline, low for a filled shape).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_layout
from eligen.pipeline.shapes.scenes import PALETTE, Scene, shape_mask, write_shapes_dataset

LAYOUT = {"model": "shapes", "size": [64, 64], "steps": 24, "loras": [],
          "prompt": "a red circle and a blue square and a yellow triangle",
          "entities": [{"prompt": "a red circle", "box": [4, 4, 26, 26]},
                       {"prompt": "a blue square", "box": [38, 6, 60, 28]},
                       {"prompt": "a yellow triangle", "box": [18, 36, 46, 62]}]}
SCALE = 3  # figure pixels per image pixel


def outlined(scene: Scene) -> Image.Image:
    """The scene with every shape drawn as its 2-pixel outline on the background."""
    pixels = np.empty((scene.size, scene.size, 3), dtype=np.uint8)
    pixels[:] = scene.background
    for shape in scene.shapes:
        mask = shape_mask(shape, scene.size)
        inner = mask.copy()
        for dy, dx in ((-2, 0), (2, 0), (0, -2), (0, 2), (-1, -1), (1, 1), (-1, 1), (1, -1)):
            inner &= np.roll(mask, (dy, dx), axis=(0, 1))
        pixels[mask & ~inner] = PALETTE[shape.colour]
    return Image.fromarray(pixels)


def outline_score(image: np.ndarray, box: list[int], colour: str) -> float:
    """Inside the box's central half: the share of pixels far from the shape's colour (an outline leaves them at the
    background's colour; a filled shape covers them)."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 4, (y1 - y0) // 4
    centre = image[cy - hh:cy + hh, cx - hw:cx + hw].astype(float)
    distance = np.linalg.norm(centre - np.array(PALETTE[colour], dtype=float), axis=-1)
    return float((distance > 80).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenes", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, run = args.out / "outline-data", args.out / "outline-lora"
    if not (data / "metadata.jsonl").is_file():
        for i, scene in enumerate(write_shapes_dataset(data, args.scenes, seed=7)):
            outlined(scene).save(data / "images" / f"{i:05d}.png")
    lora = run / "lora.safetensors"
    if not lora.is_file():
        subprocess.run([sys.executable, "-m", "eligen", "train", "--model", "shapes", "--data", str(data), "-o",
                        str(run), "--steps", str(args.steps), "--batch-size", "32", "--rank", "16", "--lr", "1e-3",
                        "--resolution", "64", "--bucket-step", "16", "--cache", "--no-gradient-checkpointing",
                        "--timesteps", "logit-normal", "--seed", "0"], check=True)
    pipe = EligenPipeline.from_pretrained("shapes", device="cpu", dtype="fp32")
    entity = {**LAYOUT, "entities": [{**LAYOUT["entities"][0], "loras": [{"path": str(lora)}]},
                                     *LAYOUT["entities"][1:]]}
    ways = {"no LoRA": LAYOUT, "entity 0's LoRA": entity, "global LoRA": {**LAYOUT, "loras": [{"path": str(lora)}]}}
    rows = []
    for seed in args.seeds:
        row = []
        for name, data_ in ways.items():
            image = np.asarray(pipe.generate(parse_layout({**data_, "seed": seed}), [seed])[0])
            scores = [outline_score(image, e["box"], e["prompt"].split()[1]) for e in LAYOUT["entities"]]
            print(f"seed {seed}, {name}: outline score per entity " + ", ".join(f"{s:.2f}" for s in scores))
            row.append(image)
        rows.append(row)
    side = 64 * SCALE
    figure = Image.new("RGB", (len(ways) * (side + 8) - 8, len(rows) * (side + 8) + 16), "white")
    draw = ImageDraw.Draw(figure)
    for j, name in enumerate(ways):
        draw.text((j * (side + 8) + 4, 2), name, fill="black")
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            tile = Image.fromarray(image).resize((side, side), Image.NEAREST)
            figure.paste(tile, (j * (side + 8), 16 + i * (side + 8)))
    figure.save(args.out / "entity-lora.png")
    print(f"wrote {args.out / 'entity-lora.png'}")


if __name__ == "__main__":
    main()
