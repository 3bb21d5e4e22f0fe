"""Make the figures of docs/shapes.md with the built-in `shapes` model, and print what the detector says.

    python scripts/shapes_figures.py [--seeds 8]

docs/images/shapes-generate.png: `layouts/shapes.yaml` for each seed, the entity boxes outlined in grey.
docs/images/shapes-inpaint.png: a rendered scene (red circle, blue square, yellow triangle), then the blue
square repainted as "a green circle" with `eligen inpaint`'s exact fusion, for each seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.inpaint import inpaint, place, prepare
from eligen.pipeline.layout import Layout, load_layout, parse_edits, parse_layout
from eligen.pipeline.regions import entity_masks
from eligen.pipeline.shapes.evaluation import score_image
from eligen.pipeline.shapes.scenes import Scene, Shape, render

REPO = Path(__file__).resolve().parent.parent
CELL = 192
SOURCE = Scene(64, (240, 240, 236), (Shape("circle", "red", (4, 6, 28, 30)), Shape("square", "blue", (38, 4, 60, 26)),
                                    Shape("triangle", "yellow", (20, 36, 46, 62))))
EDITS = {"prompt": "a red circle and a green circle and a yellow triangle", "dilate": 2, "feather": 2, "steps": 24,
         "entities": [{"prompt": "a green circle", "box": [38, 4, 60, 26]}]}


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
    args = parser.parse_args()
    pipe = EligenPipeline.from_pretrained("shapes", device="cpu")
    seeds = list(range(args.seeds))

    layout = load_layout(REPO / "layouts" / "shapes.yaml")
    panels, wins = [], 0
    for seed in seeds:
        image = pipe.generate(layout, [seed])[0]
        scores = score_image(image, layout)
        wins += sum(s.success for s in scores)
        panels.append((f"seed {seed}: {sum(s.success for s in scores)}/{len(scores)}", drawn(image, layout)))
    strip(panels).save(REPO / "docs" / "images" / "shapes-generate.png", optimize=True)
    print(f"layouts/shapes.yaml: {wins}/{len(seeds) * len(layout.entities)} entities right over seeds {seeds}")

    source = render(SOURCE)
    edits = parse_edits(EDITS, source.size)
    masks = entity_masks(edits, REPO, same_size=True)
    plan = prepare(pipe, place(edits, masks, source.size, pipe.scale_factor), source)
    kept = parse_layout({"size": [64, 64], "prompt": edits.prompt, "entities": [
        {"prompt": s.prompt, "box": list(s.box)} for s in SOURCE.shapes if s.colour != "blue"]})
    panels, wins, intact = [("source", source)], 0, 0
    for seed in seeds:
        result = inpaint(pipe, plan, seed)
        new = score_image(result, edits)[0].success
        others = all(s.success for s in score_image(result, kept))
        wins, intact = wins + new, intact + others
        panels.append((f"seed {seed}: {'ok' if new else 'missed'}", result))
    strip(panels).save(REPO / "docs" / "images" / "shapes-inpaint.png", optimize=True)
    unchanged = np.asarray(source)[:, :30].tolist() == np.asarray(result)[:, :30].tolist()
    print(f"inpaint: the green circle right in {wins}/{len(seeds)} seeds; the other two shapes intact in "
          f"{intact}/{len(seeds)}; left 30 columns identical to the source (last seed): {unchanged}")


if __name__ == "__main__":
    main()
