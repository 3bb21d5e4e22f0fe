"""Make the figures of docs/shapes.md with the built-in `shapes` model, and print what the detector says.

    python scripts/shapes_figures.py [--seeds 8] [--model shapes] [--transformer FILE] [--out docs/images]
        [--json FILE]

OUT/shapes-generate.png: `layouts/shapes.yaml` for each seed, the entity boxes outlined in grey.
OUT/shapes-inpaint.png: a rendered scene at the model's size (red circle, blue square, yellow triangle), then the
blue square repainted as "a green circle" with `eligen inpaint`'s exact fusion, for each seed.
`--json` also writes the detector's counts to FILE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.inpaint import inpaint, place, prepare
from eligen.pipeline.layout import Layout, load_layout, parse_edits, parse_layout
from eligen.pipeline.model_defaults import with_model_defaults
from eligen.pipeline.outputs import write_atomic
from eligen.pipeline.regions import entity_masks
from eligen.pipeline.shapes.evaluation import score_image
from eligen.pipeline.shapes.scenes import Scene, Shape, render

REPO = Path(__file__).resolve().parent.parent
CELL = 192
# the inpainting figure at 64x64 (boxes, dilate and feather in pixels), scaled to the model's size
SOURCE = Scene(64, (240, 240, 236), (Shape("circle", "red", (4, 6, 28, 30)), Shape("square", "blue", (38, 4, 60, 26)),
                                    Shape("triangle", "yellow", (20, 36, 46, 62))))
EDITS: dict[str, Any] = {"prompt": "a red circle and a green circle and a yellow triangle", "dilate": 2, "feather": 2,
                         "steps": 24, "entities": [{"prompt": "a green circle", "box": [38, 4, 60, 26]}]}
LEFT = 30  # columns at 64x64 left of the repainted region and its margin: the source's exactly


def scaled(size: int) -> tuple[Scene, dict[str, Any]]:
    """The inpainting figure's scene and edits at `size` x `size`."""
    k = size // SOURCE.size
    scene = Scene(size, SOURCE.background, tuple(
        Shape(s.kind, s.colour, (s.box[0] * k, s.box[1] * k, s.box[2] * k, s.box[3] * k)) for s in SOURCE.shapes))
    edits = {**EDITS, "dilate": EDITS["dilate"] * k, "feather": EDITS["feather"] * k,
             "entities": [{**e, "box": [v * k for v in e["box"]]} for e in EDITS["entities"]]}
    return scene, edits


def drawn(image: Image.Image, layout: Layout) -> Image.Image:
    """The image enlarged, each entity's box outlined in grey."""
    big = image.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)
    scale = CELL / image.width
    draw = ImageDraw.Draw(big)
    for entity in layout.entities:
        draw.rectangle([round(v * scale) for v in entity.box], outline=(120, 120, 120))
    return big


def strip(panels: list[tuple[str, Image.Image]]) -> Image.Image:
    figure = Image.new("RGB", (CELL * len(panels), CELL + 20), "white")
    draw = ImageDraw.Draw(figure)
    for i, (label, image) in enumerate(panels):
        figure.paste(image.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST), (i * CELL, 20))
        draw.text((i * CELL + 4, 4), label, fill="black")
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--transformer", help="single-file transformer replacing the model's")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder for the two PNGs")
    parser.add_argument("--json", type=Path, help="also write the detector's counts to this file")
    args = parser.parse_args()
    pipe = EligenPipeline.from_pretrained(args.model, transformer=args.transformer, device="cpu")
    seeds = list(range(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)

    layout = with_model_defaults(load_layout(REPO / "layouts" / "shapes.yaml"), pipe.model)
    panels, wins = [], 0
    for seed in seeds:
        image = pipe.generate(layout, [seed])[0]
        scores = score_image(image, layout)
        wins += sum(s.success for s in scores)
        panels.append((f"seed {seed}: {sum(s.success for s in scores)}/{len(scores)}", drawn(image, layout)))
    strip(panels).save(args.out / "shapes-generate.png", optimize=True)
    generate = {"right": wins, "entities": len(seeds) * len(layout.entities), "seeds": len(seeds)}
    print(f"layouts/shapes.yaml: {wins}/{generate['entities']} entities right over seeds {seeds}")

    scene, data = scaled(layout.size[0])
    source = render(scene)
    edits = parse_edits(data, source.size)
    masks = entity_masks(edits, REPO, same_size=True)
    plan = prepare(pipe, place(edits, masks, source.size, pipe.scale_factor), source)
    kept = parse_layout({"size": [scene.size] * 2, "prompt": edits.prompt, "entities": [
        {"prompt": s.prompt, "box": list(s.box)} for s in scene.shapes if s.colour != "blue"]})
    panels, wins, intact = [("source", source)], 0, 0
    for seed in seeds:
        result = inpaint(pipe, plan, seed)
        new = score_image(result, edits)[0].success
        others = all(s.success for s in score_image(result, kept))
        wins, intact = wins + new, intact + others
        panels.append((f"seed {seed}: {'ok' if new else 'missed'}", result))
    strip(panels).save(args.out / "shapes-inpaint.png", optimize=True)
    left = LEFT * scene.size // SOURCE.size
    unchanged = bool(np.array_equal(np.asarray(source)[:, :left], np.asarray(result)[:, :left]))
    print(f"inpaint: the green circle right in {wins}/{len(seeds)} seeds; the other two shapes intact in "
          f"{intact}/{len(seeds)}; left {left} columns identical to the source (last seed): {unchanged}")
    if args.json is not None:
        counts = {"generate": generate, "inpaint": {"new_right": wins, "others_intact": intact, "seeds": len(seeds),
                                                   "left_columns": left, "left_columns_kept_last_seed": unchanged}}
        text = json.dumps(counts, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))


if __name__ == "__main__":
    main()
