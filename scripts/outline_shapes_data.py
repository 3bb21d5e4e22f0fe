"""Turn an `eligen data shapes` dataset into one whose shapes are drawn as outlines (a style for a LoRA to learn).

    eligen data shapes -o shapes-data --n 160 --seed 7 --entities 1-2
    python scripts/outline_shapes_data.py shapes-data outline-data [--width 4]

Every shape keeps a band of WIDTH pixels along its edge (its exact mask minus the mask eroded by WIDTH) and its
inside is painted with the image's background (the median colour of the image's border). Captions, entities and
boxes are copied unchanged, so a LoRA trained on OUTPUT learns the style, not new words.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def background(pixels: np.ndarray) -> np.ndarray:
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.median(border, axis=0).astype(np.uint8)


def outline(image: Image.Image, masks: list[Image.Image], width: int) -> Image.Image:
    pixels = np.asarray(image.convert("RGB")).copy()
    fill = background(pixels)
    for mask in masks:
        eroded = mask.convert("L").filter(ImageFilter.MinFilter(2 * width + 1))
        pixels[np.asarray(eroded) > 127] = fill
    return Image.fromarray(pixels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a dataset folder written by `eligen data shapes`")
    parser.add_argument("output", type=Path, help="the new dataset folder (must not exist)")
    parser.add_argument("--width", type=int, default=4, help="outline width in pixels (default 4)")
    args = parser.parse_args()
    metadata = args.source / "metadata.jsonl"
    if not metadata.is_file():
        print(f"error: {metadata}: expected the metadata.jsonl of `eligen data shapes`", file=sys.stderr)
        return 2
    if args.output.exists():
        print(f"error: {args.output}: already exists; give a new folder", file=sys.stderr)
        return 2
    staging = args.output.with_name(args.output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    lines = metadata.read_text().splitlines()
    for line in lines:
        record = json.loads(line)
        stem = Path(record["image"]).stem
        masks = [Image.open(args.source / "masks" / f"{stem}-{j}.png") for j in range(len(record["entities"]))]
        outline(Image.open(args.source / record["image"]), masks, args.width).save(staging / record["image"])
    shutil.copyfile(metadata, staging / "metadata.jsonl")
    staging.rename(args.output)
    print(f"wrote {len(lines)} outlined scenes to {args.output / 'metadata.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
