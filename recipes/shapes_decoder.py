"""Fine-tune the shapes VAE's decoder on what the transformer gives it at the sampler's last step (docs/shapes.md,
"A decoder for the last step").

    python recipes/shapes_decoder.py MODEL -o OUT [--steps 600] [--minutes 40] [--sigma 0.3 0.65] [--clean 0.2]
    python recipes/shapes_decoder.py MODEL -o OUT2 --init OUT --last-steps 2 [--lr 1e-4]
    python recipes/shapes_decoder.py MODEL --pairs PAIRS --n-pairs 24000 --last-steps 2 --part 0/2 --pairs-only
    python recipes/shapes_decoder.py MODEL -o OUT3 --pairs PAIRS --n-pairs 24000 --last-steps 2 \
        --layers 2 --mid-attention --bf16

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

Sampling the estimates costs more than training on them, so `--pairs DIR` first fills a cache of `--n-pairs`
(clean latents, estimate, scene) triples in shards (resumable; `--part I/N --pairs-only` lets N processes fill it
side by side), then trains on draws from it. `--widen M`, `--layers L` and `--mid-attention` grow the VAE before
training (`grown`: the encoder still gives the same latents, and the decoder draws what it drew until it is trained).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import save_file

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_layout
from eligen.pipeline.model_defaults import with_model_defaults
from eligen.pipeline.sampler import denoise, get_noise, get_schedule, pack, unpack
from eligen.pipeline.shapes.scenes import Scene, layout_data, render, scenes

WARMUP = 20  # steps of linear learning-rate warmup
PAIR_SEED = 40_000_000  # shard k of a pair cache holds the scenes of seed PAIR_SEED + k
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


def grown(vae: AutoencoderKL, widen: int, layers: int, attention: bool) -> AutoencoderKL:
    """`vae` with `widen` times the channels (and groups), `layers` per block and, with `attention`, attention in
    its mid-blocks, drawing exactly what `vae` draws until its decoder is trained. Every weight of `vae` is kept in
    the leading slice of its grown tensor, and its old output channels read nothing from the new input channels, so
    the old channels compute what they did (the new ones form whole groups of their own, so no norm mixes old and
    new). The new channels start from the new model's random initialisation, ready to be trained; an added resnet
    layer or attention block starts as the identity (its last projection zero)."""
    config = dict(vae.config)
    config.update(block_out_channels=[c * widen for c in config["block_out_channels"]],
                  norm_num_groups=config["norm_num_groups"] * widen, layers_per_block=layers,
                  mid_block_add_attention=config["mid_block_add_attention"] or attention)
    new = AutoencoderKL.from_config(config)
    old, state = vae.state_dict(), new.state_dict()
    for name, tensor in state.items():
        if name in old:
            kept, grown_tensor = old[name], tensor.clone()
            if kept.dim() >= 2:
                grown_tensor[: kept.shape[0], kept.shape[1]:] = 0
                grown_tensor[: kept.shape[0], : kept.shape[1]] = kept
            else:
                grown_tensor[: kept.shape[0]] = kept
            state[name] = grown_tensor
        elif name.rsplit(".", 2)[-2] == "conv2" or ".to_out." in name:
            state[name] = torch.zeros_like(tensor)
    new.load_state_dict(state)
    return new


def same_latents(vae: AutoencoderKL, other: AutoencoderKL, images: torch.Tensor) -> bool:
    """Whether two VAEs give `images` the same latents: the same scaling and shift, and encodings equal to 1e-4
    (a grown copy sums the same products in another order: about 1e-5 apart on latents of order 1-10)."""
    keys = ("scaling_factor", "shift_factor")
    if any(vae.config[k] != other.config[k] for k in keys):
        return False
    with torch.no_grad():
        return torch.allclose(vae.encode(images).latent_dist.mode(), other.encode(images).latent_dist.mode(),
                              atol=1e-4)


def pair_shards(count: int, shard_size: int) -> list[int]:
    """The sizes of the shards that hold `count` pairs."""
    return [min(shard_size, count - start) for start in range(0, count, shard_size)]


def fill_pairs(pipe: EligenPipeline, model: str, size: int, folder: Path, count: int, shard_size: int,
               part: tuple[int, int], draw: Callable[[random.Random], Tail], settings: dict[str, str]) -> None:
    """Write the missing shards of `part` (i of n: shards k = i mod n) of a cache of `count` (clean, estimate,
    image) triples into `folder`: shard k holds the scenes of seed PAIR_SEED + k (a fresh scene generator per shard),
    latents in fp16 and images in uint8, with `settings` (how the estimates were sampled) as its metadata. Each shard
    is written whole or not at all, so a run stopped half-way resumes where it stopped. A shard that holds fewer
    pairs than it should (the last one of a smaller cache being grown) is written again: its pairs come first."""
    folder.mkdir(parents=True, exist_ok=True)
    index, parts = part
    for k, n in enumerate(pair_shards(count, shard_size)):
        path = folder / f"shard-{k:05d}.safetensors"
        if k % parts != index or shard_pairs(path) >= n:
            continue
        started, rng = time.time(), random.Random(PAIR_SEED + k)
        clean, estimate = [], []
        batch = scenes(n, seed=PAIR_SEED + k, size=size)
        for i, scene in enumerate(batch):
            c, e = estimate_latents(pipe, model, scene, draw(rng), PAIR_SEED + k * shard_size + i)
            clean.append(c.half())
            estimate.append(e.half())
        images = torch.cat([image_bytes(s) for s in batch])
        partial = path.with_suffix(".partial")
        save_file({"clean": torch.cat(clean), "estimate": torch.cat(estimate), "image": images.contiguous()},
                  str(partial), metadata=settings)
        os.replace(partial, path)
        print(json.dumps({"shard": k, "pairs": n, "s": round(time.time() - started, 1)}), flush=True)


def shard_pairs(path: Path) -> int:
    """How many pairs the shard at `path` holds (0 if there is none)."""
    if not path.exists():
        return 0
    with safe_open(str(path), "pt") as f:
        return f.get_slice("clean").get_shape()[0]


def load_pairs(folder: Path, count: int, shard_size: int, settings: dict[str, str]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (clean, estimate, image) tensors of a complete cache written by `fill_pairs` with the same settings."""
    shards = []
    for k, n in enumerate(pair_shards(count, shard_size)):
        path = folder / f"shard-{k:05d}.safetensors"
        if not path.exists():
            raise SystemExit(f"{folder}: shard {path.name} is missing; fill the cache first (--pairs-only, "
                             "one call per --part)")
        with safe_open(str(path), "pt") as f:  # settings and size checked before any tensor is read
            if f.metadata() != settings:
                raise SystemExit(f"{path}: sampled with {f.metadata()}, not {settings}: use another --pairs folder")
            held = f.get_slice("clean").get_shape()[0]
            if held != n:
                raise SystemExit(f"{path}: holds {held} pairs, expected {n} (another --shard-size?)")
            shards.append({key: f.get_tensor(key) for key in ("clean", "estimate", "image")})
    clean, estimate, images = ([s[key] for s in shards] for key in ("clean", "estimate", "image"))
    return torch.cat(clean), torch.cat(estimate), torch.cat(images)


def image_bytes(scene: Scene) -> torch.Tensor:
    """(1, 3, H, W) uint8 image of the scene."""
    return torch.from_numpy(np.array(render(scene))).permute(2, 0, 1)[None]


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [-1, 1], as the VAE draws them."""
    return images.float() / 127.5 - 1


def pixels(scene: Scene) -> torch.Tensor:
    """(1, 3, H, W) image of the scene in [-1, 1]."""
    return unit_range(image_bytes(scene))


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
    parser.add_argument("-o", "--output", type=Path, help="the VAE folder to write (not needed with --pairs-only)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=40.0, help="stop early after this wall time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--sigma", type=float, nargs=2, default=(0.3, 0.65), metavar=("LO", "HI"))
    parser.add_argument("--last-steps", type=int, metavar="K", help="instead of one step from --sigma: the last k "
                        "steps of MODEL's own schedule (its steps and shift), k uniform in 1..K")
    parser.add_argument("--init", type=Path, help="start from this VAE folder (it must encode as MODEL's VAE does; "
                        "a grown one may be continued) instead of MODEL's")
    parser.add_argument("--clean", type=float, default=0.2, help="fraction of samples decoded from clean latents")
    parser.add_argument("--loss", choices=("l1+mse", "l1"), default="l1+mse")
    parser.add_argument("--edge-weight", type=float, default=0.0, metavar="W",
                        help="outline pixels of the scene weigh 1 + W in the loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--widen", type=int, default=1, metavar="M",
                        help="grow the VAE to M times its channels before training (see `grown`)")
    parser.add_argument("--layers", type=int, metavar="L", help="grow it to L layers per block (default: as it is)")
    parser.add_argument("--mid-attention", action="store_true", help="grow it an attention layer in its mid-blocks")
    parser.add_argument("--bf16", action="store_true", help="train the decoder under bf16 autocast (weights stay "
                        "fp32; 2.3x faster for a grown decoder on an AVX-512 BF16 CPU)")
    parser.add_argument("--pairs", type=Path, metavar="DIR", help="draw the samples from a cache of --n-pairs "
                        "(clean, estimate, scene) triples in DIR instead of sampling each step")
    parser.add_argument("--n-pairs", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--part", default="0/1", metavar="I/N", help="with --pairs-only: fill shard k if k mod N = I")
    parser.add_argument("--pairs-only", action="store_true", help="fill the --pairs cache, then stop")
    args = parser.parse_args()
    lo, hi = args.sigma
    if not 0 < lo <= hi < 1:
        parser.error(f"--sigma: expected 0 < LO <= HI < 1, got {lo} {hi}")
    if args.edge_weight < 0:
        parser.error(f"--edge-weight: expected W >= 0, got {args.edge_weight}")
    if args.last_steps is not None and args.last_steps < 1:
        parser.error(f"--last-steps: expected a positive number of steps, got {args.last_steps}")
    if args.widen < 1 or (args.layers is not None and args.layers < 1):
        parser.error(f"--widen and --layers: expected positive numbers, got {args.widen} and {args.layers}")
    index, _, parts = args.part.partition("/")
    if not (index.isdigit() and parts.isdigit() and int(index) < int(parts)):
        parser.error(f"--part: expected I/N with 0 <= I < N, got {args.part!r}")
    part = (int(index), int(parts))
    if args.pairs_only and args.pairs is None:
        parser.error("--pairs-only needs --pairs DIR")
    if not args.pairs_only and args.output is None:
        parser.error("-o/--output is required (but with --pairs-only)")

    torch.manual_seed(args.seed)
    pipe = EligenPipeline.from_pretrained(args.model, device="cpu", dtype="fp32")
    draw, held_tail = tails(pipe, args.model, (lo, hi), args.last_steps)
    size = with_model_defaults(parse_layout({"prompt": "a"}), args.model).width  # the model's own size
    settings = {"sigma": f"{lo} {hi}", "last_steps": str(args.last_steps), "size": str(size)}
    if args.pairs is not None:
        fill_pairs(pipe, args.model, size, args.pairs, args.n_pairs, args.shard_size, part, draw, settings)
        if args.pairs_only:
            return
    rng = random.Random(args.seed)
    held = scenes(32, 20_000_000 + args.seed, size=size)
    vae = copy.deepcopy(pipe.family.pipe.vae)
    if args.init is not None:
        init = AutoencoderKL.from_pretrained(args.init)
        if not same_latents(init, vae, torch.cat([pixels(s) for s in held[:4]])):
            parser.error(f"--init {args.init}: it does not encode as {args.model}'s VAE does, so its decoder was not "
                         "trained on the model's latents")
        vae = init
    if args.widen > 1 or args.layers is not None or args.mid_attention:
        vae = grown(vae, args.widen, args.layers or vae.config.layers_per_block, args.mid_attention)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    optimizer = torch.optim.Adam(vae.decoder.parameters(), lr=args.lr)
    held_pairs = [estimate_latents(pipe, args.model, s, held_tail, 30_000_000 + i) for i, s in enumerate(held)]
    held_pixels = [pixels(s) for s in held]
    before = {"clean": psnr(vae, [c for c, _ in held_pairs], held_pixels),
              "estimate": psnr(vae, [e for _, e in held_pairs], held_pixels)}
    cache = load_pairs(args.pairs, args.n_pairs, args.shard_size, settings) if args.pairs is not None else None

    def sample(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of latents to decode and the images they should give."""
        if cache is not None:
            clean, estimate, images = cache
            picks = [rng.randrange(len(images)) for _ in range(args.batch_size)]
            latents = [(clean if rng.random() < args.clean else estimate)[i:i + 1].float() for i in picks]
            return torch.cat(latents), unit_range(images[picks])
        batch = scenes(args.batch_size, seed=args.seed * 1_000_003 + step, size=size)
        latents = []
        for i, scene in enumerate(batch):
            noise_seed = (step * args.batch_size + i) * 7 + 1
            clean, estimate = estimate_latents(pipe, args.model, scene, draw(rng), noise_seed)
            latents.append(clean if rng.random() < args.clean else estimate)
        return torch.cat(latents), torch.cat([pixels(s) for s in batch])

    start, step, log = time.time(), 0, []
    while step < args.steps and time.time() - start < args.minutes * 60:
        progress = max(step / args.steps, (time.time() - start) / (args.minutes * 60))  # whichever ends first
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        latents, images = sample(step)
        vae.decoder.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            recon = vae.decode(latents).sample
        loss = pixel_loss(recon.float(), images, args.loss, args.edge_weight)
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
               "bf16": args.bf16, "widen": args.widen, "layers": vae.config.layers_per_block,
               "mid_attention": vae.config.mid_block_add_attention,
               "pairs": {"folder": str(args.pairs), "n": args.n_pairs} if args.pairs is not None else None,
               "wall_s": round(wall, 1),
               "samples_per_s": round(step * args.batch_size / max(wall, 1e-9), 2),
               "final_loss": log[-1]["loss"] if log else None,
               "held_out_psnr_db_before": before, "held_out_psnr_db_after": after}
    (args.output / "train_summary.json").write_text(json.dumps({**summary, "log": log}, indent=1), encoding="utf-8")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
