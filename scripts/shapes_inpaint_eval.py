"""Inpainting on the shapes model, measured (docs/shapes.md, the paper's claims in miniature, 5).

    python scripts/shapes_inpaint_eval.py [--model shapes] [--transformer FILE] [--n 32] [--seeds 4] [--steps 24]
        [--fusion exact] [--json FILE]

Renders held-out scenes at the model's size (`eligen data shapes --seed 999 --entities 2-3 --size SIZE`: the
evaluation's layouts), repaints the first shape of each as a shape of another kind in a colour the scene does not
have, in the same box, with `eligen inpaint` (dilate and feather 2 px each at 64x64, scaled with the model's
size), and scores with the shapes detector: the new entity's success, whether every other shape is still found
right, and the fraction of pixels outside the repainted region (grown by the dilation and the feather) that are
the source's exactly. `--json` also writes these numbers to FILE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.inpaint import inpaint, place, prepare
from eligen.pipeline.layout import parse_edits, parse_layout
from eligen.pipeline.model_info import default_size
from eligen.pipeline.outputs import write_atomic
from eligen.pipeline.regions import entity_masks
from eligen.pipeline.shapes.evaluation import score_image
from eligen.pipeline.shapes.scenes import PALETTE, SHAPES, Scene, Shape, render, scenes

DILATE, FEATHER = 2, 2  # px at 64x64; the fusion leaves pixels farther than DILATE + FEATHER from the region alone


def replacement(scene: Scene) -> Shape:
    """The first shape of the scene as another kind, in the first palette colour the scene lacks."""
    first = scene.shapes[0]
    kind = SHAPES[(SHAPES.index(first.kind) + 1) % len(SHAPES)]
    colour = next(c for c in PALETTE if c not in {s.colour for s in scene.shapes})
    return Shape(kind, colour, first.box)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--transformer", help="single-file transformer replacing the model's")
    parser.add_argument("--n", type=int, default=32, help="held-out scenes")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--fusion", choices=["exact", "reference"], default="exact")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    size = default_size(args.model)[0]
    dilate, feather = DILATE * size // 64, FEATHER * size // 64
    pipe = EligenPipeline.from_pretrained(args.model, transformer=args.transformer, device="cpu")

    new_ok, others_ok, kept = [], [], []
    for scene in scenes(args.n, 999, size, counts=(2, 3)):
        source, new = render(scene), replacement(scene)
        rest = scene.shapes[1:]
        caption = " and ".join(s.prompt for s in (new, *rest))
        edits = parse_edits({"prompt": caption, "dilate": dilate, "feather": feather, "steps": args.steps,
                             "fusion": args.fusion, "entities": [{"prompt": new.prompt, "box": list(new.box)}]},
                            source.size)
        masks = entity_masks(edits, Path("."), same_size=True)
        plan = prepare(pipe, place(edits, masks, source.size, pipe.scale_factor), source)
        x0, y0, x1, y1 = new.box
        outside = np.ones((size, size), dtype=bool)
        margin = dilate + feather
        outside[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = False
        untouched = parse_layout({"size": [size] * 2, "prompt": caption,
                                  "entities": [{"prompt": s.prompt, "box": list(s.box)} for s in rest]})
        for seed in range(args.seeds):
            result = inpaint(pipe, plan, seed)
            new_ok.append(score_image(result, edits)[0].success)
            others_ok.append(all(s.success for s in score_image(result, untouched)))
            same = (np.asarray(result) == np.asarray(source)).all(axis=2)
            kept.append(same[outside].mean())

    results = {"model": args.model, "transformer": args.transformer, "size": size, "scenes": args.n,
               "seeds": args.seeds, "steps": args.steps, "fusion": args.fusion, "dilate": dilate, "feather": feather,
               "results": len(new_ok), "new_entity_right": float(np.mean(new_ok)),
               "others_all_right": float(np.mean(others_ok)), "kept_mean": float(np.mean(kept)),
               "kept_min": float(np.min(kept))}
    print(f"{args.model} at {size}x{size}, {args.n} scenes x {args.seeds} seeds, {args.steps} steps, fusion "
          f"{args.fusion}, dilate {dilate} px, feather {feather} px:")
    print(f"  new entity right: {results['new_entity_right']:.1%}   other shapes all still right: "
          f"{results['others_all_right']:.1%}   pixels outside the region kept exactly: {results['kept_mean']:.2%} "
          f"(min {results['kept_min']:.2%})")
    if args.json is not None:
        text = json.dumps(results, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))


if __name__ == "__main__":
    main()
