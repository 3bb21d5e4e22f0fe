"""Fine-tune the shapes VAE's decoder on what the transformer gives it at the sampler's last step (docs/shapes.md,
"A decoder for the last step").

    python recipes/shapes_decoder.py MODEL -o OUT [--steps 600] [--minutes 40] [--sigma 0.3 0.65] [--clean 0.2]
    python recipes/shapes_decoder.py MODEL -o OUT2 --init OUT --last-steps 2 [--lr 1e-4]

With a static shift of 9 in 12 steps, the sampler's last Euler step goes from sigma 0.45 to 0: the image is decoded
from the transformer's one-step estimate `x0 = x - sigma v`, which is softer than the encoded scenes the decoder was
trained on. This trains the decoder of MODEL's VAE to draw the scene from such an estimate: each sample is a fresh
scene (`eligen data shapes`' generator, at MODEL's declared size), its latents noised to a sigma drawn uniformly in
`--sigma LO HI` with fresh noise and denoised in that one Euler step by MODEL's transformer, with the scene's entities
as a layout (boxes) and MODEL's CFG; with `--last-steps K` it is noised to one of the last K sigmas of MODEL's own
schedule instead and sampled through the rest of it, as generation does. The decoder's output is compared with the
scene (L1 + MSE, or L1 alone with `--loss l1`: the per-pixel median rather than a blend of mean and median, so an
uncertain corner pixel takes one colour instead of a mix; `--edge-weight W` weighs the pixels on the scene's outlines
1 + W times, as a shape's class is decided by its outline). A fraction `--clean` of the samples are decoded from their
clean latents, so encoded images (inpainting, re-runs) still decode well. The encoder and the transformer are frozen:
the latents, their scaling and every transformer trained on them stay valid. Adam with 20 warmup steps and cosine
decay, stopping at `--steps` or `--minutes`, whichever comes first. Writes OUT as a VAE folder (for `shapes_ship.py
--shapes-vae`) with a `train_summary.json`; prints wall time, samples/s and the held-out PSNR from both kinds of
latents.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_layout
from eligen.pipeline.model_defaults import with_model_defaults
from eligen.pipeline.sampler import denoise, get_noise, get_schedule, pack, unpack
from eligen.pipeline.shapes.scenes import Scene, layout_data, render, scenes

WARMUP = 20  # steps of linear learning-rate warmup
Tail = tuple[torch.Tensor, torch.Tensor]  # sigmas ending with 0, and the timesteps of all but the last


def estimate_latents(pipe: EligenPipeline, model: str, scene: Scene, tail: Tail, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, estimate) VAE latents (1, C, h, w), unscaled: `scene`'s latents noised to the first of the `tail`
    sigmas with noise `seed`, then sampled through the tail to 0 by `pipe` (loaded from `model`, whose CFG it uses)."""
    layout = with_model_defaults(parse_layout(layout_data(scene)), model)
    positive, negative = pipe.conditionings(layout, pipe.token_regions(layout, Path(".")))
    x0 = pipe.encode_image(render(scene))
    h, w = pipe.latent_grid(layout)
    noise = pack(get_noise(seed, pipe.family.latent_channels, h, w, x0.dtype))
    sigmas, timesteps = tail
    x = (1 - sigmas[0]) * x0 + sigmas[0] * noise
    velocity = pipe.family.velocity(pipe.transformer, h, w, layout.guidance)
    estimate = denoise(velocity, x, sigmas, timesteps, positive, negative, layout.cfg)
    config = pipe.family.pipe.vae.config

    def unscaled(tokens: torch.Tensor) -> torch.Tensor:
        return unpack(tokens, h, w) / config.scaling_factor + config.shift_factor
    return unscaled(x0), unscaled(estimate)


def tails(pipe: EligenPipeline, model: str, sigma: tuple[float, float], last_steps: int | None
          ) -> tuple[Callable[[random.Random], Tail], Tail]:
    """How a sample is sampled to 0 (a draw from a generator), and how the held-out samples are: one Euler step from
    a sigma uniform in `sigma` (held out: its middle), or, with `last_steps` K, the last k steps of the model's own
    schedule, k uniform in 1..K (held out: k = K // 2 + 1)."""
    def one_step(s: float) -> Tail:
        return torch.tensor([s, 0.0]), torch.tensor([s * 1000])

    if last_steps is None:
        lo, hi = sigma
        return lambda rng: one_step(rng.uniform(lo, hi)), one_step((lo + hi) / 2)
    layout = with_model_defaults(parse_layout({"prompt": "a"}), model)
    h, w = pipe.latent_grid(layout)
    sigmas, timesteps = get_schedule(pipe.schedule(layout), layout.steps, h * w // 4, pipe.family.scheduler_config)

    def last(k: int) -> Tail:
        return sigmas[-k - 1:], timesteps[-k:]
    return lambda rng: last(rng.randint(1, last_steps)), last(last_steps // 2 + 1)


def pixels(scene: Scene) -> torch.Tensor:
    """(1, 3, H, W) image of the scene in [-1, 1]."""
    return torch.from_numpy(np.array(render(scene))).permute(2, 0, 1)[None].float() / 127.5 - 1


def pixel_loss(recon: torch.Tensor, images: torch.Tensor, loss: str, edge_weight: float) -> torch.Tensor:
    """The weighted mean of |recon - images| (plus its square for "l1+mse") over pixels, a pixel of `images` on an
    outline (a 3x3 neighbour of another colour) weighing 1 + `edge_weight`, any other 1."""
    upper = torch.nn.functional.max_pool2d(images, 3, stride=1, padding=1)
    lower = -torch.nn.functional.max_pool2d(-images, 3, stride=1, padding=1)
    outline = ((upper - lower).abs().amax(dim=1, keepdim=True) > 0).float()
    weight = 1 + edge_weight * outline
    error = (recon - images).abs()
    if loss == "l1+mse":
        error = error + error**2
    return (weight * error).sum() / (weight.sum() * images.shape[1])


def psnr(vae: torch.nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    with torch.no_grad():
        mse = np.mean([((vae.decode(z).sample.clamp(-1, 1) - t) / 2).pow(2).mean().item()
                       for z, t in zip(inputs, targets, strict=True)])
    return round(10 * math.log10(1 / mse), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the shapes model folder (or built-in name) whose transformer and VAE to use")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=40.0, help="stop early after this wall time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--sigma", type=float, nargs=2, default=(0.3, 0.65), metavar=("LO", "HI"))
    parser.add_argument("--last-steps", type=int, metavar="K", help="instead of one step from --sigma: the last k "
                        "steps of MODEL's own schedule (its steps and shift), k uniform in 1..K")
    parser.add_argument("--init", type=Path, help="start from the decoder of this VAE folder (its encoder must be "
                        "MODEL's) instead of MODEL's")
    parser.add_argument("--clean", type=float, default=0.2, help="fraction of samples decoded from clean latents")
    parser.add_argument("--loss", choices=("l1+mse", "l1"), default="l1+mse")
    parser.add_argument("--edge-weight", type=float, default=0.0, metavar="W",
                        help="outline pixels of the scene weigh 1 + W in the loss")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lo, hi = args.sigma
    if not 0 < lo <= hi < 1:
        parser.error(f"--sigma: expected 0 < LO <= HI < 1, got {lo} {hi}")
    if args.edge_weight < 0:
        parser.error(f"--edge-weight: expected W >= 0, got {args.edge_weight}")
    if args.last_steps is not None and args.last_steps < 1:
        parser.error(f"--last-steps: expected a positive number of steps, got {args.last_steps}")

    torch.manual_seed(args.seed)
    pipe = EligenPipeline.from_pretrained(args.model, device="cpu", dtype="fp32")
    vae = pipe.family.pipe.vae
    if args.init is not None:
        init = AutoencoderKL.from_pretrained(args.init)
        if any(not torch.equal(a, b) for a, b in zip(init.encoder.state_dict().values(),
                                                     vae.encoder.state_dict().values(), strict=True)):
            parser.error(f"--init {args.init}: its encoder is not {args.model}'s, so its latents are not the model's")
        vae.decoder.load_state_dict(init.decoder.state_dict())
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    optimizer = torch.optim.Adam(vae.decoder.parameters(), lr=args.lr)
    size = with_model_defaults(parse_layout({"prompt": "a"}), args.model).width  # the model's own size
    rng = random.Random(args.seed)
    held = scenes(32, 20_000_000 + args.seed, size=size)
    draw, held_tail = tails(pipe, args.model, (lo, hi), args.last_steps)
    held_pairs = [estimate_latents(pipe, args.model, s, held_tail, 30_000_000 + i) for i, s in enumerate(held)]
    held_pixels = [pixels(s) for s in held]
    before = {"clean": psnr(vae, [c for c, _ in held_pairs], held_pixels),
              "estimate": psnr(vae, [e for _, e in held_pairs], held_pixels)}
    start, step, log = time.time(), 0, []
    while step < args.steps and time.time() - start < args.minutes * 60:
        progress = max(step / args.steps, (time.time() - start) / (args.minutes * 60))  # whichever ends first
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        batch = scenes(args.batch_size, seed=args.seed * 1_000_003 + step, size=size)
        latents = []
        for i, scene in enumerate(batch):
            noise_seed = (step * args.batch_size + i) * 7 + 1
            clean, estimate = estimate_latents(pipe, args.model, scene, draw(rng), noise_seed)
            latents.append(clean if rng.random() < args.clean else estimate)
        vae.decoder.train()
        recon = vae.decode(torch.cat(latents).clone()).sample
        images = torch.cat([pixels(s) for s in batch])
        loss = pixel_loss(recon, images, args.loss, args.edge_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 10 == 0:
            log.append({"step": step, "loss": round(loss.item(), 5), "s": round(time.time() - start, 1)})
            print(json.dumps(log[-1]), flush=True)
    wall = time.time() - start

    vae.eval()
    after = {"clean": psnr(vae, [c for c, _ in held_pairs], held_pixels),
             "estimate": psnr(vae, [e for _, e in held_pairs], held_pixels)}
    vae.save_pretrained(args.output, safe_serialization=True)
    summary = {"model": str(args.model), "steps": step, "batch_size": args.batch_size, "lr": args.lr,
               "sigma": [lo, hi], "last_steps": args.last_steps, "init": str(args.init) if args.init else None,
               "clean": args.clean, "loss": args.loss, "edge_weight": args.edge_weight, "seed": args.seed,
               "wall_s": round(wall, 1),
               "samples_per_s": round(step * args.batch_size / max(wall, 1e-9), 2),
               "final_loss": log[-1]["loss"] if log else None,
               "held_out_psnr_db_before": before, "held_out_psnr_db_after": after}
    (args.output / "train_summary.json").write_text(json.dumps({**summary, "log": log}, indent=1), encoding="utf-8")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
