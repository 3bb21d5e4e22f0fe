"""Train the shapes base model and write it as a diffusers FLUX folder (step 2 of the shapes recipe).

    python recipes/shapes_base.py --vae runs/shapes/vae -o runs/shapes/base [--steps 3000] [--minutes 35]
    python recipes/shapes_base.py --vae VAE -o FOLDER --steps 0 --pool 64 --size 128 --heads 8   (untrained)

Frozen random CLIP and T5 (2 layers, width 64) over a word-level vocabulary (every word of the shape
captions is one token; T5 length 16), and a FluxTransformer2DModel (2 dual + 4 single blocks, 4 heads x 32,
no guidance embedding: use true CFG) trained from scratch on global captions only: rectified flow,
logit-normal t, 10% caption dropout (the empty prompt), AdamW with warmup and cosine decay, EMA 0.999 (the
EMA weights are saved). Training scenes are a fixed pool encoded once by the VAE of `shapes_vae.py`.
`--size` (scene side, 64 by default: with the factor-4 VAE, 128 gives a 16x16 token grid) and `--heads`,
`--head-dim` change the design; `--steps 0` writes an untrained folder for a single-stage `eligen train --full`.
The folder holds fp16 weights and `eligen.json` (T5 length 16, the native size, steps and CFG, the vocabulary
and the most shapes per training scene); `train_summary.json` records wall time, samples/s and the loss curve.
Runs on CUDA when there is a GPU (`--device`); the random draws come from a CPU generator, so they are the same.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from eligen.pipeline.conditioning import Conditioning
from eligen.pipeline.families.flux.transformer import image_ids, predict
from eligen.pipeline.sampler import pack
from eligen.pipeline.shapes.scenes import PALETTE, SHAPES, render, scenes
from eligen.pipeline.shapes.tiny_flux import (
    _FLUX_DEV_SCHEDULER,
    _build_tokenizers,
    _clip_vocab_and_merges,
    _write_compat_files,
)
from eligen.pipeline.train.loss import rectified_flow_loss

WORDS: tuple[str, ...] = ("a", "and", *PALETTE, *SHAPES)
MAX_SEQUENCE_LENGTH = 16
TEXT_WIDTH = 64
SIDE = 64  # px: the scenes' default size
STEPS, CFG = 24, 3.0  # the model's sampling defaults: what the README layout and the inpainting figure use
MAX_ENTITIES = 4  # the most shapes in a training scene (`scenes` and `eligen data shapes` default to 1-4)


def build_pipeline(vae: AutoencoderKL, seed: int, heads: int = 4, head_dim: int = 32) -> FluxPipeline:
    """The shapes FluxPipeline: tokenizers, random text encoders and an untrained transformer."""
    tokenizer, tokenizer_2 = _build_tokenizers(MAX_SEQUENCE_LENGTH, WORDS)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=128, projection_dim=TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=TEXT_WIDTH, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False, pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id,
    ))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * vae.config.latent_channels, num_layers=2, num_single_layers=4,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=TEXT_WIDTH, guidance_embeds=False, axes_dims_rope=rope_axes(head_dim),
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_DEV_SCHEDULER), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )
    for module in (vae, text_encoder, text_encoder_2):
        module.requires_grad_(False).eval()
    return pipe


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX's rotary split of a head (text index, y, x): a quarter for the index, the rest shared by y and x."""
    first = head_dim // 4
    return first, (head_dim - first) // 2, (head_dim - first) // 2


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, count: int, seed: int, size: int = SIDE) -> tuple[torch.Tensor, list[str]]:
    """Packed, scaled latents (count, n, 64) of `count` scenes, and their captions."""
    chosen = scenes(count, seed, size)
    latents = []
    for i in range(0, count, 256):
        pixels = np.stack([np.asarray(render(s)) for s in chosen[i:i + 256]])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = vae.encode(images).latent_dist.mode()
        latents.append(pack((z - vae.config.shift_factor) * vae.config.scaling_factor))
    return torch.cat(latents), [s.caption for s in chosen]


def encode_prompts(pipe: FluxPipeline, prompts: list[str], cache: dict[str, tuple]) -> tuple[torch.Tensor, ...]:
    """(T5 embeddings, CLIP pooled) of a batch of prompts, each prompt encoded once as FluxPipeline does."""
    for prompt in set(prompts) - cache.keys():
        with torch.no_grad():
            t5, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=MAX_SEQUENCE_LENGTH)
        cache[prompt] = (t5[0], pooled[0])
    return torch.stack([cache[p][0] for p in prompts]), torch.stack([cache[p][1] for p in prompts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, required=True, help="folder written by shapes_vae.py")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=35.0, help="stop early after this wall time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--pool", type=int, default=16384, help="training scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=SIDE, help="scene side in px (a multiple of 16)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--init", type=Path, help="start from the transformer of an earlier base folder (continue)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    vae = AutoencoderKL.from_pretrained(args.vae)
    pipe = build_pipeline(vae, args.seed, args.heads, args.head_dim)
    if args.init is not None:  # its text encoders too: they are frozen, and the transformer learned them
        pipe.register_modules(
            transformer=FluxTransformer2DModel.from_pretrained(args.init, subfolder="transformer").float(),
            text_encoder=CLIPTextModel.from_pretrained(args.init, subfolder="text_encoder").float().eval(),
            text_encoder_2=T5EncoderModel.from_pretrained(args.init, subfolder="text_encoder_2").float().eval(),
        )
    latents, captions = encode_pool(vae, args.pool, args.seed, args.size)
    pipe.to(device)
    latents = latents.to(device)
    transformer = pipe.transformer
    ema = copy.deepcopy(transformer).requires_grad_(False)
    side = 2 * math.isqrt(latents.shape[1])  # latent pixels per side (2x2 latent pixels per token)
    ids = image_ids(side, side, device, torch.float32)
    def velocity(x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return predict(transformer, x, timestep, cond, ids, None)

    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    prompt_cache: dict[str, tuple] = {}
    start, step, log = time.time(), 0, []
    while step < args.steps and time.time() - start < args.minutes * 60:
        progress = min(1.0, max(step / args.steps, (time.time() - start) / (args.minutes * 60)))
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(len(captions), (args.batch_size,), generator=generator)
        drop = torch.rand(args.batch_size, generator=generator) < args.caption_dropout
        prompts = ["" if d else captions[i] for i, d in zip(index.tolist(), drop.tolist(), strict=True)]
        t5, pooled = encode_prompts(pipe, prompts, prompt_cache)
        cond = Conditioning(t5, pooled, torch.zeros(t5.shape[1], 3, device=device), None)
        x0 = latents[index.to(device)]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.sigmoid(torch.randn(args.batch_size, generator=generator)).to(device)
        loss = rectified_flow_loss(velocity, x0, noise, t, torch.ones_like(t), cond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), transformer.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        step += 1
        if step % 25 == 0:
            elapsed = round(time.time() - start, 1)
            log.append({"step": step, "loss": round(loss.item(), 5), "lr": round(lr, 7), "s": elapsed})
            print(json.dumps(log[-1]), flush=True)
    wall = time.time() - start

    pipe.transformer = ema
    pipe.register_modules(transformer=ema)
    pipe.to("cpu", torch.float16).save_pretrained(args.output, safe_serialization=True)
    _write_compat_files(args.output, *_clip_vocab_and_merges(WORDS))
    meta = {"note": f"the built-in shapes model (recipes/shapes_base.py): {args.size}x{args.size} scenes of 1-4 "
            "flat shapes, captions in the words of `vocabulary`", "max_sequence_length": MAX_SEQUENCE_LENGTH,
            "size": [args.size, args.size], "steps": STEPS, "cfg": CFG, "vocabulary": list(WORDS),
            "max_entities": MAX_ENTITIES}
    (args.output / "eligen.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    summary = {"steps": step, "batch_size": args.batch_size, "wall_s": round(wall, 1),
               "samples_per_s": round(step * args.batch_size / wall, 2), "parameters": transformer.num_parameters(),
               "final_loss": log[-1]["loss"] if log else None}
    (args.output / "train_summary.json").write_text(json.dumps({**summary, "log": log}, indent=1), encoding="utf-8")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
