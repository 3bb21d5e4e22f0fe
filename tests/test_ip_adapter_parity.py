"""The InstantX IP-Adapter path against the reference (`diffsynth` 2.1.12) on the same tiny weights.

The tiny InstantX file (`build_tiny_ip_adapters`: the real file's key names and nested layout, 128 tokens, one layer
per dual and single block) is read by our loader and, for the reference, by its own state-dict converter
(`FluxIpAdapterStateDictConverter`) into its own `FluxIpAdapter`; the tiny SigLIP encoder is the same
transformers `SiglipVisionModel` the reference subclasses. The reference's `FluxIpAdapter` hard-codes the image
embedding width (1152, SigLIP so400m); its projection is rebuilt with the reference's own `MLPProjModel` at the tiny
encoder's width (48), nothing else is changed. The reference's `FluxImageUnit_IPAdapter` encodes the reference
image (384 px, bicubic, [-1, 1]) and builds both branches' keys and values (the negative: zero embeddings, scale 1).

a. One transformer pass with two entities and a global reference (scale 0.7): ours against the reference's
   `model_fn_flux_image`, within 1e-5 of the output's magnitude (float32; the two sum in other orders: diffusers'
   and the reference's blocks, and our weight-tensor product against its scalar one, which here are the same
   rounding).
b. A whole generation (schedule diffsynth, cfg 3 with a negative prompt, 3 steps): ours against the reference's
   loop (its scheduler, its model function, true CFG, its EliGen and IP-Adapter units), within 1e-4 in latents,
   the tolerance of the core's generation parity (tests/test_reference_parity_lora_generation.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from diffsynth.diffusion import FlowMatchScheduler
from diffsynth.models.flux_ipadapter import FluxIpAdapter, MLPProjModel
from diffsynth.pipelines.flux_image import FluxImageUnit_IPAdapter, model_fn_flux_image
from diffsynth.utils.state_dict_converters.flux_ipadapter import FluxIpAdapterStateDictConverter
from diffusers import FluxPipeline, FluxTransformer2DModel
from PIL import Image, ImageDraw
from reference_flux import EntityUnit, TinyFluxDiT, reference_pipeline
from transformers import SiglipVisionModel

from eligen.pipeline.families.flux.family import FluxFamily
from eligen.pipeline.families.flux.transformer import image_ids, predict
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import load_layout
from eligen.pipeline.sampler import get_noise, unpack
from eligen.pipeline.shapes.tiny_ip_adapter import INSTANTX_TOKENS, SIGLIP_WIDTH, build_tiny_ip_adapters

WIDTH, HEIGHT = 96, 64
T5_LENGTH = 16
GUIDANCE, CFG, STEPS, SEED, SCALE = 3.5, 3.0, 3, 11, 0.7
PROMPT, NEGATIVE = "a photo of a table with a cup and a book", "dark, low quality"
ENTITY_PROMPTS = ["a red cup", "an old book"]
BOXES = [(0, 0, 48, 64), (48, 16, 96, 64)]  # on token edges (multiples of 16): the same tokens for any rasteriser


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ip_adapters(tmp_path_factory.mktemp("adapters") / "ip", tiny_model, seed=3)


@pytest.fixture(scope="module")
def transformer(tiny_pipe: EligenPipeline) -> FluxTransformer2DModel:
    """The tiny architecture with every parameter perturbed (no constant weight hides a misplaced tensor)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(29)
        model = FluxTransformer2DModel.from_config(tiny_pipe.transformer.config)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture(scope="module")
def reference_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("refs") / "style.png"
    generator = torch.Generator().manual_seed(5)
    pixels = (torch.rand(80, 120, 3, generator=generator) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


def ours(tiny_pipe: EligenPipeline, transformer: FluxTransformer2DModel) -> EligenPipeline:
    flux = FluxPipeline(**{**tiny_pipe.family.pipe.components, "transformer": copy.deepcopy(transformer)})
    return EligenPipeline(FluxFamily(flux), tiny_pipe.model)


def layout_file(folder: Path, tiny_pipe: EligenPipeline, adapters: Path, image: Path) -> Path:
    data = {
        "model": tiny_pipe.model, "size": [WIDTH, HEIGHT], "seed": SEED, "steps": STEPS, "cfg": CFG,
        "guidance": GUIDANCE, "schedule": "diffsynth", "max_sequence_length": T5_LENGTH, "prompt": PROMPT,
        "negative_prompt": NEGATIVE, "loras": [], "attention": "dense",
        "entities": [{"prompt": p, "box": list(b)} for p, b in zip(ENTITY_PROMPTS, BOXES, strict=True)],
        "ip_adapter": {"path": str(adapters / "instantx" / "ip-adapter.bin"), "image": str(image), "scale": SCALE,
                       "image_encoder": str(adapters / "instantx" / "image_encoder")},
    }
    path = folder / "layout.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def reference_masks() -> list[Image.Image]:
    masks = []
    for box in BOXES:
        mask = Image.new("RGB", (WIDTH, HEIGHT))
        ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill="white")
        masks.append(mask)
    return masks


def reference_with_adapter(transformer: FluxTransformer2DModel, tiny_pipe: EligenPipeline, adapters: Path):
    """The reference pipeline holding the same DiT, adapter and image encoder."""
    encode = tiny_pipe.prompt_encoder(T5_LENGTH)
    pipe = reference_pipeline(TinyFluxDiT.from_diffusers(transformer), encode)
    config = transformer.config
    adapter = FluxIpAdapter(num_attention_heads=config.num_attention_heads,
                            attention_head_dim=config.attention_head_dim,
                            cross_attention_dim=config.joint_attention_dim, num_tokens=INSTANTX_TOKENS,
                            num_blocks=config.num_layers + config.num_single_layers)
    adapter.image_proj = MLPProjModel(cross_attention_dim=config.joint_attention_dim, id_embeddings_dim=SIGLIP_WIDTH,
                                      num_tokens=INSTANTX_TOKENS)
    state = torch.load(adapters / "instantx" / "ip-adapter.bin", weights_only=True)
    adapter.load_state_dict(FluxIpAdapterStateDictConverter(state), strict=True)
    pipe.ipadapter = adapter.eval()
    pipe.ipadapter_image_encoder = SiglipVisionModel.from_pretrained(adapters / "instantx" / "image_encoder").eval()
    return pipe, encode


def reference_branches(pipe, encode, image: Path, entity_prompts: list[str]) -> tuple[dict, dict]:
    """The reference's positive and negative model inputs: its EliGen unit and its IP-Adapter unit."""
    shared = {"eligen_entity_prompts": entity_prompts, "eligen_entity_masks": reference_masks(),
              "width": WIDTH, "height": HEIGHT, "t5_sequence_length": T5_LENGTH, "cfg_scale": CFG,
              "ipadapter_images": Image.open(image), "ipadapter_scale": SCALE}
    positive = {"prompt": PROMPT, "prompt_emb": encode(PROMPT)[0], "pooled_prompt_emb": encode(PROMPT)[1]}
    negative = {"negative_prompt": NEGATIVE, "prompt_emb": encode(NEGATIVE)[0],
                "pooled_prompt_emb": encode(NEGATIVE)[1]}
    EntityUnit(encode).process(pipe, shared, positive, negative)
    with torch.no_grad():
        FluxImageUnit_IPAdapter().process(pipe, shared, positive, negative)
    del positive["prompt"], negative["negative_prompt"]
    for branch in (positive, negative):
        branch["text_ids"] = torch.zeros(1, branch["prompt_emb"].shape[1], 3)
    assert set(positive["ipadapter_kwargs_list"]) == set(range(4))
    return positive, negative


def test_forward_matches_reference(tiny_pipe, transformer, adapters, reference_image, tmp_path) -> None:
    pipe = ours(tiny_pipe, transformer)
    layout = load_layout(layout_file(tmp_path, tiny_pipe, adapters, reference_image))
    positive, negative = pipe.prepare(layout, tmp_path)
    assert positive.ip_adapter is not None and negative is not None and negative.ip_adapter is not None
    reference, encode = reference_with_adapter(transformer, tiny_pipe, adapters)
    posi, nega = reference_branches(reference, encode, reference_image, ENTITY_PROMPTS)

    latents = get_noise(5, 16, HEIGHT // 8, WIDTH // 8, torch.float32)
    timestep = torch.tensor(700.0)
    ids = image_ids(HEIGHT // 8, WIDTH // 8, torch.device("cpu"), torch.float32)
    guidance = torch.full((1,), GUIDANCE)
    common = {"dit": reference.dit, "guidance": torch.Tensor([GUIDANCE]),
              "image_ids": reference.dit.prepare_image_ids(latents)}
    from eligen.pipeline.sampler import pack

    x = pack(latents)
    for ours_branch, theirs in ((positive, posi), (negative, nega)):
        with torch.no_grad():
            expected = unpack(pack(model_fn_flux_image(latents=latents, timestep=timestep[None], **common,
                                                       **theirs)), HEIGHT // 8, WIDTH // 8)
            got = unpack(predict(pipe.transformer, x, timestep, ours_branch, ids, guidance), HEIGHT // 8, WIDTH // 8)
        assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    # the adapter does act in the reference as in ours: without it the output is another one
    plain = {k: v for k, v in posi.items() if k != "ipadapter_kwargs_list"}
    with torch.no_grad():
        without = model_fn_flux_image(latents=latents, timestep=timestep[None], **common, **plain)
        with_adapter = model_fn_flux_image(latents=latents, timestep=timestep[None], **common, **posi)
    assert (without - with_adapter).abs().max().item() > 1e-3


def reference_loop(pipe, encode, image: Path) -> torch.Tensor:
    positive, negative = reference_branches(pipe, encode, image, ENTITY_PROMPTS)
    latents = pipe.generate_noise((1, 16, HEIGHT // 8, WIDTH // 8), seed=SEED, rand_device="cpu")
    common = {"dit": pipe.dit, "guidance": torch.Tensor([GUIDANCE]), "image_ids": pipe.dit.prepare_image_ids(latents)}
    scheduler = FlowMatchScheduler("FLUX.1")
    scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        for t in scheduler.timesteps:
            timestep = t.unsqueeze(0).to(torch.float32)
            v_pos = model_fn_flux_image(latents=latents, timestep=timestep, **common, **positive)
            v_neg = model_fn_flux_image(latents=latents, timestep=timestep, **common, **negative)
            latents = scheduler.step(v_neg + CFG * (v_pos - v_neg), t, latents)
    return latents


def test_generation_matches_reference(tiny_pipe, transformer, adapters, reference_image, tmp_path) -> None:
    pipe = ours(tiny_pipe, transformer)
    layout = load_layout(layout_file(tmp_path, tiny_pipe, adapters, reference_image))
    positive, negative = pipe.prepare(layout, tmp_path)
    final = unpack(pipe.sample(layout, positive, negative, SEED), HEIGHT // 8, WIDTH // 8)
    reference, encode = reference_with_adapter(transformer, tiny_pipe, adapters)
    expected = reference_loop(reference, encode, reference_image)
    assert (final - expected).abs().max().item() <= 1e-4
    plain = pipe.sample(layout.model_copy(update={"ip_adapter": None}), *pipe.prepare(
        layout.model_copy(update={"ip_adapter": None}), tmp_path), SEED)
    assert (unpack(plain, HEIGHT // 8, WIDTH // 8) - expected).abs().max().item() > 1e-3  # the adapter acts
