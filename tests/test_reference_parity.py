"""Parity with the authors' reference implementation (`diffsynth` 2.1.12 on PyPI) on a tiny FLUX model.

Our path (layout -> `EligenPipeline.token_regions` -> `conditionings` -> `sampler.predict` on a
diffusers `FluxTransformer2DModel`) is run against the reference's own code: `FluxDiT`'s blocks and
methods (`tests/reference_flux.py` builds them at tiny size), its EliGen unit (mask preprocessing,
entity inputs, `eligen_enable_on_negative`), `model_fn_flux_image` and `FlowMatchScheduler("FLUX.1")`.
Both sides get the same weights (converted by the reference's converter) and the same T5/CLIP
embeddings (the tiny model's encoders), in float32 on the CPU.

Expected differences, and why:
* with a guidance embedding, the reference sums its conditioning vector as (time + pooled) + guidance
  and diffusers as (time + guidance) + pooled: an ulp there, ~1e-6 relative at the output. With the
  reference's sum put in diffusers' order (`diffusers_conditioning_order`), or on a model without a
  guidance embedding, every forward matches bit for bit (max abs difference 0.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffsynth.diffusion import FlowMatchScheduler
from diffsynth.pipelines.flux_image import FluxImagePipeline, model_fn_flux_image
from diffusers import FluxTransformer2DModel
from PIL import Image, ImageDraw
from reference_flux import (
    EntityUnit,
    TinyFluxDiT,
    diffusers_conditioning_order,
    full_size_parameter_patterns,
    parameter_patterns,
)

from eligen.pipeline.conditioning import Conditioning
from eligen.pipeline.families.flux.encode import PromptEncoder
from eligen.pipeline.families.flux.transformer import image_ids, predict
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import Layout, parse_layout
from eligen.pipeline.regions import entity_masks, token_mask
from eligen.pipeline.sampler import diffsynth_schedule, get_noise, pack, unpack

WIDTH, HEIGHT = 192, 128  # not square: a swapped height and width cannot pass
T5_LENGTH = 16
GUIDANCE = 3.5
STEPS = 50
STEP = 17  # a mid-schedule timestep of the 50-step reference schedule
N_IMAGE = (WIDTH // 16) * (HEIGHT // 16)
PROMPT = "a photo of a table with a cup, a book and a hat"
NEGATIVE = "dark, low quality"
ENTITIES = ["a red cup", "an old book", "a blue hat", "a small coin"]


# ---------------------------------------------------------------- the two sides


def reference_pipeline(dit: TinyFluxDiT | None = None) -> FluxImagePipeline:
    pipe = FluxImagePipeline(device="cpu", torch_dtype=torch.float32)
    pipe.dit = dit
    return pipe


def reference_entity_inputs(
    pipe: FluxImagePipeline, encode: PromptEncoder, masks: list[Image.Image], on_negative: bool
) -> tuple[dict, dict]:
    """The reference EliGen unit's positive and negative model inputs, as its pipeline builds them."""
    shared = {
        "eligen_entity_prompts": ENTITIES[: len(masks)], "eligen_entity_masks": masks,
        "eligen_enable_on_negative": on_negative, "width": WIDTH, "height": HEIGHT,
        "t5_sequence_length": T5_LENGTH, "cfg_scale": 3.0,
    }
    positive = {"prompt": PROMPT, "prompt_emb": encode(PROMPT)[0]}
    negative = {"negative_prompt": NEGATIVE, "prompt_emb": encode(NEGATIVE)[0]}
    EntityUnit(encode).process(pipe, shared, positive, negative)
    return positive, negative


def reference_forward(dit: TinyFluxDiT, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict,
                      pooled: torch.Tensor) -> torch.Tensor:
    """One reference DiT pass, with the arguments its pipeline passes to `model_fn_flux_image`."""
    prompt_emb = inputs["prompt_emb"]
    with torch.no_grad():
        return model_fn_flux_image(
            dit=dit, latents=latents, timestep=timestep.unsqueeze(0).to(torch.float32), prompt_emb=prompt_emb,
            pooled_prompt_emb=pooled, guidance=torch.Tensor([GUIDANCE]).to(latents.dtype),
            text_ids=torch.zeros(1, prompt_emb.shape[1], 3), image_ids=dit.prepare_image_ids(latents),
            entity_prompt_emb=inputs.get("entity_prompt_emb"), entity_masks=inputs.get("entity_masks"),
        )


def reference_mask(dit: TinyFluxDiT, inputs: dict, latents: torch.Tensor) -> torch.Tensor:
    """The attention mask the reference's `process_entity_masks` builds for these entity inputs."""
    n_image = (latents.shape[2] // 2) * (latents.shape[3] // 2)
    prompt_emb = inputs["prompt_emb"]
    with torch.no_grad():
        _, _, mask = dit.process_entity_masks(
            torch.zeros(1, n_image, dit.x_embedder.out_features), prompt_emb, inputs["entity_prompt_emb"],
            inputs["entity_masks"], torch.zeros(1, prompt_emb.shape[1], 3), dit.prepare_image_ids(latents),
            latents.shape[1],
        )
    return mask


def our_forward(transformer: FluxTransformer2DModel, latents: torch.Tensor, timestep: torch.Tensor,
                cond: Conditioning) -> torch.Tensor:
    """One pass through our sampler's `predict`, arguments built as `EligenPipeline.sample` builds them."""
    height, width = latents.shape[-2:]
    guidance = torch.full((1,), GUIDANCE) if transformer.config.guidance_embeds else None
    ids = image_ids(height, width, latents.device, latents.dtype)
    with torch.inference_mode():
        v = predict(transformer, pack(latents), timestep, cond, ids, guidance)
    return unpack(v, height, width)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- fixtures


def random_transformer(config, guidance_embeds: bool) -> FluxTransformer2DModel:
    """The tiny model's architecture with every parameter perturbed, so that no weight (norm scales, biases)
    is a constant that would hide a swapped or misplaced tensor."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = FluxTransformer2DModel.from_config(config, guidance_embeds=guidance_embeds)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture(scope="module", params=[True, False], ids=["guidance_embeds", "no_guidance_embeds"])
def models(request, tiny_pipe: EligenPipeline) -> tuple[FluxTransformer2DModel, TinyFluxDiT]:
    """(diffusers transformer, reference DiT) with identical weights."""
    transformer = random_transformer(tiny_pipe.transformer.config, request.param)
    return transformer, TinyFluxDiT.from_diffusers(transformer)


@pytest.fixture(scope="module")
def encode(tiny_pipe: EligenPipeline) -> PromptEncoder:
    return tiny_pipe.prompt_encoder(T5_LENGTH)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return get_noise(5, 16, HEIGHT // 8, WIDTH // 8, torch.float32)


@pytest.fixture(scope="module")
def timestep() -> torch.Tensor:
    scheduler = FlowMatchScheduler("FLUX.1")
    scheduler.set_timesteps(STEPS)
    return scheduler.timesteps[STEP]


def entity_images() -> list[Image.Image]:
    """Four RGB masks at pixel size, as the reference takes them: a box, an ellipse overlapping it, an
    arbitrary grey-level blob whose three channels differ (the rule thresholds their mean), and a region of one
    token (a 6x6-px square around the centre of one 8x8 latent cell)."""
    box = Image.new("RGB", (WIDTH, HEIGHT))
    ImageDraw.Draw(box).rectangle((13, 19, 94, 101), fill="white")
    ellipse = Image.new("RGB", (WIDTH, HEIGHT))
    ImageDraw.Draw(ellipse).ellipse((70, 9, 181, 86), fill=(255, 255, 255))
    rng = np.random.default_rng(3)
    channels = [
        np.asarray(Image.fromarray((rng.random((5, 7)) * 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC))
        for _ in range(3)
    ]
    blob = Image.fromarray(np.stack(channels, axis=2))
    tiny = Image.new("RGB", (WIDTH, HEIGHT))
    ImageDraw.Draw(tiny).rectangle((161, 97, 166, 102), fill="white")  # holds the centre (164, 100) of one cell
    return [box, ellipse, blob, tiny]


def layout_with_masks(images: list[Image.Image], folder: Path, **fields) -> Layout:
    """A layout whose entities are the images, written as mask PNGs the way a user gives them."""
    entities = []
    for i, image in enumerate(images):
        image.save(folder / f"mask{i}.png")
        entities.append({"prompt": ENTITIES[i % len(ENTITIES)], "mask": f"mask{i}.png"})
    return parse_layout({
        "size": [WIDTH, HEIGHT], "prompt": PROMPT, "negative_prompt": NEGATIVE, "cfg": 3.0, "guidance": GUIDANCE,
        "max_sequence_length": T5_LENGTH, "schedule": "diffsynth", "entities": entities, **fields,
    })


# ---------------------------------------------------------------- a. the model and the plain forward


def test_tiny_reference_has_the_full_size_attributes() -> None:
    tiny = TinyFluxDiT(dim=32, heads=2, num_blocks=2, num_single_blocks=2, axes_dim=[4, 6, 6],
                       context_dim=32, pooled_dim=32)
    assert parameter_patterns(tiny) == full_size_parameter_patterns()


def test_plain_forward_matches_reference(models, tiny_pipe, encode, latents, timestep) -> None:
    transformer, dit = models
    positive, _ = tiny_pipe.conditionings(parse_layout({"prompt": PROMPT, "max_sequence_length": T5_LENGTH}),
                                          np.zeros((0, N_IMAGE), dtype=bool))
    assert positive.attention_mask is None
    ours = our_forward(transformer, latents, timestep, positive)
    reference = reference_forward(dit, latents, timestep, {"prompt_emb": encode(PROMPT)[0]}, encode(PROMPT)[1])
    if transformer.config.guidance_embeds:
        # (time + pooled) + guidance in the reference, (time + guidance) + pooled in diffusers
        assert max_diff(ours, reference) <= 1e-5 * reference.abs().max().item()
        with diffusers_conditioning_order(dit, GUIDANCE):
            reference = reference_forward(dit, latents, timestep, {"prompt_emb": encode(PROMPT)[0]},
                                          encode(PROMPT)[1])
    assert max_diff(ours, reference) == 0.0


# ---------------------------------------------------------------- b. the EliGen forward


@pytest.mark.parametrize("k", [2, 3, 4])
def test_eligen_forward_matches_reference(k, models, tiny_pipe, encode, latents, timestep, tmp_path) -> None:
    transformer, dit = models
    images = entity_images()[:k]
    layout = layout_with_masks(images, tmp_path)
    regions = tiny_pipe.token_regions(layout, tmp_path)
    positive, _ = tiny_pipe.conditionings(layout, regions)

    pipe = reference_pipeline(dit)
    inputs, _ = reference_entity_inputs(pipe, encode, images, on_negative=False)
    # the reference's sequence [entity_1 | ... | entity_k | global] and its mask are exactly ours
    entity_emb = inputs["entity_prompt_emb"]
    assert torch.equal(positive.prompt_embeds, torch.cat([*entity_emb.unbind(1), inputs["prompt_emb"]], dim=1))
    mask = reference_mask(dit, inputs, latents)
    assert torch.equal(positive.attention_mask, mask)
    allowed = (mask[0, 0] == 0).numpy()
    assert allowed[:T5_LENGTH, T5_LENGTH:2 * T5_LENGTH].sum() == 0  # entity prompts do not see each other
    assert (regions[0] & regions[1]).any()  # the regions overlap
    if k == 4:
        assert regions[3].sum() == 1  # a region of a single token

    ours = our_forward(transformer, latents, timestep, positive)
    reference = reference_forward(dit, latents, timestep, inputs, encode(PROMPT)[1])
    if transformer.config.guidance_embeds:
        assert max_diff(ours, reference) <= 1e-5 * reference.abs().max().item()
        with diffusers_conditioning_order(dit, GUIDANCE):
            reference = reference_forward(dit, latents, timestep, inputs, encode(PROMPT)[1])
    assert max_diff(ours, reference) == 0.0
    # and the regions do act: without them the output differs
    plain = Conditioning(positive.prompt_embeds, positive.pooled, positive.text_ids, None)
    assert max_diff(our_forward(transformer, latents, timestep, plain), ours) > 1e-3


# ---------------------------------------------------------------- c. token regions


def random_mask(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB mask of one of several kinds: binary noise, grey-level noise, a box, an ellipse, lines, a pixel."""
    kind = rng.integers(6)
    if kind == 0:
        on = rng.random((height, width)) < rng.uniform(0.02, 0.5)
        return Image.fromarray(on.astype(np.uint8) * 255).convert("RGB")
    if kind == 1:
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    x0, x1 = sorted(rng.integers(0, width, 2))
    y0, y1 = sorted(rng.integers(0, height, 2))
    if kind == 2:
        draw.rectangle((x0, y0, x1, y1), fill="white")
    elif kind == 3:
        draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill="white")
    elif kind == 4:
        draw.line((x0, y0, x1, y1), fill="white", width=int(rng.integers(1, 4)))
    else:
        draw.point((int(x0), int(y0)), fill="white")
    return image


def test_token_regions_match_reference_preprocessing(tiny_pipe, encode, tmp_path) -> None:
    """Our pixel mask -> token rule against the reference EliGen unit's mask preprocessing and its
    `process_entity_masks` patchify rule, on random masks of random canvases."""
    rng = np.random.default_rng(0)
    dit = TinyFluxDiT.from_diffusers(tiny_pipe.transformer)
    unit = EntityUnit(encode)
    pipe = reference_pipeline(dit)
    compared = 0
    for trial in range(24):
        width, height = (16 * int(v) for v in rng.integers(1, 21, 2))
        images = [random_mask(rng, width, height) for _ in range(6)]
        for image in images:  # our layouts reject masks without a single pixel on
            image.putpixel((int(rng.integers(width)), int(rng.integers(height))), (255, 255, 255))
        folder = tmp_path / str(trial)
        folder.mkdir()
        layout = layout_with_masks(images, folder, size=[width, height])
        ours = np.stack([token_mask(m, 8).reshape(-1) for m in entity_masks(layout, folder)])

        entity_emb, masks = unit.prepare_entity_inputs(pipe, ENTITIES[:1] * len(images), images, width, height,
                                                       T5_LENGTH)
        inputs = {"prompt_emb": encode(PROMPT)[0], "entity_prompt_emb": entity_emb, "entity_masks": masks}
        mask = reference_mask(dit, inputs, torch.zeros(1, 16, height // 8, width // 8))
        text = (len(images) + 1) * T5_LENGTH
        reference = (mask[0, 0, ::T5_LENGTH, text:][: len(images)] == 0).numpy()
        assert np.array_equal(ours, reference), f"trial {trial}: {(ours != reference).sum()} tokens differ"
        compared += ours.size
    assert compared > 10_000


# ---------------------------------------------------------------- d. schedule, timesteps, noise


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 28, 30, 50, 100])
def test_diffsynth_schedule_matches_reference(steps: int) -> None:
    scheduler = FlowMatchScheduler("FLUX.1")
    scheduler.set_timesteps(steps)
    sigmas, timesteps = diffsynth_schedule(steps)
    assert torch.equal(sigmas[:-1], scheduler.sigmas)
    assert sigmas[-1].item() == 0.0  # the reference steps to sigma 0 after its last timestep
    assert torch.equal(timesteps, scheduler.timesteps)


class _Seen(Exception):
    """Raised by a hook once the time embedding's input is recorded: the rest of the forward is not needed."""


@pytest.mark.parametrize("steps", [1, 4, 28, 50, 100])
def test_timestep_reaching_the_model_matches_reference(steps, tiny_pipe, encode) -> None:
    """The reference feeds its time embedding the scheduler's timestep; `predict` feeds diffusers t/1000 and
    diffusers multiplies by 1000 again. Over these schedules the round trip is exact in float32 (it is not for
    every float: about 1% of values in 0..1000 come back an ulp off)."""
    transformer = random_transformer(tiny_pipe.transformer.config, True)
    dit = TinyFluxDiT.from_diffusers(transformer)
    seen: dict[str, list[torch.Tensor]] = {"ours": [], "reference": []}

    def recorder(side: str):
        def hook(module, args):
            seen[side].append(args[0].clone())
            raise _Seen

        return hook

    hooks = [
        transformer.time_text_embed.register_forward_pre_hook(recorder("ours")),
        dit.time_embedder.register_forward_pre_hook(recorder("reference")),
    ]
    latents = get_noise(1, 16, 4, 4, torch.float32)
    cond = Conditioning(encode(PROMPT)[0], encode(PROMPT)[1], torch.zeros(T5_LENGTH, 3), None)
    scheduler = FlowMatchScheduler("FLUX.1")
    scheduler.set_timesteps(steps)
    _, timesteps = diffsynth_schedule(steps)
    try:
        for ours, theirs in zip(timesteps, scheduler.timesteps, strict=True):
            with pytest.raises(_Seen):
                our_forward(transformer, latents, ours, cond)
            with pytest.raises(_Seen):
                reference_forward(dit, latents, theirs, {"prompt_emb": cond.prompt_embeds}, cond.pooled)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen["ours"]) == len(seen["reference"]) == steps
    assert torch.equal(torch.cat(seen["ours"]), torch.cat(seen["reference"]))
    assert torch.equal(torch.cat(seen["reference"]), scheduler.timesteps)


def test_initial_noise_matches_reference() -> None:
    pipe = reference_pipeline()
    theirs = pipe.generate_noise((1, 16, HEIGHT // 8, WIDTH // 8), seed=42, rand_device="cpu")
    assert torch.equal(get_noise(42, 16, HEIGHT // 8, WIDTH // 8, torch.float32), theirs)


# ---------------------------------------------------------------- e. regions on the negative branch


def test_regions_on_negative_match_reference(models, tiny_pipe, encode, latents, timestep, tmp_path) -> None:
    """`regions_on_negative` against the reference's `eligen_enable_on_negative`: the negative embedding
    repeated once per entity, the positive branch's masks."""
    transformer, dit = models
    images = entity_images()
    layout = layout_with_masks(images, tmp_path, regions_on_negative=True)
    regions = tiny_pipe.token_regions(layout, tmp_path)
    positive, negative = tiny_pipe.conditionings(layout, regions)
    assert negative is not None

    pipe = reference_pipeline(dit)
    _, inputs = reference_entity_inputs(pipe, encode, images, on_negative=True)
    entity_emb = inputs["entity_prompt_emb"]
    assert entity_emb.shape[1] == len(images)
    assert torch.equal(negative.prompt_embeds, torch.cat([*entity_emb.unbind(1), inputs["prompt_emb"]], dim=1))
    assert torch.equal(negative.prompt_embeds, torch.cat([encode(NEGATIVE)[0]] * (len(images) + 1), dim=1))
    assert torch.equal(negative.attention_mask, reference_mask(dit, inputs, latents))
    assert torch.equal(negative.attention_mask, positive.attention_mask)
    assert torch.equal(negative.pooled, encode(NEGATIVE)[1])

    ours = our_forward(transformer, latents, timestep, negative)
    reference = reference_forward(dit, latents, timestep, inputs, encode(NEGATIVE)[1])
    if transformer.config.guidance_embeds:
        assert max_diff(ours, reference) <= 1e-5 * reference.abs().max().item()
        with diffusers_conditioning_order(dit, GUIDANCE):
            reference = reference_forward(dit, latents, timestep, inputs, encode(NEGATIVE)[1])
    assert max_diff(ours, reference) == 0.0

    # without the option both sides run the negative branch as plain FLUX
    _, plain = tiny_pipe.conditionings(layout.model_copy(update={"regions_on_negative": False}), regions)
    _, inputs = reference_entity_inputs(pipe, encode, images, on_negative=False)
    assert plain is not None and plain.attention_mask is None
    assert inputs.get("entity_prompt_emb") is None and inputs.get("entity_masks") is None
    assert torch.equal(plain.prompt_embeds, inputs["prompt_emb"])

