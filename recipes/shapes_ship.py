"""Assemble the built-in shapes models from a recipe run (last step of docs/shapes.md).

    python recipes/shapes_ship.py --base runs/shapes/base --eligen runs/shapes/eligen \
        [--eligen runs/shapes/eligen2 ...] [--vae runs/shapes/vae-sharp] [--shapes-vae runs/shapes/decoder] \
        [--size 128] [--steps 12] [--shift 9] -o pipeline/shapes/builtin-models

Writes OUT/shapes-base (the base folder as written by shapes_base.py) and OUT/shapes (the same folder with the
transformer of the last `--eligen` run (`eligen train --full`) in fp16 in place of the base transformer, and the
training settings of every `--eligen` run in order, without this machine's paths). `--vae` puts a VAE whose decoder
was sharpened with `shapes_vae.py --decoder-only` into both folders: its encoder, and so the latents the transformers
were trained on, are the base folder's; `--shapes-vae` puts one into `shapes` only (a decoder fine-tuned on that
model's own samples by `shapes_decoder.py`, with the same encoder). `--size N` declares N x N scenes in `shapes`'
eligen.json (the size its last stage was trained at), so a layout without `size` renders at it; `--steps N` its
default sampling steps; `--shift S` a static shift S of its sigma schedule (`sigma = S*s / (1 + (S-1)*s)`, s linear
from 1) in place of the resolution-dependent one of the base's scheduler config. `shapes-base` keeps the base's size,
steps and schedule.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="folder written by shapes_base.py")
    parser.add_argument("--eligen", type=Path, required=True, action="append",
                        help="output folder of `eligen train --full` (again for each later stage, in order)")
    parser.add_argument("--vae", type=Path, help="a VAE from `shapes_vae.py --decoder-only` for both folders")
    parser.add_argument("--shapes-vae", type=Path, help="a VAE from `shapes_decoder.py` for `shapes` only "
                        "[default: --vae's, or the base's]")
    parser.add_argument("--size", type=int, help="the scene side `shapes` declares [default: the base's]")
    parser.add_argument("--steps", type=int, help="the sampling steps `shapes` declares [default: the base's]")
    parser.add_argument("--shift", type=float, help="a static sigma shift for `shapes`' scheduler instead of the "
                        "base's resolution-dependent one [default: the base's]")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if args.shift is not None and args.shift <= 0:
        parser.error(f"--shift: expected a positive number, got {args.shift}")

    base, shapes = args.output / "shapes-base", args.output / "shapes"
    for target, vae in ((base, args.vae), (shapes, args.shapes_vae or args.vae)):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(args.base, target)
        if vae is not None:
            shutil.rmtree(target / "vae")
            AutoencoderKL.from_pretrained(vae, torch_dtype=torch.float16).save_pretrained(
                target / "vae", safe_serialization=True)
    shutil.rmtree(shapes / "transformer")
    transformer = FluxTransformer2DModel.from_pretrained(args.eligen[-1] / "transformer", torch_dtype=torch.float16)
    transformer.save_pretrained(shapes / "transformer", safe_serialization=True)
    stages = []
    for run in args.eligen:
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        stages.append({k: v for k, v in config.items() if k not in ("data", "output", "model", "cache_dir", "resume")})
    (shapes / "eligen_train_config.json").write_text(json.dumps(stages, indent=2) + "\n", encoding="utf-8")
    declared = shapes / "eligen.json"
    meta = json.loads(declared.read_text(encoding="utf-8"))
    if args.size is not None:
        side = meta["size"][0]
        meta["note"] = meta["note"].replace(f"{side}x{side}", f"{args.size}x{args.size}")
        meta["size"] = [args.size, args.size]
    if args.steps is not None:
        meta["steps"] = args.steps
    declared.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if args.shift is not None:
        scheduler = shapes / "scheduler" / "scheduler_config.json"
        config = json.loads(scheduler.read_text(encoding="utf-8"))
        config.update(use_dynamic_shifting=False, shift=args.shift)
        scheduler.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {base} and {shapes}")


if __name__ == "__main__":
    main()
