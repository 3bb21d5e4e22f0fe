"""Parity with the reference (`diffsynth` 2.1.12) on a tiny FLUX model: LoRAs, and whole generations.

a. LoRAs. A random LoRA is saved as a safetensors file in each key style: kohya/BFL
   (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`), the reference's native style
   (`blocks.0.attn.a_to_qkv.lora_A.weight`, and with peft's `.default`: `...lora_A.default.weight`, which the
   reference cannot read, so it merges the same LoRA without `.default`) and diffusers/peft
   (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`). We read it with `load_lora` and fuse it with
   `apply_loras`; the reference reads and merges it with its own `FluxImagePipeline.load_lora`
   (`FluxLoRALoader`). Our fused weights, renamed by the reference's converter (`TinyFluxDiT.from_diffusers`),
   must equal the reference's merged weights, and the EliGen forward (k = 2 entities) must agree, for our
   fused and our hooked (unfused) LoRA.
b. Generation. A layout file with `schedule: diffsynth`, cfg 3, a negative prompt, three entities (box, polygon,
   mask PNG) and 4 steps goes through `EligenPipeline.prepare` + `sample`; the reference runs its own loop: its
   `FlowMatchScheduler("FLUX.1")` (`set_timesteps`, `step`), its model function `model_fn_flux_image`, true CFG,
   its EliGen unit (with `eligen_enable_on_negative` for `regions_on_negative`), from the same noise and the
   same T5/CLIP embeddings (our encoders), embedded guidance 3.5. With and without a LoRA. That hand-built loop
   is itself checked against the reference's whole `FluxImagePipeline.__call__`.

What the reference does with a LoRA file (`FluxImagePipeline.load_lora`: `FluxLoRALoader.convert_state_dict`, then
`GeneralLoRALoader.fuse_lora_to_base_model`, which calls the FLUX `convert_state_dict` again, never the general one):
* Style: a key containing `lora_unet_` makes the file kohya ("civitai"), a key starting with `transformer.`
  makes it diffusers; otherwise keys are taken as its own module names. It reads all three styles, but:
  - of a kohya or diffusers file only the double- and single-block layers: other keys (`lora_unet_img_in`,
    `lora_unet_final_layer_linear`, `transformer.proj_out`, ...) match no module and are dropped silently;
  - a native file merges only `<module>.lora_A.weight` / `.lora_B.weight` keys; with `.default` (peft's adapter
    name, `blocks.0.attn.a_to_qkv.lora_A.default.weight`) it merges nothing, silently ("0 tensors are fused");
    layers outside the blocks (embedders, final layer) do merge.
* Alpha of a kohya or diffusers file: one global factor `sqrt(alpha / rank)`, from the first `.alpha` key in the loaded
  dict (over that layer's rank), multiplied in place into every loaded tensor (A and B). Per-layer alphas or ranks
  are not honoured; our loader scales each layer by its own alpha / rank. Here each such file has one rank and
  one alpha, alpha / rank a power of 4 (so the square root is exact), and both sides agree to the bit.
* Alpha of a native file: ignored (scale 1); the general loader's per-layer `alpha / rank` is never reached. Our
  loader honours it, so native files here have alpha = rank where they have an alpha.
* Diffusers q/k/v (and the single block's proj_mlp) are stacked into one LoRA on the fused reference layer:
  A concatenated (rank 3r or 4r), B block-diagonal.
* Merge: `W += scale * B @ A` (`scale` is `load_lora`'s `alpha` argument) in the pipeline's dtype.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from diffsynth.diffusion import FlowMatchScheduler
from diffsynth.pipelines.flux_image import (
    FluxImagePipeline,
    model_fn_flux_image,
)
from diffusers import FluxPipeline, FluxTransformer2DModel
from PIL import Image, ImageDraw
from reference_flux import EntityUnit, TinyFluxDiT, diffusers_conditioning_order, reference_pipeline

from eligen.pipeline import attention_backends
from eligen.pipeline.conditioning import Conditioning
from eligen.pipeline.families.flux.encode import PromptEncoder
from eligen.pipeline.families.flux.family import FluxFamily
from eligen.pipeline.families.flux.lora import detect_style, load_lora
from eligen.pipeline.families.flux.transformer import image_ids, predict
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import load_layout, parse_layout
from eligen.pipeline.lora import apply_loras
from eligen.pipeline.sampler import get_noise, pack, unpack

WIDTH, HEIGHT = 192, 128  # not square: a swapped height and width cannot pass
T5_LENGTH = 16
GUIDANCE = 3.5
CFG = 3.0
STEPS = 4
SEED = 7
PROMPT = "a photo of a table with a cup, a book and a hat"
NEGATIVE = "dark, low quality"
ENTITY_PROMPTS = ["a red cup", "an old book", "a blue hat"]

# Entity regions in pixels. Their edges keep 2 px or more away from the pixels that the resize to the latent grid
# samples ((8i + 4, 8j + 4)), so that any pixel-level rasterisation convention (ours, PIL's) gives the same tokens:
# straight edges at x, y = 6, 7, 0, 1 or 2 mod 8, and one diagonal x - y = 92 (4 mod 8: 2.8 px from every sample).
BOX = (17, 10, 106, 97)  # [x1, y1, x2, y2): pixels 17..105 x 10..96
POLYGON = [(98, 6), (178, 86), (178, 121), (129, 121), (129, 58), (78, 58), (78, 6)]  # not convex

# Reference block layer -> kohya/BFL stem, written out independently of pipeline/lora.py, so that the test
# does not borrow the mapping it checks.
KOHYA_STEMS = {
    "blocks": {
        "norm1_a.linear": "img_mod_lin", "norm1_b.linear": "txt_mod_lin",
        "attn.a_to_qkv": "img_attn_qkv", "attn.b_to_qkv": "txt_attn_qkv",
        "attn.a_to_out": "img_attn_proj", "attn.b_to_out": "txt_attn_proj",
        "ff_a.0": "img_mlp_0", "ff_a.2": "img_mlp_2", "ff_b.0": "txt_mlp_0", "ff_b.2": "txt_mlp_2",
    },
    "single_blocks": {"norm.linear": "modulation_lin", "to_qkv_mlp": "linear1", "proj_out": "linear2"},
}
REFERENCE_BLOCKS = ("blocks.", "single_blocks.")
DIFFUSERS_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- models and text


@pytest.fixture(scope="module")
def transformer(tiny_pipe: EligenPipeline) -> FluxTransformer2DModel:
    """The tiny model's architecture (with a guidance embedding) with every parameter perturbed, so that no
    weight is a constant that would hide a swapped or misplaced tensor."""
    assert tiny_pipe.transformer.config.guidance_embeds
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(23)
        model = FluxTransformer2DModel.from_config(tiny_pipe.transformer.config)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture(scope="module")
def encode(tiny_pipe: EligenPipeline) -> PromptEncoder:
    return tiny_pipe.prompt_encoder(T5_LENGTH)


def reference_merge(pipe: FluxImagePipeline, path: Path, scale: float) -> None:
    """Merge a LoRA file into the reference DiT with the reference's own loader."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Alpha detected in the LoRA file")
        pipe.load_lora(pipe.dit, str(path), alpha=scale)


# ---------------------------------------------------------------- entity regions


def blob_mask() -> Image.Image:
    """A grey-level mask whose three channels differ (the rule thresholds their mean)."""
    rng = np.random.default_rng(5)
    channels = [
        np.asarray(Image.fromarray((rng.random((4, 6)) * 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC))
        for _ in range(3)
    ]
    return Image.fromarray(np.stack(channels, axis=2))


def entities(folder: Path, k: int) -> tuple[list[dict], list[Image.Image]]:
    """The first k of (box, polygon, mask PNG): layout entries for us, pixel masks for the reference (drawn
    with PIL, as the reference's examples draw theirs)."""
    box = Image.new("RGB", (WIDTH, HEIGHT))
    ImageDraw.Draw(box).rectangle((BOX[0], BOX[1], BOX[2] - 1, BOX[3] - 1), fill="white")  # PIL: inclusive
    polygon = Image.new("RGB", (WIDTH, HEIGHT))
    ImageDraw.Draw(polygon).polygon(POLYGON, fill="white")
    blob_mask().save(folder / "blob.png")
    ours = [
        {"prompt": ENTITY_PROMPTS[0], "box": list(BOX)},
        {"prompt": ENTITY_PROMPTS[1], "polygon": [list(p) for p in POLYGON]},
        {"prompt": ENTITY_PROMPTS[2], "mask": "blob.png"},
    ]
    return ours[:k], [box, polygon, Image.open(folder / "blob.png").convert("RGB")][:k]


def reference_attention_mask(dit: TinyFluxDiT, inputs: dict) -> torch.Tensor:
    """The attention mask the reference's `process_entity_masks` builds for these entity inputs."""
    n_image = (HEIGHT // 16) * (WIDTH // 16)
    prompt_emb = inputs["prompt_emb"]
    latents = torch.zeros(1, 16, HEIGHT // 8, WIDTH // 8)
    with torch.no_grad():
        _, _, mask = dit.process_entity_masks(
            torch.zeros(1, n_image, dit.x_embedder.out_features), prompt_emb, inputs["entity_prompt_emb"],
            inputs["entity_masks"], torch.zeros(1, prompt_emb.shape[1], 3), dit.prepare_image_ids(latents), 16,
        )
    return mask


# ---------------------------------------------------------------- a. LoRAs in three key styles


def linears(module: torch.nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefixes)}


def lora_factors(generator: torch.Generator, linear: torch.nn.Linear, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) = (down, up), random: A (rank, in), B (out, rank)."""
    down = 0.2 * torch.randn(rank, linear.in_features, generator=generator)
    up = 0.2 * torch.randn(linear.out_features, rank, generator=generator)
    return down, up


def kohya_lora(dit: TinyFluxDiT, transformer: FluxTransformer2DModel) -> dict[str, torch.Tensor]:
    """Every block layer, BFL names on the fused layers; rank 4, alpha 1 (scale 1/4) everywhere."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for name, linear in linears(dit, REFERENCE_BLOCKS).items():
        kind, index, layer = name.split(".", 2)
        stem = f"lora_unet_{'double' if kind == 'blocks' else 'single'}_blocks_{index}_{KOHYA_STEMS[kind][layer]}"
        down, up = lora_factors(generator, linear, 4)
        state |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(1.0)}
    return state


def native_lora(dit: TinyFluxDiT, transformer: FluxTransformer2DModel) -> dict[str, torch.Tensor]:
    """Every Linear of the reference DiT, the layers outside the blocks included, in the reference's own names;
    ranks 1 to 4, every other layer with an alpha (= rank: the reference ignores native alphas)."""
    generator = torch.Generator().manual_seed(2)
    state = {}
    for i, (name, linear) in enumerate(linears(dit, ("",)).items()):
        rank = 1 + i % 4
        down, up = lora_factors(generator, linear, rank)
        state |= {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up}
        if i % 2:
            state[f"{name}.alpha"] = torch.tensor(float(rank))
    return state


def peft_lora(dit: TinyFluxDiT, transformer: FluxTransformer2DModel) -> dict[str, torch.Tensor]:
    """Every Linear of diffusers' blocks (q, k, v, proj_mlp each with its own A); rank 2, alpha 8 (scale 4)."""
    generator = torch.Generator().manual_seed(3)
    state = {}
    for name, linear in linears(transformer, DIFFUSERS_BLOCKS).items():
        down, up = lora_factors(generator, linear, 2)
        key = f"transformer.{name}"
        state |= {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up, f"{key}.alpha": torch.tensor(8.0)}
    return state


# variant -> (builder, key style, the reference layers it targets, user scale)
LORAS = {
    "kohya": (kohya_lora, "kohya", REFERENCE_BLOCKS, 1.0),
    "native": (native_lora, "native", ("",), 0.75),
    "native_default": (native_lora, "native", ("",), 0.75),  # with peft's `.default`, read by us only
    "peft": (peft_lora, "peft", REFERENCE_BLOCKS, 1.5),
}


def write_lora(variant: str, transformer: FluxTransformer2DModel, folder: Path) -> tuple[Path, Path, float]:
    """(the file we read, the file the reference reads, user scale): the same LoRA, and the same file except
    for `native_default`, whose keys carry `.default` for us and not for the reference (which cannot read it)."""
    build, style, _, scale = LORAS[variant]
    state = {k: v.contiguous() for k, v in build(TinyFluxDiT.from_diffusers(transformer), transformer).items()}
    theirs = folder / f"{variant}.reference.safetensors"
    safetensors.torch.save_file(state, str(theirs))
    ours = theirs
    if variant == "native_default":
        state = {re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k): v for k, v in state.items()}
        assert sum(".default." in k for k in state) == 2 * len(linears(TinyFluxDiT.from_diffusers(transformer), ("",)))
        ours = folder / f"{variant}.safetensors"
        safetensors.torch.save_file(state, str(ours))
    assert detect_style(state) == style
    return ours, theirs, scale


def forward_ours(model: FluxTransformer2DModel, latents: torch.Tensor, timestep: torch.Tensor,
                 cond: Conditioning) -> torch.Tensor:
    ids = image_ids(HEIGHT // 8, WIDTH // 8, latents.device, latents.dtype)
    with torch.inference_mode():
        v = predict(model, pack(latents), timestep, cond, ids, torch.full((1,), GUIDANCE))
    return unpack(v, HEIGHT // 8, WIDTH // 8)


def forward_reference(dit: TinyFluxDiT, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict,
                      pooled: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model_fn_flux_image(
            dit=dit, latents=latents, timestep=timestep.unsqueeze(0), prompt_emb=inputs["prompt_emb"],
            pooled_prompt_emb=pooled, guidance=torch.Tensor([GUIDANCE]),
            text_ids=torch.zeros(1, inputs["prompt_emb"].shape[1], 3), image_ids=dit.prepare_image_ids(latents),
            entity_prompt_emb=inputs["entity_prompt_emb"], entity_masks=inputs["entity_masks"],
        )


@pytest.mark.parametrize("variant", list(LORAS))
def test_lora_merge_matches_reference(variant, transformer, tiny_pipe, encode, tmp_path) -> None:
    path, reference_path, scale = write_lora(variant, transformer, tmp_path)
    base = TinyFluxDiT.from_diffusers(transformer)

    # ours: read, split to diffusers modules, fused in float32; then renamed by the reference's converter
    deltas = load_lora(path, transformer.config)
    fused = copy.deepcopy(transformer)
    apply_loras(fused, [(deltas, scale)], fuse=True)
    ours = TinyFluxDiT.from_diffusers(fused).state_dict()
    # the reference: its own loader and merge, of the same LoRA
    pipe = reference_pipeline(copy.deepcopy(base), encode)
    reference_merge(pipe, reference_path, scale)
    theirs = pipe.dit.state_dict()

    assert ours.keys() == theirs.keys()
    worst = max(max_diff(ours[name], theirs[name]) for name in theirs)
    assert worst <= 1e-6, f"merged weights differ by {worst}"
    # every targeted layer (and nothing else) changed, on both sides
    _, _, prefixes, _ = LORAS[variant]
    targets = {f"{name}.weight" for name in linears(base, prefixes)}
    before = base.state_dict()
    assert {n for n in theirs if not torch.equal(theirs[n], before[n])} == targets
    assert {n for n in ours if not torch.equal(ours[n], before[n])} == targets

    # the EliGen forward with k = 2 entities: our fused and our hooked LoRA against the reference's merge
    layout_entities, masks = entities(tmp_path, 2)
    layout = parse_layout({"size": [WIDTH, HEIGHT], "prompt": PROMPT, "max_sequence_length": T5_LENGTH,
                           "cfg": 1.0, "entities": layout_entities})
    positive, _ = tiny_pipe.conditionings(layout, tiny_pipe.token_regions(layout, tmp_path))
    inputs = {"prompt": PROMPT, "prompt_emb": encode(PROMPT)[0]}
    shared = {"eligen_entity_prompts": ENTITY_PROMPTS[:2], "eligen_entity_masks": masks, "width": WIDTH,
              "height": HEIGHT, "t5_sequence_length": T5_LENGTH, "cfg_scale": 1.0}
    EntityUnit(encode).process(pipe, shared, inputs, {})
    assert torch.equal(positive.attention_mask, reference_attention_mask(pipe.dit, inputs))

    latents = get_noise(5, 16, HEIGHT // 8, WIDTH // 8, torch.float32)
    scheduler = FlowMatchScheduler("FLUX.1")
    scheduler.set_timesteps(50)
    timestep = scheduler.timesteps[17]
    hooked = copy.deepcopy(transformer)
    apply_loras(hooked, [(deltas, scale)])
    reference = forward_reference(pipe.dit, latents, timestep, inputs, encode(PROMPT)[1])
    tolerance = 1e-5 * reference.abs().max().item()
    assert max_diff(forward_ours(fused, latents, timestep, positive), reference) <= tolerance
    assert max_diff(forward_ours(hooked, latents, timestep, positive), reference) <= tolerance
    with diffusers_conditioning_order(pipe.dit, GUIDANCE):  # the reference's conditioning sum in our order
        reference = forward_reference(pipe.dit, latents, timestep, inputs, encode(PROMPT)[1])
    if worst == 0.0:  # the same weights: the same forward, bit for bit (as without a LoRA)
        assert max_diff(forward_ours(fused, latents, timestep, positive), reference) == 0.0
    assert max_diff(forward_ours(fused, latents, timestep, positive), reference) <= tolerance
    # hooked: W x + s B (A x) against (W + s B A) x, rounding only
    assert max_diff(forward_ours(hooked, latents, timestep, positive), reference) <= tolerance
    # and the LoRA does act
    assert max_diff(forward_ours(transformer, latents, timestep, positive), reference) > 1e-2


# ---------------------------------------------------------------- b. a whole generation


def reference_loop(pipe: FluxImagePipeline, encode: PromptEncoder, masks: list[Image.Image],
                   on_negative: bool) -> torch.Tensor:
    """The reference's sampling loop: its scheduler, its model function, true CFG, its EliGen unit."""
    shared = {"eligen_entity_prompts": ENTITY_PROMPTS[: len(masks)], "eligen_entity_masks": masks,
              "eligen_enable_on_negative": on_negative, "width": WIDTH, "height": HEIGHT,
              "t5_sequence_length": T5_LENGTH, "cfg_scale": CFG}
    positive = {"prompt": PROMPT, "prompt_emb": encode(PROMPT)[0], "pooled_prompt_emb": encode(PROMPT)[1]}
    negative = {"negative_prompt": NEGATIVE, "prompt_emb": encode(NEGATIVE)[0],
                "pooled_prompt_emb": encode(NEGATIVE)[1]}
    EntityUnit(encode).process(pipe, shared, positive, negative)
    del positive["prompt"], negative["negative_prompt"]
    assert (negative.get("entity_masks") is not None) == on_negative

    latents = pipe.generate_noise((1, 16, HEIGHT // 8, WIDTH // 8), seed=SEED, rand_device="cpu")
    common = {"dit": pipe.dit, "guidance": torch.Tensor([GUIDANCE]), "image_ids": pipe.dit.prepare_image_ids(latents)}
    for branch in (positive, negative):
        branch["text_ids"] = torch.zeros(1, branch["prompt_emb"].shape[1], 3)
    scheduler = FlowMatchScheduler("FLUX.1")
    scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        for t in scheduler.timesteps:
            timestep = t.unsqueeze(0).to(torch.float32)
            v_pos = model_fn_flux_image(latents=latents, timestep=timestep, **common, **positive)
            v_neg = model_fn_flux_image(latents=latents, timestep=timestep, **common, **negative)
            latents = scheduler.step(v_neg + CFG * (v_pos - v_neg), t, latents)
    return latents


class LatentsCatcher(torch.nn.Module):
    """Stands in for the reference's VAE decoder: keeps the final latents, returns a blank image."""

    def forward(self, latents: torch.Tensor, **kwargs) -> torch.Tensor:
        self.latents = latents.clone()
        return torch.zeros(1, 3, 16, 16)


def reference_call(pipe: FluxImagePipeline, masks: list[Image.Image], on_negative: bool) -> torch.Tensor:
    """The final latents of the reference's whole `FluxImagePipeline.__call__` (decoding skipped)."""
    pipe.vae_decoder = catcher = LatentsCatcher()
    pipe(prompt=PROMPT, negative_prompt=NEGATIVE, cfg_scale=CFG, embedded_guidance=GUIDANCE,
         t5_sequence_length=T5_LENGTH, height=HEIGHT, width=WIDTH, seed=SEED, num_inference_steps=STEPS,
         eligen_entity_prompts=ENTITY_PROMPTS[: len(masks)], eligen_entity_masks=masks,
         eligen_enable_on_negative=on_negative, progress_bar_cmd=lambda steps: steps)
    pipe.vae_decoder = None
    return catcher.latents


@pytest.mark.parametrize("lora", [None, "hooked", "fused"])
@pytest.mark.parametrize("on_negative", [False, True], ids=["plain_negative", "regions_on_negative"])
def test_generation_matches_reference(lora, on_negative, transformer, tiny_pipe, encode, tmp_path) -> None:
    layout_entities, masks = entities(tmp_path, 3)
    data = {
        "model": tiny_pipe.model, "size": [WIDTH, HEIGHT], "seed": SEED, "steps": STEPS, "cfg": CFG,
        "guidance": GUIDANCE, "schedule": "diffsynth", "max_sequence_length": T5_LENGTH, "prompt": PROMPT,
        "negative_prompt": NEGATIVE, "regions_on_negative": on_negative, "entities": layout_entities, "loras": [],
    }
    pipe = reference_pipeline(TinyFluxDiT.from_diffusers(transformer), encode)
    if lora is not None:
        path, _, _ = write_lora("kohya", transformer, tmp_path)
        scale = 0.8
        data["loras"] = [{"path": path.name, "scale": scale}]
        reference_merge(pipe, path, scale)
    (tmp_path / "layout.yaml").write_text(yaml.safe_dump(data))
    layout = load_layout(tmp_path / "layout.yaml")

    # ours: the product path, on a copy of the pipeline holding the perturbed transformer
    flux = FluxPipeline(**{**tiny_pipe.family.pipe.components, "transformer": copy.deepcopy(transformer)})
    ours = EligenPipeline(FluxFamily(flux), tiny_pipe.model, fuse_loras=lora == "fused")
    positive, negative = ours.prepare(layout, tmp_path)
    assert negative is not None and (negative.attention_mask is not None) == on_negative
    final = unpack(ours.sample(layout, positive, negative, layout.seeds[0]), HEIGHT // 8, WIDTH // 8)

    # the same regions on both sides
    inputs = {"prompt_emb": encode(PROMPT)[0]}
    EntityUnit(encode).process(pipe, {"eligen_entity_prompts": ENTITY_PROMPTS, "eligen_entity_masks": masks,
                                      "width": WIDTH, "height": HEIGHT, "t5_sequence_length": T5_LENGTH,
                                      "cfg_scale": CFG}, inputs, {})
    assert torch.equal(positive.attention_mask, reference_attention_mask(pipe.dit, inputs))

    reference = reference_loop(pipe, encode, masks, on_negative)
    assert max_diff(final, reference) <= 1e-4
    with diffusers_conditioning_order(pipe.dit, GUIDANCE):  # the reference's conditioning sum in our order
        in_our_order = reference_loop(pipe, encode, masks, on_negative)
        assert torch.equal(reference_call(pipe, masks, on_negative), in_our_order)  # the loop is the reference's
    if lora == "hooked":  # W x + s B (A x) against (W + s B A) x: rounding only
        assert max_diff(final, in_our_order) <= 1e-5
    else:
        assert max_diff(final, in_our_order) == 0.0
    # the option does act: the other setting of it gives another result
    assert max_diff(reference_loop(pipe, encode, masks, not on_negative), reference) > 1e-3


@pytest.mark.parametrize("attention", ["split", "auto"])
def test_sparse_and_default_forms_match_reference(attention, transformer, tiny_pipe, encode, tmp_path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole generation in `split` and in the default `auto` (made to pick `split` at this small size, as it does
    from AUTO_SPLIT_MIN_TOKENS tokens on) against the reference, with the dense form's tolerance."""
    monkeypatch.setattr(attention_backends, "AUTO_SPLIT_MIN_TOKENS", 0)
    layout_entities, masks = entities(tmp_path, 3)
    data = {
        "model": tiny_pipe.model, "size": [WIDTH, HEIGHT], "seed": SEED, "steps": STEPS, "cfg": CFG,
        "guidance": GUIDANCE, "schedule": "diffsynth", "max_sequence_length": T5_LENGTH, "prompt": PROMPT,
        "negative_prompt": NEGATIVE, "entities": layout_entities, "loras": [], "attention": attention,
    }
    (tmp_path / "layout.yaml").write_text(yaml.safe_dump(data))
    layout = load_layout(tmp_path / "layout.yaml")
    assert layout.attention == attention
    flux = FluxPipeline(**{**tiny_pipe.family.pipe.components, "transformer": copy.deepcopy(transformer)})
    ours = EligenPipeline(FluxFamily(flux), tiny_pipe.model)
    positive, negative = ours.prepare(layout, tmp_path)
    form = attention_backends.attention_form(positive.attention_mask, attention)
    assert isinstance(form, attention_backends.SplitMask)
    final = unpack(ours.sample(layout, positive, negative, layout.seeds[0]), HEIGHT // 8, WIDTH // 8)
    dense = unpack(ours.sample(layout, positive, negative, layout.seeds[0], attention="dense"), HEIGHT // 8, WIDTH // 8)
    pipe = reference_pipeline(TinyFluxDiT.from_diffusers(transformer), encode)
    reference = reference_loop(pipe, encode, masks, False)
    assert max_diff(final, reference) <= 1e-4
    assert 0.0 < max_diff(final, dense) <= 1e-5  # another summation order than the dense form, the same result
