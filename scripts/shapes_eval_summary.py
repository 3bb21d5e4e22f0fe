"""Break an `eligen eval` report (results.json) of the shapes model down (docs/shapes.md): by shape, by seed.

    python scripts/shapes_eval_summary.py EVAL_DIR_OR_JSON [...] [--seeds N]

By shape: the success rate of the entities asking for circles, squares and triangles. By seed (the paper's E.1,
robustness to the seed): each layout's success rate over its seeds, then over layouts their mean, the share
of layouts whose every entity was right in at least half of the seeds, and the spread of the whole run's
success rate from one seed to another (the standard deviation over seeds). `--seeds N` keeps seeds 0..N-1 only
(the 4-seed protocol of the results table, out of a run with 8).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from eligen.pipeline.shapes.detector import parse_entity


def summary(images: list[dict]) -> dict[str, float]:
    by_shape: dict[str, list[bool]] = defaultdict(list)
    by_layout: dict[str, list[bool]] = defaultdict(list)
    by_seed: dict[int, list[bool]] = defaultdict(list)
    for image in images:
        results = [e["success"] for e in image["instances"]]
        for entity in image["instances"]:
            by_shape[parse_entity(entity["prompt"])[1]].append(entity["success"])
        by_layout[image["item"]].append(all(results))
        by_seed[image["seed"]].extend(results)
    scores = [e for image in images for e in image["instances"]]
    out = {"success": float(np.mean([e["success"] for e in scores])),
           "mIoU": float(np.mean([e["iou"] for e in scores]))}
    out |= {f"{shape}s": float(np.mean(v)) for shape, v in sorted(by_shape.items())}
    out["layouts all right, mean over seeds"] = float(np.mean([np.mean(v) for v in by_layout.values()]))
    out["layouts all right in >= half the seeds"] = float(np.mean([np.mean(v) >= 0.5 for v in by_layout.values()]))
    out["success std over seeds"] = float(np.std([np.mean(v) for v in by_seed.values()]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, help="keep seeds 0..N-1 only")
    args = parser.parse_args()
    for path in args.reports:
        report = json.loads((path / "results.json" if path.is_dir() else path).read_text(encoding="utf-8"))
        images = [i for i in report["per_image"] if args.seeds is None or i["seed"] < args.seeds]
        print(f"{path}: {len(images)} images")
        for key, value in summary(images).items():
            print(f"  {key}: {value:.3f}" if key in ("mIoU", "success std over seeds") else f"  {key}: {value:.1%}")


if __name__ == "__main__":
    main()
