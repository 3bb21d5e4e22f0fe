"""Inpainting on the shapes model, measured (docs/shapes.md, the paper's claims in miniature, 5).

    python scripts/shapes_inpaint_eval.py [--model shapes] [--n 32] [--seeds 4] [--steps 24] [--fusion exact]

Renders held-out scenes (`eligen data shapes --seed 999 --entities 2-3`: the evaluation's layouts), repaints the
first shape of each as a shape of another kind in a colour the scene does not have, in the same box, with
`eligen inpaint` (dilate 2, feather 2), and scores with the shapes detector: the new entity's success, whether
every other shape is still found right, and the fraction of pixels outside the repainted region (grown by the
dilation and the feather) that are the source's exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.inpaint import inpaint, place, prepare
from eligen.pipeline.layout import parse_edits, parse_layout
from eligen.pipeline.regions import entity_masks
from eligen.pipeline.shapes.evaluation import score_image
from eligen.pipeline.shapes.scenes import PALETTE, SHAPES, Scene, Shape, render, scenes

DILATE, FEATHER = 2, 2  # px; the fusion leaves pixels farther than DILATE + FEATHER from the region alone


def replacement(scene: Scene) -> Shape:
    """The first shape of the scene as another kind, in the first palette colour the scene lacks."""
    first = scene.shapes[0]
    kind = SHAPES[(SHAPES.index(first.kind) + 1) % len(SHAPES)]
    colour = next(c for c in PALETTE if c not in {s.colour for s in scene.shapes})
    return Shape(kind, colour, first.box)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--n", type=int, default=32, help="held-out scenes")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--fusion", choices=["exact", "reference"], default="exact")
    args = parser.parse_args()
    pipe = EligenPipeline.from_pretrained(args.model, device="cpu")

    new_ok, others_ok, kept = [], [], []
    for scene in scenes(args.n, 999, counts=(2, 3)):
        source, new = render(scene), replacement(scene)
        rest = scene.shapes[1:]
        caption = " and ".join(s.prompt for s in (new, *rest))
        edits = parse_edits({"prompt": caption, "dilate": DILATE, "feather": FEATHER, "steps": args.steps,
                             "fusion": args.fusion, "entities": [{"prompt": new.prompt, "box": list(new.box)}]},
                            source.size)
        masks = entity_masks(edits, Path("."), same_size=True)
        plan = prepare(pipe, place(edits, masks, source.size, pipe.scale_factor), source)
        x0, y0, x1, y1 = new.box
        outside = np.ones((scene.size, scene.size), dtype=bool)
        margin = DILATE + FEATHER
        outside[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = False
        untouched = parse_layout({"size": [scene.size] * 2, "prompt": caption,
                                  "entities": [{"prompt": s.prompt, "box": list(s.box)} for s in rest]})
        for seed in range(args.seeds):
            result = inpaint(pipe, plan, seed)
            new_ok.append(score_image(result, edits)[0].success)
            others_ok.append(all(s.success for s in score_image(result, untouched)))
            same = (np.asarray(result) == np.asarray(source)).all(axis=2)
            kept.append(same[outside].mean())

    print(f"{args.model}, {args.n} scenes x {args.seeds} seeds, {args.steps} steps, fusion {args.fusion}:")
    print(f"  new entity right: {np.mean(new_ok):.1%}   other shapes all still right: {np.mean(others_ok):.1%}   "
          f"pixels outside the region kept exactly: {np.mean(kept):.2%} (min {np.min(kept):.2%})")


if __name__ == "__main__":
    main()
