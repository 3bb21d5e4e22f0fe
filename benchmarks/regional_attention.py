"""Per-step transformer time and peak memory of EliGen regional attention against plain FLUX and the reference.

    python benchmarks/regional_attention.py [--config tiny|medium|full] [--sizes 512 1024] [--entities 1 2 4 8]
        [--attention auto dense split flex] [--repeats 5] [--threads N] [--dtype fp32|bf16] [--steps 4] [--extras]

A step is one transformer pass (CFG makes two per sampling step). Every variant runs in this process on the same
weights: plain FLUX (the global prompt only), ours with k entities for each `--attention` form and entity token
budget (`max`: the reference's padding, `auto`: each entity's own tokens), and the reference, `diffsynth`'s
`model_fn_flux_image` on its `FluxDiT` holding the same weights (tests/reference_flux.py). After one warm-up call
each (FlexAttention compiles there), the variants run interleaved, in alternating order, `--repeats` times; the
table gives medians and their ratios. Peak memory is measured after all timings, in one more call per variant:
on CUDA `torch.cuda.max_memory_allocated` above the memory in use before the call; on the CPU the peak resident set
size above the resident set before the call (Linux: `/proc/self/clear_refs` and `VmHWM`, with glibc told to return
large freed blocks at once, so that the resident set follows the tensors alive). The FLOP columns are the
theoretical minimum ratios from token counts: multiply-adds of the linear layers (12 d^2 per token per block) and
of attention over the allowed query/key pairs only (2 d per pair).
The whole-generation table times `EligenPipeline.prepare` (text encoding, regions, mask), `sample` (all steps,
true CFG) and `decode`, so that per-call overheads show. `auto` (the layout default) is named with the form it chose.
`--extras` adds, for the largest k with `auto` and the reference's tokens: the first call of each form (FlexAttention
compiles there), a kohya-style LoRA of rank 16 on every block linear (unfused hooks, as `eligen generate` applies a
LoRA file), an int8 weight-only transformer (torchao), and on CUDA a whole generation with `--offload model`.

Configs (random weights, nothing downloaded):
* tiny: the test suite's model (2 + 2 blocks, width 32, T5 width 32), everything else tiny too;
* medium: 1 + 2 blocks of width 1024 (8 heads of 128, FLUX's head size and rotary axes), tiny text encoders and VAE;
* full: FLUX.1-dev's architecture (19 + 38 blocks, width 3072) with full-size T5-XXL, CLIP-L and VAE in bf16 on
  CUDA. It needs a GPU with about 45 GB (estimated: both DiTs share the weights that convert one to one).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from PIL import Image
from torch.nn.attention.flex_attention import BlockMask

from eligen.pipeline.attention_backends import SplitMask, attention_form, chosen_form
from eligen.pipeline.conditioning import Conditioning
from eligen.pipeline.families.flux.family import FluxFamily
from eligen.pipeline.families.flux.transformer import image_ids, predict
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import Layout, parse_layout
from eligen.pipeline.regions import entity_masks
from eligen.pipeline.sampler import get_noise, pack
from eligen.pipeline.shapes.tiny_flux import build_tiny_flux

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from diffsynth.pipelines.flux_image import model_fn_flux_image
from diffsynth.utils.state_dict_converters.flux_dit import FluxDiTStateDictConverterFromDiffusers
from reference_flux import TinyFluxDiT, reference_pipeline

T5_LENGTH = 512
GUIDANCE = 3.5
PROMPT = "a photo of a city street in the day with people, trees, a car and a house, detailed, high quality"
ENTITY_PROMPTS = [
    "a red car on the street", "an old woman wearing a blue dress", "a large green tree", "a small black dog",
    "a white house with a red door", "a man sitting on a chair", "a yellow bird in the sky", "a little girl with a hat",
]
MEDIUM = {"num_layers": 1, "num_single_layers": 2, "attention_head_dim": 128, "num_attention_heads": 8,
          "axes_dims_rope": (16, 56, 56), "joint_attention_dim": 32, "pooled_projection_dim": 32}


@dataclass(frozen=True)
class Variant:
    """One way of running a transformer pass, and what it computes."""

    name: str
    k: int
    run: Callable[[], object]
    tokens: int  # sequence length N
    pairs: int  # query/key pairs it must compute at least (the allowed ones)
    mask_bytes: int = 0  # the mask in the form the variant runs, built once per layout
    reference: bool = False


# ---------------------------------------------------------------- models


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def full_size_components(tiny: FluxPipeline, device: str, dtype: torch.dtype) -> dict[str, object]:
    """FLUX.1-dev's transformer, T5-XXL, CLIP-L and VAE with random weights (the tiny model's tokenizers)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device(device), default_dtype(dtype):
        transformer = FluxTransformer2DModel(guidance_embeds=True)  # the defaults are FLUX.1-dev's sizes
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                                            hidden_act="quick_gelu", eos_token_id=tiny.tokenizer.eos_token_id))
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                            use_post_quant_conv=False)
    return {**tiny.components, "transformer": transformer, "text_encoder_2": t5, "text_encoder": clip, "vae": vae}


def build_pipeline(config: str, folder: Path, device: str, dtype: torch.dtype) -> EligenPipeline:
    """The config's components in an EligenPipeline (the tiny model's tokenizers and scheduler throughout)."""
    tiny = FluxPipeline.from_pretrained(build_tiny_flux(folder / "tiny", max_sequence_length=T5_LENGTH))
    if config == "full":
        return EligenPipeline(FluxFamily(FluxPipeline(**full_size_components(tiny, device, dtype))), "benchmark")
    if config == "medium":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            tiny = FluxPipeline(**{**tiny.components, "transformer": FluxTransformer2DModel(
                guidance_embeds=True, **MEDIUM)})
    return EligenPipeline(FluxFamily(tiny.to(device, dtype)), "benchmark")


def reference_dit(transformer: FluxTransformer2DModel) -> TinyFluxDiT:
    """The reference DiT holding `transformer`'s weights, converted as tests/reference_flux.py converts them, but
    built on the meta device and given the converted tensors in place (a full-size model needs no host copy)."""
    config = transformer.config
    dim = config.num_attention_heads * config.attention_head_dim
    with torch.device("meta"):
        dit = TinyFluxDiT(dim=dim, heads=config.num_attention_heads, num_blocks=config.num_layers,
                          num_single_blocks=config.num_single_layers, axes_dim=list(config.axes_dims_rope),
                          context_dim=config.joint_attention_dim, pooled_dim=config.pooled_projection_dim,
                          input_dim=config.in_channels, guidance=config.guidance_embeds)
    source = transformer.state_dict()
    state = FluxDiTStateDictConverterFromDiffusers(source)
    for suffix in ("weight", "bias"):  # diffusers' final norm is (scale, shift), the reference's (shift, scale)
        rows = source[f"norm_out.linear.{suffix}"]
        state[f"final_norm_out.linear.{suffix}"] = torch.cat([rows[dim:], rows[:dim]])
    dit.load_state_dict(state, strict=True, assign=True)
    return dit.eval()


# ---------------------------------------------------------------- layouts and variants


def layout(side: int, k: int, entity_tokens: str = "max", steps: int = 4) -> Layout:
    """A square canvas with k overlapping boxes (16% of the image each)."""
    entities = [{"prompt": ENTITY_PROMPTS[i % len(ENTITY_PROMPTS)],
                 "box": [round(0.13 * i % 0.6, 2), round(0.29 * i % 0.6, 2),
                         round(0.13 * i % 0.6 + 0.4, 2), round(0.29 * i % 0.6 + 0.4, 2)]} for i in range(k)]
    return parse_layout({"size": [side, side], "prompt": PROMPT, "negative_prompt": "low quality", "steps": steps,
                         "cfg": 3.0, "guidance": GUIDANCE, "units": "fraction", "max_sequence_length": T5_LENGTH,
                         "entity_tokens": entity_tokens, "entities": entities, "loras": [], "seed": 0})


def variants(pipe: EligenPipeline, dit: TinyFluxDiT, side: int, ks: list[int], attentions: list[str]) -> list[Variant]:
    """Plain FLUX, ours for every k, form and token budget, and the reference for every k, at one size."""
    transformer, dtype, device = pipe.transformer, pipe.dtype, pipe.device
    latent = side // pipe.scale_factor
    noise = get_noise(0, transformer.config.in_channels // 4, latent, latent, dtype).to(device)
    x, ids, n_image = pack(noise), image_ids(latent, latent, device, dtype), (latent // 2) ** 2
    t, g = torch.tensor(500.0, device=device), torch.full((1,), GUIDANCE, device=device)

    def ours(cond: Conditioning) -> Callable[[], object]:
        return lambda: predict(transformer, x, t, cond, ids, g)

    plain, _ = pipe.conditionings(layout(side, 0), np.zeros((0, n_image), dtype=bool))
    n_plain = plain.prompt_embeds.shape[1] + n_image
    found = [Variant("plain FLUX", 0, ours(plain), n_plain, n_plain**2)]
    for k in ks:
        regions = pipe.token_regions(layout(side, k), Path("."))
        for tokens in ("max", "auto"):
            cond, _ = pipe.conditionings(layout(side, k, tokens), regions)
            n = cond.prompt_embeds.shape[1] + n_image
            pairs = int((cond.attention_mask == 0).sum())
            for attention in attentions:
                form = attention_form(cond.attention_mask, attention)
                found.append(Variant(f"ours k={k} {form_name(attention, n, device)} {tokens}", k,
                                     ours(replace(cond, attention_mask=form)), n, pairs, held_bytes(form)))
            if tokens == "max":
                found.append(Variant(f"reference k={k}", k, reference_step(dit, noise, t, cond, regions, latent),
                                     n, n**2, reference=True))
    return found


def form_name(attention: str, tokens: int, device: torch.device) -> str:
    """`auto(split)` for `auto` (what it chose), else the form's own name."""
    return f"auto({chosen_form('auto', tokens, device)})" if attention == "auto" else attention


def held_bytes(form: object) -> int:
    """Bytes of the tensors a mask form holds (a BlockMask's `mask_mod` holds the (B, N, N) bool mask)."""
    if isinstance(form, torch.Tensor):
        return form.numel() * form.element_size()
    if isinstance(form, SplitMask):
        return sum(held_bytes(i) for e in form.elements for piece in e.pieces for i in piece[:2])
    if isinstance(form, BlockMask):
        allowed = form.mask_mod.__closure__[0].cell_contents
        return held_bytes(allowed) + sum(held_bytes(t) for t in form.as_tuple() if isinstance(t, torch.Tensor))
    return 0


def reference_step(dit: TinyFluxDiT, noise: torch.Tensor, t: torch.Tensor, cond: Conditioning, regions: np.ndarray,
                   latent: int) -> Callable[[], object]:
    """One `model_fn_flux_image` pass with the reference's EliGen inputs for our `max` conditioning."""
    k, dtype, device = len(regions), noise.dtype, noise.device
    length = cond.prompt_embeds.shape[1] // (k + 1)
    entity_emb = cond.prompt_embeds[:, : k * length].unflatten(1, (k, length))
    grid = torch.from_numpy(regions).to(device).view(1, k, 1, latent // 2, 1, latent // 2, 1)
    masks = grid.expand(1, k, 1, latent // 2, 2, latent // 2, 2).reshape(1, k, 1, latent, latent).to(dtype)
    inputs = {"prompt_emb": cond.prompt_embeds[:, k * length:], "pooled_prompt_emb": cond.pooled,
              "guidance": torch.tensor([GUIDANCE], dtype=dtype, device=device),
              "text_ids": torch.zeros(1, length, 3, dtype=dtype, device=device),
              "image_ids": dit.prepare_image_ids(noise), "entity_prompt_emb": entity_emb, "entity_masks": masks}
    return lambda: model_fn_flux_image(dit=dit, latents=noise, timestep=t[None], **inputs)


# ---------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        fn()
    synchronize(device)
    return time.perf_counter() - start


def _proc_status(key: str) -> int:
    """A /proc/self/status value in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) * 1024


def release_freed_memory() -> None:
    """Have glibc return freed memory to the system (and from now on large blocks at once: a fixed mmap threshold
    of 64 KiB), so that the resident set follows the tensors alive (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes of peak memory above the memory in use before one call (None where it cannot be measured)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            fn()
        return torch.cuda.max_memory_allocated(device) - before
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        before = _proc_status("VmRSS")
    except OSError:
        return None
    with torch.inference_mode():
        fn()
    return _proc_status("VmHWM") - before


def timings(found: list[Variant], repeats: int, device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of each variant (interleaved runs in alternating order) and the seconds of its first call,
    the warm-up (where FlexAttention compiles)."""
    first = {variant.name: timed(variant.run, device) for variant in found}
    times: dict[str, list[float]] = {v.name: [] for v in found}
    for r in range(repeats):
        for variant in found if r % 2 == 0 else found[::-1]:
            times[variant.name].append(timed(variant.run, device))
    return {name: statistics.median(values) for name, values in times.items()}, first


def macs(config: dict, tokens: int, pairs: int) -> float:
    """Multiply-adds of one pass: linear layers (12 d^2 per token per block) and attention (2 d per pair)."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    return (config["num_layers"] + config["num_single_layers"]) * (12 * dim**2 * tokens + 2 * dim * pairs)


def step_table(found: list[Variant], times: dict[str, float], peaks: dict[str, int | None], config: dict
               ) -> list[str]:
    plain = found[0]
    references = {v.k: v for v in found if v.reference}
    rows = ["| variant | tokens | ms / step | vs plain | vs reference | peak MiB | mask MiB | min FLOPs vs plain | "
            "min FLOPs vs reference |", "|---|---|---|---|---|---|---|---|---|"]
    for v in found:
        seconds, peak = times[v.name], peaks[v.name]
        reference = references.get(v.k)
        vs_reference = f"{seconds / times[reference.name]:.2f}" if reference and not v.reference else ""
        flops_reference = (f"{macs(config, v.tokens, v.pairs) / macs(config, reference.tokens, reference.pairs):.2f}"
                           if reference and not v.reference else "")
        rows.append(f"| {v.name} | {v.tokens} | {seconds * 1000:.1f} | {seconds / times[plain.name]:.2f} | "
                    f"{vs_reference} | {'' if peak is None else f'{peak / 2**20:.0f}'} | {v.mask_bytes / 2**20:.0f} | "
                    f"{macs(config, v.tokens, v.pairs) / macs(config, plain.tokens, plain.pairs):.2f} | "
                    f"{flops_reference} |")
    return rows


class OurDecoder(torch.nn.Module):
    """Stands in for the reference's VAE decoder: our VAE (the same weights and work as our decode)."""

    def __init__(self, pipe: EligenPipeline) -> None:
        super().__init__()
        self.vae = pipe.family.pipe.vae

    def forward(self, latents: torch.Tensor, **kwargs: object) -> torch.Tensor:
        config = self.vae.config
        return self.vae.decode(latents / config.scaling_factor + config.shift_factor, return_dict=False)[0]


def reference_generation(pipe: EligenPipeline, dit: TinyFluxDiT, spec: Layout) -> Callable[[], object]:
    """The reference's whole `FluxImagePipeline.__call__` for a layout (its EliGen unit, mask, scheduler and loop),
    with our text encoders and VAE in its units (the same embeddings and decoder work on both sides)."""
    reference = reference_pipeline(dit, pipe.prompt_encoder(T5_LENGTH), pipe.device, pipe.dtype)
    reference.vae_decoder = OurDecoder(pipe)
    masks = [Image.fromarray(m).convert("RGB") for m in entity_masks(spec, Path("."))]
    return lambda: reference(
        prompt=spec.prompt, negative_prompt=spec.negative_prompt, cfg_scale=spec.cfg, embedded_guidance=spec.guidance,
        t5_sequence_length=T5_LENGTH, height=spec.height, width=spec.width, seed=0, num_inference_steps=spec.steps,
        eligen_entity_prompts=[e.prompt for e in spec.entities], eligen_entity_masks=masks,
        progress_bar_cmd=lambda steps: steps)


def generation_table(pipe: EligenPipeline, dit: TinyFluxDiT, side: int, k: int, attentions: list[str], steps: int,
                     repeats: int) -> list[str]:
    """Median seconds of prepare (text encoding, regions, mask), sampling and decoding, per setting; the
    reference's whole pipeline as one total."""
    settings = [("plain FLUX", 0, "max", "dense", False)]
    settings += [(f"k={k} {a} {tokens}", k, tokens, a, False) for tokens in ("max", "auto") for a in attentions]
    settings += [(f"k={k} {attentions[-1]} auto, batched CFG", k, "auto", attentions[-1], True)]
    rows = ["| setting | prepare s | sampling s | decode s | total s |", "|---|---|---|---|---|"]
    for name, entities, tokens, attention, batch_cfg in settings:
        spec = layout(side, entities, tokens, steps)
        phases: list[list[float]] = [[], [], []]
        for _ in range(repeats):
            started = time.perf_counter()
            positive, negative = pipe.prepare(spec)
            prepared = time.perf_counter()
            latents = pipe.sample(spec, positive, negative, 0, attention=attention, batch_cfg=batch_cfg)
            synchronize(pipe.device)
            sampled = time.perf_counter()
            pipe.decode(latents, spec)
            for phase, seconds in zip(phases, (prepared - started, sampled - prepared, time.perf_counter() - sampled),
                                      strict=True):
                phase.append(seconds)
        medians = [statistics.median(p) for p in phases]
        rows.append(f"| {name} | {medians[0]:.2f} | {medians[1]:.2f} | {medians[2]:.2f} | {sum(medians):.2f} |")
    reference = reference_generation(pipe, dit, layout(side, k, "max", steps))
    total = statistics.median(timed(reference, pipe.device) for _ in range(repeats))
    rows.append(f"| reference k={k} (its whole pipeline; our text encoders and VAE) | | | | {total:.2f} |")
    return rows


def rotary_line(pipe: EligenPipeline, side: int, k: int, repeats: int) -> str:
    """What recomputing the rotary tables costs in each forward (diffusers takes ids, not tables)."""
    transformer, device, dtype = pipe.transformer, pipe.device, pipe.dtype
    latent = side // pipe.scale_factor
    ids = torch.cat([torch.zeros((k + 1) * T5_LENGTH, 3, device=device, dtype=dtype),
                     image_ids(latent, latent, device, dtype)])
    seconds = statistics.median(timed(lambda: transformer.pos_embed(ids), device) for _ in range(repeats))
    return f"rotary tables for {len(ids)} tokens (recomputed inside every forward): {seconds * 1000:.1f} ms"


def first_call_lines(found: list[Variant], times: dict[str, float], first: dict[str, float]) -> list[str]:
    """The first call of each form against its median: the one-off cost (FlexAttention compiles in its first)."""
    return [f"first call of {v.name}: {first[v.name]:.2f} s ({first[v.name] - times[v.name]:+.2f} s over its median)"
            for v in found if v.name.startswith("ours")]


def random_kohya_lora(transformer: FluxTransformer2DModel, rank: int, folder: Path) -> Path:
    """A kohya-style LoRA file of `rank` on every block linear of `transformer`'s shapes, random factors."""
    from safetensors.torch import save_file

    from eligen.pipeline.train.lora import block_linears, kohya_state_dict

    generator = torch.Generator().manual_seed(0)
    peft: dict[str, torch.Tensor] = {}
    for name in block_linears(transformer):
        linear = transformer.get_submodule(name)
        peft[f"{name}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=generator) / linear.in_features
        peft[f"{name}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=generator) * 0.01
    path = folder / "lora_kohya.safetensors"
    tensors = {k: v.to(torch.bfloat16).contiguous() if not k.endswith(".alpha") else v
               for k, v in kohya_state_dict(peft, float(rank), transformer.config).items()}
    save_file(tensors, str(path))
    return path


def extra_table(pipe: EligenPipeline, side: int, k: int, repeats: int, folder: Path) -> list[str]:
    """Per-step time of the default form (`auto`, the reference's tokens) plain, with a kohya LoRA applied (hooks),
    and on an int8 weight-only copy of the transformer; then a whole generation with `--offload model` (CUDA)."""
    from eligen.pipeline.lora import apply_loras, remove_loras

    device, dtype, transformer = pipe.device, pipe.dtype, pipe.transformer
    spec = layout(side, k)
    positive, _ = pipe.conditionings(spec, pipe.token_regions(spec, Path(".")))
    latent = side // pipe.scale_factor
    x = pack(get_noise(0, pipe.family.latent_channels, latent, latent, dtype)).to(device)
    t, g = torch.tensor(500.0, device=device), torch.full((1,), GUIDANCE, device=device)
    cond = replace(positive, attention_mask=attention_form(positive.attention_mask, "auto"))
    ids = image_ids(latent, latent, device, dtype)

    def step(model: torch.nn.Module) -> float:
        timed(lambda: predict(model, x, t, cond, ids, g), device)
        return statistics.median(timed(lambda: predict(model, x, t, cond, ids, g), device) for _ in range(repeats))

    rows = ["| setting | ms / step | vs without |", "|---|---|---|"]
    base = step(transformer)
    rows.append(f"| k={k} auto max | {base * 1000:.1f} | 1.00 |")
    started = time.perf_counter()
    deltas = pipe.family.load_lora(random_kohya_lora(transformer, 16, folder))
    apply_loras(transformer, [(deltas, 1.0)])
    loaded = time.perf_counter() - started
    with_lora = step(transformer)
    remove_loras(transformer)
    rows.append(f"| + kohya LoRA rank 16 ({len(deltas)} linears, loaded and applied in {loaded:.1f} s) | "
                f"{with_lora * 1000:.1f} | {with_lora / base:.2f} |")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        rows.append("| int8 weight-only transformer | torchao is not installed | |")
    else:
        import copy

        quantized = copy.deepcopy(transformer)
        quantize_(quantized, Int8WeightOnlyConfig())
        int8 = step(quantized)
        del quantized
        rows.append(f"| int8 weight-only transformer (torchao) | {int8 * 1000:.1f} | {int8 / base:.2f} |")
    if device.type != "cuda":
        rows.append("| --offload model | needs a CUDA GPU (not measured) | |")
        return rows
    pipe.family.pipe.enable_model_cpu_offload(device=device)
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    pipe.decode(pipe.sample(spec, *pipe.prepare(spec), 0), spec)
    synchronize(device)
    rows.append(f"| --offload model: whole generation, {spec.steps} steps ({time.perf_counter() - started:.1f} s, "
                f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB) | | |")
    return rows


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    return f"{names[0] if names else platform.processor()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["tiny", "medium", "full"], default="tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--entities", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--attention", nargs="+", choices=["auto", "dense", "flex", "split"],
                        default=["auto", "dense", "split"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                        help="[default: fp32 for tiny, bf16 for medium and full]")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of the whole-generation table")
    parser.add_argument("--no-generation", action="store_true", help="skip the whole-generation table")
    parser.add_argument("--extras", action="store_true",
                        help="first calls, a LoRA, an int8 transformer and --offload model (CUDA), largest size and k")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("fp32" if args.config == "tiny" else "bf16")]
    device = torch.device("cuda" if args.config == "full" else "cpu")
    if args.config == "full" and not torch.cuda.is_available():
        raise SystemExit("--config full needs a CUDA GPU (FLUX.1-dev's size, about 45 GB)")
    with tempfile.TemporaryDirectory() as folder:
        pipe = build_pipeline(args.config, Path(folder), str(device), dtype)
        run(pipe, args, device, dtype, Path(folder))


def run(pipe: EligenPipeline, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, folder: Path
        ) -> None:
    """Time every size first, then measure peak memory (which changes how the allocator works: see
    `release_freed_memory`), then print."""
    config = dict(pipe.transformer.config)
    dit = reference_dit(pipe.transformer)
    measured = []
    for side in args.sizes:
        found = variants(pipe, dit, side, args.entities, args.attention)
        times, first = timings(found, args.repeats, device)
        rotary = rotary_line(pipe, side, max(args.entities), args.repeats)
        generation = [] if args.no_generation else generation_table(
            pipe, dit, side, max(args.entities), args.attention, args.steps, max(1, args.repeats // 2))
        measured.append((side, found, times, first, rotary, generation))
    print(f"{date.today()}, {machine(device)}, torch {torch.__version__}, diffusers {version('diffusers')}, "
          f"diffsynth {version('diffsynth')}, {dtype}, config {args.config} ({config['num_layers']} + "
          f"{config['num_single_layers']} blocks, width {config['num_attention_heads'] * config['attention_head_dim']}"
          f"), T5 length {T5_LENGTH}, {args.repeats} interleaved runs per variant (medians)\n"
          f"command: {' '.join(sys.argv)}")
    for side, found, times, first, rotary, generation in measured:
        peaks = {v.name: peak_memory(v.run, device) for v in found}
        print(f"\n### {side}x{side}: one transformer pass\n")
        print("\n".join(step_table(found, times, peaks, config)))
        print(f"\n{rotary}")
        if args.extras:
            print("\n" + "\n".join(first_call_lines(found, times, first)))
        if generation:
            print(f"\n### {side}x{side}: whole generation, {args.steps} steps, true CFG, k = {max(args.entities)}\n")
            print("\n".join(generation))
    if args.extras:
        side, k = max(args.sizes), max(args.entities)
        print(f"\n### {side}x{side}, k = {k}: LoRA, quantised transformer, offload\n")
        print("\n".join(extra_table(pipe, side, k, args.repeats, folder)))

if __name__ == "__main__":
    main()
