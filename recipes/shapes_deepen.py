"""A shapes model folder with more single blocks, drawing exactly what it drew before (recipes/shapes_more.sh).

    python recipes/shapes_deepen.py START -o OUT [--single 2]

Copies the model folder START to OUT and appends `--single` single-stream blocks to its transformer, after its
last one. Each new block starts as the identity: its modulation layer (the linear that gives shift, scale and gate,
adaLN-Zero) is zero, so its gate is 0 and its output is its input; its attention and MLP weights are copies of an
earlier block's, so training starts from working features rather than random ones. The folder therefore renders
the same images as START until it is trained (checked here on one forward pass) and the training decides what the
new blocks add.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import load_file, save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"


def deepen(weights: dict[str, torch.Tensor], blocks: int, extra: int) -> dict[str, torch.Tensor]:
    """`weights` with `extra` single blocks appended after the `blocks` there are, each a copy of the block `extra`
    places before it (of the last one where there are fewer) with its modulation zeroed."""
    out = dict(weights)
    for j in range(extra):
        source = f"single_transformer_blocks.{blocks - extra + j if extra <= blocks else blocks - 1}."
        for key, value in weights.items():
            if key.startswith(source):
                new = f"single_transformer_blocks.{blocks + j}.{key[len(source):]}"
                out[new] = torch.zeros_like(value) if ".norm.linear." in key else value.clone()
    return out


def check_identity(before: Path, after: Path) -> float:
    """Largest difference between the two transformers' outputs on one random input, in float32."""
    models = [FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32) for folder in (before, after)]
    config = models[0].config
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 64, config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(1, 8, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([0.5]), "img_ids": torch.zeros(64, 3), "txt_ids": torch.zeros(8, 3),
    }
    with torch.no_grad():
        first, second = (model(**inputs).sample for model in models)
    return float((first - second).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", type=Path, help="a shapes model folder (diffusers FLUX layout)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the new folder (must not exist)")
    parser.add_argument("--single", type=int, default=2, help="single blocks to append [default: 2]")
    args = parser.parse_args()
    if args.single < 1:
        parser.error("--single must be at least 1")
    if args.output.exists():
        parser.error(f"{args.output} exists; give a new folder")

    shutil.copytree(args.start, args.output)
    folder = args.output / "transformer"
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    blocks = config["num_single_layers"]
    config["num_single_layers"] = blocks + args.single
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(deepen(load_file(folder / WEIGHTS), blocks, args.single), str(folder / WEIGHTS))
    difference = check_identity(args.start / "transformer", folder)
    if difference != 0.0:
        raise SystemExit(f"the deepened transformer differs from {args.start}'s by {difference}; expected none")
    print(f"wrote {args.output}: {blocks} -> {blocks + args.single} single blocks, the same outputs as {args.start}")


if __name__ == "__main__":
    main()
