"""A sheet of the entities a shapes `eligen eval` run got wrong: what the model drew, and what the detector saw.

    python scripts/shapes_failures.py EVAL_DIR -o sheet.png [--shape square] [--n 16] [--base DIR] [--json FILE]
        [--overwrite]

EVAL_DIR is the output folder of `eligen eval LAYOUTS --model shapes ...` (its `results.json` and `images/`); the
layout files it names are found relative to `--base` (the folder `eligen eval` ran in; the current one by default).
Each column is one failed entity (of `--shape` only, when given), seed 0's first, then seed 1's, ...: on top the image
around the entity's region (a margin of a quarter of its side) with the region's bounding box in grey; below, the
pixels of the component the detector scored it with (the one of its colour whose box overlaps the region's best; black
when there is none). `--json` also writes, per failed entity, its prompt, box, the class the detector gave and the
component's fill ratio (its area over its box's; the detector's classes: square >= 0.89, circle >= 0.64).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from eligen.pipeline.bench.layout_items import item_ids
from eligen.pipeline.layout import load_layout
from eligen.pipeline.outputs import write_atomic
from eligen.pipeline.regions import entity_masks
from eligen.pipeline.shapes.detector import best_component, detect, mask_box, parse_entity

TILE = 96  # px of one crop on the sheet


def failures(eval_dir: Path, base: Path, shape: str | None) -> list[dict[str, Any]]:
    """Every entity the run scored as a failure (of `shape`, when given), with its crop and detected pixels."""
    results = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))
    if results.get("benchmark", {}).get("kind") != "layouts":
        raise SystemExit(f"{eval_dir / 'results.json'}: not a run on layout files (expected `eligen eval` of a "
                         "folder of shapes layouts)")
    paths = [Path(f) for f in results["benchmark"]["files"]]
    files = {item: base / path for item, path in zip(item_ids(paths), paths, strict=True)}  # `eligen eval`'s ids
    found = []
    for image_row in results["per_image"]:
        item, seed = image_row["item"], image_row["seed"]
        if item not in files or not files[item].is_file():
            raise SystemExit(f"{eval_dir / 'results.json'}: layout file of item {item!r} not found under {base} "
                             f"(give --base, the folder `eligen eval` ran in)")
        failed = [i for i, e in enumerate(image_row["instances"]) if not e["success"]
                  and (shape is None or parse_entity(e["prompt"])[1] == shape)]
        if not failed:
            continue
        layout = load_layout(files[item])
        image = Image.open(eval_dir / "images" / f"s{seed}_{item}.png").convert("RGB")
        masks = entity_masks(layout, files[item].parent, str(files[item]))
        components = detect(image)
        for index in failed:
            entity, box = layout.entities[index], mask_box(masks[index])
            best = best_component(components, parse_entity(entity.prompt)[0], box)
            found.append({"item": item, "seed": seed, "prompt": entity.prompt, "box": list(box), "image": image,
                          "found_shape": best.shape if best else None,
                          "fill": round(best.fill, 3) if best else None,
                          "pixels": best.pixels if best else np.zeros(image.size[::-1], dtype=bool)})
    return sorted(found, key=lambda e: e["seed"])  # stable: the run's order within a seed


def tile(entry: dict[str, Any]) -> Image.Image:
    """The crop around the entity's box over the detected component's pixels, each TILE px square."""
    x0, y0, x1, y1 = entry["box"]
    margin = max(2, max(x1 - x0, y1 - y0) // 4)
    window = (x0 - margin, y0 - margin, x1 + margin, y1 + margin)
    crop = entry["image"].copy()
    ImageDraw.Draw(crop).rectangle((x0 - 1, y0 - 1, x1, y1), outline=(150, 150, 150))
    pixels = Image.fromarray(entry["pixels"].astype(np.uint8) * 255).convert("RGB")
    out = Image.new("RGB", (TILE, 2 * TILE + 4), "white")
    out.paste(crop.crop(window).resize((TILE, TILE), Image.NEAREST), (0, 0))
    out.paste(pixels.crop(window).resize((TILE, TILE), Image.NEAREST), (0, TILE + 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True, help="the sheet (PNG)")
    parser.add_argument("--shape", choices=("circle", "square", "triangle"))
    parser.add_argument("--n", type=int, default=16, help="at most this many entities")
    parser.add_argument("--base", type=Path, default=Path("."), help="the folder `eligen eval` ran in")
    parser.add_argument("--json", type=Path, help="also write each failed entity's detection to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace the output files when they exist")
    args = parser.parse_args()
    for path in (args.output, args.json):
        if path is not None and path.exists() and not args.overwrite:
            parser.error(f"{path} exists (give --overwrite to replace it)")
    if args.n < 1:
        parser.error(f"--n: expected at least 1, got {args.n}")
    if not (args.eval_dir / "results.json").is_file():
        parser.error(f"{args.eval_dir}: no results.json (expected the output folder of `eligen eval`)")
    found = failures(args.eval_dir, args.base, args.shape)
    if not found:
        raise SystemExit(f"{args.eval_dir}: no failed entities" + (f" of shape {args.shape}" if args.shape else ""))
    shown = found[:args.n]
    sheet = Image.new("RGB", (len(shown) * (TILE + 4) - 4, 2 * TILE + 4), "white")
    for k, entry in enumerate(shown):
        sheet.paste(tile(entry), (k * (TILE + 4), 0))
    write_atomic(args.output, lambda tmp: sheet.save(tmp, format="PNG"))
    if args.json is not None:
        rows = [{k: v for k, v in e.items() if k not in ("image", "pixels")} for e in found]
        write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(rows, indent=1), encoding="utf-8"))
    classes = {name: sum(e["found_shape"] == name for e in found) for name in ("square", "circle", "triangle", None)}
    print(f"{len(found)} failed entities ({len(shown)} shown in {args.output}); the detector's class: "
          + ", ".join(f"{name or 'none of its colour'} {n}" for name, n in classes.items()))


if __name__ == "__main__":
    main()
