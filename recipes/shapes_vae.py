"""Train the shapes model's VAE (step 1 of the shapes recipe, docs/shapes.md).

    python recipes/shapes_vae.py -o runs/shapes/vae [--steps 700] [--minutes 8] [--seed 0] [--init VAE]
    python recipes/shapes_vae.py -o runs/shapes/vae-sharp --init runs/shapes/vae --decoder-only [--lr 5e-4]

An `AutoencoderKL` with 3 blocks (16, 32, 64 channels), one layer per block, 16 latent channels and
factor 4 (64x64 images -> 16x16 latents), no mid-block attention; loss L1 + MSE + 1e-6 KL on freshly
generated scenes; Adam with cosine decay. Its `scaling_factor` (1/std) and `shift_factor` (mean) of the
latents of held-out scenes are written into its config. Prints wall time, samples/s and held-out PSNR.
`--decoder-only` trains the decoder of an `--init` VAE with its encoder frozen: the latents, their scaling and
so every transformer trained on them stay valid, and only the pixels drawn from them get sharper.
Runs on CUDA when there is a GPU (`--device`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from eligen.pipeline.shapes.scenes import render, scenes


def build_vae() -> AutoencoderKL:
    """The untrained shapes VAE."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64), layers_per_block=1,
        act_fn="silu", latent_channels=16, norm_num_groups=8, sample_size=64, mid_block_add_attention=False,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def scene_batch(count: int, seed: int) -> torch.Tensor:
    """(count, 3, 64, 64) images of fresh scenes in [-1, 1]."""
    pixels = np.stack([np.asarray(render(s)) for s in scenes(count, seed)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--minutes", type=float, default=8.0, help="stop early after this wall time")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, help="continue from a VAE this script wrote")
    parser.add_argument("--decoder-only", action="store_true", help="train the decoder of --init, encoder frozen")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.decoder_only and args.init is None:
        parser.error("--decoder-only needs --init (the VAE whose encoder, and so whose latents, are kept)")

    torch.manual_seed(args.seed)
    vae = (AutoencoderKL.from_pretrained(args.init) if args.init else build_vae()).to(args.device)
    if args.decoder_only:
        vae.encoder.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=args.lr)
    held_out = scene_batch(256, seed=10_000_000 + args.seed).to(args.device)
    start, step, log = time.time(), 0, []
    while step < args.steps and time.time() - start < args.minutes * 60:
        progress = max(step / args.steps, (time.time() - start) / (args.minutes * 60))  # whichever ends first
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = scene_batch(args.batch_size, seed=args.seed * 1_000_003 + step).to(args.device)
        with torch.set_grad_enabled(not args.decoder_only):
            posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - images).abs().mean() + ((recon - images) ** 2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 25 == 0:
            log.append({"step": step, "loss": round(loss.item(), 5), "s": round(time.time() - start, 1)})
            print(json.dumps(log[-1]), flush=True)
    wall = time.time() - start

    vae.eval()
    with torch.no_grad():
        latents = vae.encode(held_out).latent_dist.mode()
        recon = vae.decode(latents).sample.clamp(-1, 1)
    mse = ((recon - held_out) / 2).pow(2).mean().item()
    shift, scale = latents.mean().item(), 1 / latents.std().item()
    if args.decoder_only:  # the latents are the init's: keep its normalisation exactly
        shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    vae.register_to_config(shift_factor=round(shift, 5), scaling_factor=round(scale, 5))
    vae.save_pretrained(args.output, safe_serialization=True)
    summary = {"steps": step, "batch_size": args.batch_size, "wall_s": round(wall, 1),
               "samples_per_s": round(step * args.batch_size / wall, 2), "final_loss": log[-1]["loss"] if log else None,
               "held_out_psnr_db": round(10 * math.log10(1 / mse), 2), "shift_factor": shift, "scaling_factor": scale}
    (args.output / "train_summary.json").write_text(json.dumps({**summary, "log": log}, indent=1), encoding="utf-8")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
