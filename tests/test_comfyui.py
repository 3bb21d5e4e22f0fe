"""eligen's ComfyUI nodes against the real ComfyUI (its source at COMFYUI_PATH; CI sets it, docs/comfyui.md).

ComfyUI's own FLUX.1 and Qwen-Image model classes hold the weights of eligen's tiny folders (`comfyui_models`);
the nodes' conditioning goes through ComfyUI's model patcher, conditioning processing, CFG and samplers, and is
compared with eligen's own velocity and `eligen generate` on the same layout.

The prompts are encoded by eligen's encoder of the tiny folder, handed to the nodes through a stand-in for
ComfyUI's CLIP object (`EncoderAsClip`): ComfyUI's text encoders have fixed full-size configs, so tiny ones cannot
be built from its classes. What the nodes do with a CLIP's output is what is tested.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

COMFYUI = os.environ.get("COMFYUI_PATH")
if not COMFYUI:
    pytest.skip("ComfyUI tests not run: set COMFYUI_PATH to a ComfyUI checkout (CI sets it)", allow_module_level=True)
ROOT = Path(__file__).resolve().parent.parent
sys.path += [COMFYUI, str(ROOT)]  # after everything else: ComfyUI has top-level modules (utils, app, nodes)

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before ComfyUI picks its device: these tests run on the CPU

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
from comfyui_models import comfy_flux, comfy_qwen_image  # noqa: E402

from eligen.pipeline.layout import parse_layout  # noqa: E402
from eligen.pipeline.regions import mask_data_url  # noqa: E402
from eligen.pipeline.sampler import get_noise, get_schedule, pack, unpack  # noqa: E402
from eligen_comfyui.nodes import EliGenApply, EliGenEntity, EliGenInpaint, LoadEliGenLayout  # noqa: E402

WIDTH, HEIGHT = 128, 96
SIGMA = 0.75
CFG = 3.0
GUIDANCE = 3.5
TOLERANCE = 2e-5  # max |velocity difference| (see the parity tests)


def ellipse(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    return ((xs - 88) / 30) ** 2 + ((ys - 60) / 26) ** 2 <= 1


# (layout entity in px, the same region as EliGen Entity inputs)
ENTITIES = [
    ({"prompt": "a red cup", "box": [0, 0, 64, 96]}, {"box": (0, 0, 64, 96), "units": "px"}),
    ({"prompt": "an old book on the table", "box": [48, 16, 128, 80]},
     {"box": (0.375, 1 / 6, 1.0, 80 / 96), "units": "fraction"}),
    ({"prompt": "a blue hat", "mask": mask_data_url(ellipse())}, {"mask": torch.from_numpy(ellipse()).float()[None]}),
    ({"prompt": "a green plant", "box": [16, 48, 48, 96]}, {"box": (16, 48, 48, 96), "units": "px"}),
]


class EncoderAsClip:
    """Stands in for ComfyUI's CLIP object (`tokenize`, `encode_from_tokens_scheduled`, `tokenizer`) with eligen's
    encoder. For FLUX its tokens hold, as ComfyUI's FLUX tokenizer's do, T5's ids padded to the encoding's length
    with their weights under `t5xxl`; Qwen-Image's encoder does not pad."""

    def __init__(self, encode) -> None:
        self.encode = encode
        self.t5 = getattr(encode.pipe, "tokenizer_2", None)  # FLUX's T5 tokenizer
        if self.t5 is not None:
            self.tokenizer = SimpleNamespace(t5xxl=SimpleNamespace(pad_token=self.t5.pad_token_id))

    def tokenize(self, text: str) -> dict:
        tokens: dict = {"text": text}
        if self.t5 is not None:
            ids = self.t5(text, padding="max_length", max_length=self.encode.max_sequence_length,
                          truncation=True).input_ids
            tokens["t5xxl"] = [[(i, 1.0) for i in ids]]
        return tokens

    def encode_from_tokens_scheduled(self, tokens: dict | str) -> list[list]:
        embeds, pooled = self.encode(tokens["text"] if isinstance(tokens, dict) else tokens)  # or a text, in tests
        return [[embeds, {} if pooled is None else {"pooled_output": pooled}]]


def layout_data(k: int, regions_on_negative: bool = False, entity_tokens: str | int = "max") -> dict:
    return {"size": [WIDTH, HEIGHT], "prompt": "a photo of a table", "negative_prompt": "dark, blurry", "cfg": CFG,
            "guidance": GUIDANCE, "steps": 4, "regions_on_negative": regions_on_negative,
            "entity_tokens": entity_tokens, "entities": [e for e, _ in ENTITIES[:k]]}


def layout(k: int, regions_on_negative: bool = False):
    return parse_layout(layout_data(k, regions_on_negative))


def node_entities(clip: EncoderAsClip, k: int) -> tuple:
    entities = ()
    for spec, region in ENTITIES[:k]:
        x1, y1, x2, y2 = region.get("box", (0, 0, 1, 1))
        (entities,) = EliGenEntity().add(clip, spec["prompt"], x1, y1, x2, y2, region.get("units", "fraction"),
                                         region.get("mask"), entities)
    return entities


def comfy_velocity(patcher, positive: list, negative: list, x: torch.Tensor, cfg: float = CFG) -> torch.Tensor:
    """The CFG velocity of one denoiser call through ComfyUI's guider (conds, batching, patches) at SIGMA (at cfg 1
    ComfyUI runs no negative branch)."""
    guider = comfy.samplers.CFGGuider(patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    denoised = []

    def one_call(model, noise, sigmas, extra_args=None, callback=None, disable=None):
        denoised.append(model(x, sigmas[0] * x.new_ones(x.shape[0]), **extra_args))
        return noise

    guider.sample(torch.zeros_like(x), torch.zeros_like(x), comfy.samplers.KSAMPLER(one_call),
                  torch.tensor([SIGMA, 0.0]), disable_pbar=True, seed=0)
    return (x - denoised[0]) / SIGMA  # ComfyUI's flow models predict x0 = x - sigma * v


def without_hooks(conditioning: list) -> list:
    """The conditioning without the hook EliGen Apply attaches: the regions are then not applied (a control)."""
    return [[c[0], {k: v for k, v in c[1].items() if k != "hooks"}] for c in conditioning]


def eligen_velocity(pipe, positive, negative, x: torch.Tensor, guidance: float | None,
                    cfg: float = CFG) -> torch.Tensor:
    latent_h, latent_w = x.shape[-2:]
    velocity = pipe.family.velocity(pipe.transformer, latent_h, latent_w, guidance)
    tokens, t = pack(x), torch.tensor(SIGMA * 1000)
    with torch.inference_mode():
        v = velocity(tokens, t, positive)
        if cfg != 1.0:
            v_neg = velocity(tokens, t, negative)
            v = v_neg + cfg * (v - v_neg)
    return unpack(v, latent_h, latent_w)


@pytest.fixture(scope="module")
def flux(tiny_model: Path):
    return comfy_flux(tiny_model)


@pytest.mark.parametrize(("k", "regions_on_negative", "cfg"),
                         [(2, False, CFG), (3, True, CFG), (4, False, CFG), (4, True, CFG), (3, False, 1.0)])
def test_flux_denoiser_call_equals_eligen_velocity(tiny_pipe, flux, one_thread, k: int, regions_on_negative: bool,
                                                   cfg: float) -> None:
    """One denoiser call with the negative branch (plain, or with regions) and without it (cfg 1)."""
    lay = layout(k, regions_on_negative)
    positive, negative = tiny_pipe.conditionings(lay, tiny_pipe.token_regions(lay, Path(".")))
    x = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(k))
    expected = eligen_velocity(tiny_pipe, positive, negative, x, GUIDANCE, cfg)

    clip = EncoderAsClip(tiny_pipe.prompt_encoder(tiny_pipe.max_sequence_length(lay)))
    glob = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.prompt)]
    neg = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.negative_prompt)]
    pos_c, neg_c = EliGenApply().apply(flux, glob, neg, node_entities(clip, k), WIDTH, HEIGHT, regions_on_negative)
    got = comfy_velocity(flux, pos_c, neg_c, x, cfg)  # the MODEL as the loader gave it: the hook brings the patch
    plain = comfy_velocity(flux, without_hooks(pos_c), without_hooks(neg_c), x, cfg)  # the same text, no regions
    regions = pos_c[0][1]["model_conds"]["eligen_regions"].cond
    assert regions.token_regions.shape == (k, (HEIGHT // 16) * (WIDTH // 16)) and not regions._masks  # freed

    err = (got - expected).abs().max().item()
    print(f"FLUX k={k} regions_on_negative={regions_on_negative} cfg={cfg}: max |v| {expected.abs().max():.3f}, "
          f"max err {err:.2e}, unpatched off by {(plain - expected).abs().max():.2e}")
    # Two float32 implementations of the same model (ComfyUI's fused qkv and real-form rotary, diffusers' split
    # projections) differ by rounding only: about 2e-6 measured on |v| about 2.5 (1e-6 relative, a few ulps through
    # four blocks and CFG's factor 3). TOLERANCE leaves 10x margin; a wrong mask or text is off by more than 0.1.
    assert err < TOLERANCE
    assert (plain - expected).abs().max() > 100 * TOLERANCE


@pytest.fixture(scope="module")
def qwen(tiny_qwen_model: Path):
    return comfy_qwen_image(tiny_qwen_model)


@pytest.mark.parametrize(("k", "regions_on_negative", "cfg"),
                         [(2, False, CFG), (3, True, CFG), (4, False, CFG), (4, False, 1.0)])
def test_qwen_image_denoiser_call_equals_eligen_velocity(tiny_qwen_pipe, qwen, one_thread, k: int,
                                                         regions_on_negative: bool, cfg: float) -> None:
    pipe = tiny_qwen_pipe
    lay = layout(k, regions_on_negative)
    positive, negative = pipe.conditionings(lay, pipe.token_regions(lay, Path(".")))
    x = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(k))
    expected = eligen_velocity(pipe, positive, negative, x, None, cfg)

    clip = EncoderAsClip(pipe.prompt_encoder(pipe.max_sequence_length(lay)))
    glob = clip.encode_from_tokens_scheduled(lay.prompt)
    neg = clip.encode_from_tokens_scheduled(lay.negative_prompt)
    pos_c, neg_c = EliGenApply().apply(qwen, glob, neg, node_entities(clip, k), WIDTH, HEIGHT, regions_on_negative)
    x5 = x[:, :, None]  # ComfyUI's Qwen-Image latents carry a frame axis
    got = comfy_velocity(qwen, pos_c, neg_c, x5, cfg)[:, :, 0]
    plain = comfy_velocity(qwen, without_hooks(pos_c), without_hooks(neg_c), x5, cfg)[:, :, 0]

    err = (got - expected).abs().max().item()
    print(f"Qwen-Image k={k} regions_on_negative={regions_on_negative} cfg={cfg}: max |v| {expected.abs().max():.3f}, "
          f"max err {err:.2e}, unpatched off by {(plain - expected).abs().max():.2e}")
    assert err < TOLERANCE
    assert (plain - expected).abs().max() > 100 * TOLERANCE


def test_flux_sampling_in_comfyui_equals_eligen_generate(tiny_pipe, flux, one_thread) -> None:
    """ComfyUI's own sampler loop (KSampler's path: its euler sampler, CFG guider) with the nodes' conditioning on
    the tiny FLUX, and eligen's sampling of the same layout: the same noise and sigmas give the same latents."""
    lay, seed = layout(3), 7
    positive, negative = tiny_pipe.conditionings(lay, tiny_pipe.token_regions(lay, Path(".")))
    expected = unpack(tiny_pipe.sample(lay, positive, negative, seed), HEIGHT // 8, WIDTH // 8)

    clip = EncoderAsClip(tiny_pipe.prompt_encoder(tiny_pipe.max_sequence_length(lay)))
    glob = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.prompt)]
    neg = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.negative_prompt)]
    pos_c, neg_c = EliGenApply().apply(flux, glob, neg, node_entities(clip, 3), WIDTH, HEIGHT, False)
    noise = get_noise(seed, 16, HEIGHT // 8, WIDTH // 8, torch.float32)
    sigmas, _ = get_schedule(tiny_pipe.schedule(lay), lay.steps, (HEIGHT // 16) * (WIDTH // 16),
                             tiny_pipe.family.scheduler_config)
    # comfy.sample.sample is KSampler's own path (common_ksampler), here with eligen's sigmas
    samples = comfy.sample.sample(flux, noise, lay.steps, CFG, "euler", "simple", pos_c, neg_c,
                                  torch.zeros_like(noise), sigmas=sigmas, disable_pbar=True, seed=seed)
    got = flux.model.process_latent_in(samples)  # back from ComfyUI's VAE scale to the model's latents

    err = (got - expected).abs().max().item()
    print(f"FLUX sampling, {lay.steps} steps: max |x| {expected.abs().max():.3f}, max err {err:.2e}, "
          f"sigmas {[round(s, 4) for s in sigmas.tolist()]}")
    # each step adds a velocity difference of at most TOLERANCE times its sigma step (sum: sigma_0 = 1), plus the
    # rounding of ComfyUI's velocity recovery x - denoised / sigma
    assert err < 2 * TOLERANCE


def test_flux_sampler_custom_advanced_equals_eligen_generate(tiny_pipe, flux, one_thread) -> None:
    """SamplerCustomAdvanced's node code with its usual inputs (RandomNoise, CFGGuider, KSamplerSelect, BasicScheduler
    on a ModelSamplingFlux model, Empty Latent Image) and the nodes' conditioning on the tiny FLUX, against eligen's
    sampling of the same layout (`schedule: flux`, the regions also on the negative branch): the same latents."""
    import nodes
    from comfy_extras.nodes_custom_sampler import (
        BasicScheduler,
        CFGGuider,
        KSamplerSelect,
        RandomNoise,
        SamplerCustomAdvanced,
    )
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux

    lay, seed = layout(3, True), 11
    positive, negative = tiny_pipe.conditionings(lay, tiny_pipe.token_regions(lay, Path(".")))
    expected = unpack(tiny_pipe.sample(lay, positive, negative, seed), HEIGHT // 8, WIDTH // 8)
    eligen_sigmas, _ = get_schedule(tiny_pipe.schedule(lay), lay.steps, (HEIGHT // 16) * (WIDTH // 16),
                                    tiny_pipe.family.scheduler_config)

    clip = EncoderAsClip(tiny_pipe.prompt_encoder(tiny_pipe.max_sequence_length(lay)))
    glob = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.prompt)]
    neg = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.negative_prompt)]
    pos_c, neg_c = EliGenApply().apply(flux, glob, neg, node_entities(clip, 3), WIDTH, HEIGHT, True)
    config = tiny_pipe.family.scheduler_config  # the shifts of diffusers' resolution-dependent schedule
    (model,) = ModelSamplingFlux().patch(flux, config["max_shift"], config["base_shift"], WIDTH, HEIGHT)
    (sigmas,) = BasicScheduler().get_sigmas(model, "simple", lay.steps, 1.0)
    (guider,) = CFGGuider().get_guider(model, pos_c, neg_c, CFG)
    (sampler,) = KSamplerSelect().get_sampler("euler")
    (noise,) = RandomNoise().get_noise(seed)
    (latent,) = nodes.EmptyLatentImage().generate(WIDTH, HEIGHT, 1)
    output, _ = SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)
    got = flux.model.process_latent_in(output["samples"])

    sigma_err = (sigmas - eligen_sigmas).abs().max().item()
    err = (got - expected).abs().max().item()
    print(f"FLUX SamplerCustomAdvanced, {lay.steps} steps: sigmas {[round(s, 4) for s in sigmas.tolist()]} (eligen's "
          f"to {sigma_err:.1e}), max |x| {expected.abs().max():.3f}, max err {err:.2e}")
    # ComfyUI's scheduler reads the same exponential shift from a 10000-entry float32 table at t = 1, 3/4, 1/2, 1/4:
    # eligen's sigmas up to float32 rounding
    assert sigma_err < 1e-6
    # as the KSampler test: each step adds at most TOLERANCE times its sigma step, plus the x0 <-> v rounding
    assert err < 2 * TOLERANCE


@pytest.mark.parametrize("fuse", ["positive", "both"])
def test_flux_inpainting_in_comfyui_equals_eligen_s_fusion(tiny_pipe, flux, one_thread, fuse: str) -> None:
    """EliGen Inpaint on ComfyUI's sampler loop and eligen's sampling with the paper's fusion (positive branch) or
    both branches fused, on the same source latents, noise and sigmas: the same latents."""
    from eligen.pipeline.inpaint import Fusion, packed_union, paper_union
    from eligen.pipeline.regions import entity_masks

    lay, seed = layout(2), 3
    positive, negative = tiny_pipe.conditionings(lay, tiny_pipe.token_regions(lay, Path(".")))
    z_init = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(9))
    union = packed_union(paper_union(entity_masks(lay, Path(".")), 8), 16, torch.device("cpu"))
    fusion = Fusion(pack(z_init), union)
    expected = unpack(tiny_pipe.sample(lay, positive, negative, seed, fuse_positive=fusion,
                                       fuse_negative=fusion if fuse == "both" else None), HEIGHT // 8, WIDTH // 8)

    clip = EncoderAsClip(tiny_pipe.prompt_encoder(tiny_pipe.max_sequence_length(lay)))
    glob = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.prompt)]
    neg = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.negative_prompt)]
    entities = node_entities(clip, 2)
    pos_c, neg_c = EliGenApply().apply(flux, glob, neg, entities, WIDTH, HEIGHT, False)
    source = {"samples": flux.model.process_latent_out(z_init)}  # as VAE Encode gives it
    (model,) = EliGenInpaint().patch(flux, source, entities, WIDTH, HEIGHT, fuse)
    noise = get_noise(seed, 16, HEIGHT // 8, WIDTH // 8, torch.float32)
    sigmas, _ = get_schedule(tiny_pipe.schedule(lay), lay.steps, (HEIGHT // 16) * (WIDTH // 16),
                             tiny_pipe.family.scheduler_config)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(pos_c, neg_c)
    guider.set_cfg(CFG)
    got = model.model.process_latent_in(guider.sample(noise, torch.zeros_like(noise),
                                                      comfy.samplers.sampler_object("euler"), sigmas,
                                                      disable_pbar=True, seed=seed))
    err = (got - expected).abs().max().item()
    outside = ~unpack(union.float(), HEIGHT // 8, WIDTH // 8).bool()
    print(f"FLUX inpainting ({fuse}): max err {err:.2e}; outside the regions the result is "
          f"{(got - z_init)[outside].abs().max():.2e} from the source")
    assert err < 2 * TOLERANCE
    if fuse == "both":  # both branches follow the source outside the regions: the last step lands on it
        assert (got - z_init)[outside].abs().max() < 1e-5
    with pytest.raises(ValueError, match="the source latent is 64x64, the entities were placed on 128x96"):
        EliGenInpaint().patch(flux, {"samples": torch.zeros(1, 16, 8, 8)}, entities, WIDTH, HEIGHT, fuse)


@pytest.fixture(scope="module")
def comfy_nodes(tmp_path_factory: pytest.TempPathFactory):
    """ComfyUI's node table with the node pack loaded by ComfyUI's own custom-node loader, from a custom_nodes/
    folder holding the repository (a link to it, as a clone would be)."""
    import nodes

    custom_nodes = tmp_path_factory.mktemp("custom_nodes")
    (custom_nodes / "eligen").symlink_to(ROOT, target_is_directory=True)
    assert asyncio.run(nodes.load_custom_node(str(custom_nodes / "eligen")))
    return nodes


def test_comfyui_discovers_the_node_pack_in_custom_nodes(comfy_nodes) -> None:
    nodes = comfy_nodes
    assert {"EliGenEntity", "EliGenApply", "EliGenInpaint", "LoadEliGenLayout"} <= set(nodes.NODE_CLASS_MAPPINGS)
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["EliGenApply"] == "EliGen Apply"
    from comfy_config import config_parser  # the registry metadata, read as ComfyUI reads it

    config = config_parser.extract_node_configuration(str(ROOT))
    assert (config.project.name, config.tool_comfy.publisher_id) == ("eligen", "eligen")
    assert config.tool_comfy.display_name.startswith("EliGen") and config.project.supported_comfyui_version
    entity, apply, load = (nodes.NODE_CLASS_MAPPINGS[n] for n in ("EliGenEntity", "EliGenApply", "LoadEliGenLayout"))
    assert entity.INPUT_TYPES()["required"]["clip"] == ("CLIP",)
    assert entity.INPUT_TYPES()["optional"]["mask"][0] == "MASK"
    assert entity.INPUT_TYPES()["optional"]["entities"] == ("ELIGEN_ENTITIES",)
    assert entity.RETURN_TYPES == ("ELIGEN_ENTITIES",)
    required = apply.INPUT_TYPES()["required"]
    assert [required[k][0] for k in ("model", "positive", "negative", "entities", "width", "height",
                                     "regions_on_negative")] == ["MODEL", "CONDITIONING", "CONDITIONING",
                                                                 "ELIGEN_ENTITIES", "INT", "INT", "BOOLEAN"]
    assert apply.RETURN_TYPES == ("CONDITIONING", "CONDITIONING")
    assert load.RETURN_TYPES == ("ELIGEN_ENTITIES", "CONDITIONING", "CONDITIONING", "INT", "INT", "BOOLEAN")
    inpaint = nodes.NODE_CLASS_MAPPINGS["EliGenInpaint"]
    assert [v[0] for v in inpaint.INPUT_TYPES()["required"].values()] == [
        "MODEL", "LATENT", "ELIGEN_ENTITIES", "INT", "INT", ["positive", "both"]]
    assert inpaint.RETURN_TYPES == ("MODEL",)
    for node in (entity, apply, load):
        assert callable(getattr(node(), node.FUNCTION))


def test_the_node_pack_runs_from_a_checkout_without_eligen_installed(tmp_path: Path) -> None:
    """A clone in custom_nodes/ with no `pip install`: the nodes import the checkout's own eligen.pipeline."""
    import subprocess

    script = f"""
import importlib.abc, sys
class NoInstalledEligen(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "eligen":
            raise ModuleNotFoundError("no module named eligen")
sys.meta_path.insert(0, NoInstalledEligen())
sys.path[:0] = [{COMFYUI!r}, {str(tmp_path)!r}]
import comfy.cli_args
comfy.cli_args.args.cpu = True
import eligen_clone
import eligen.pipeline.regions
assert eligen.pipeline.regions.__file__ == {str(ROOT / "pipeline" / "regions.py")!r}, eligen.pipeline.regions.__file__
print(sorted(eligen_clone.NODE_CLASS_MAPPINGS))
"""
    (tmp_path / "eligen_clone").symlink_to(ROOT, target_is_directory=True)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "['EliGenApply', 'EliGenEntity', 'EliGenInpaint', 'LoadEliGenLayout']" in run.stdout


@pytest.fixture
def clip(tiny_pipe) -> EncoderAsClip:
    return EncoderAsClip(tiny_pipe.prompt_encoder(32))


def test_bad_inputs_give_clear_node_errors(tiny_pipe, flux, clip) -> None:
    glob = clip.encode_from_tokens_scheduled("a photo of a table")
    box = (0, 0, 64, 96, "px")
    with pytest.raises(ValueError, match="EliGen Entity 1: no CLIP is connected"):
        EliGenEntity().add(None, "a red cup", *box)
    with pytest.raises(ValueError, match="EliGen Entity 1: expected a prompt"):
        EliGenEntity().add(clip, "  ", *box)

    def apply(entities, model=flux, width=WIDTH, height=HEIGHT):
        return EliGenApply().apply(model, glob, glob, entities, width, height, False)

    (wrong_size,) = EliGenEntity().add(clip, "a blue hat", *box, mask=torch.ones(1, 64, 64))
    with pytest.raises(ValueError, match=r"a blue hat.*expected a mask of the image's size 128x96, got 64x64"):
        apply(wrong_size)
    (empty,) = EliGenEntity().add(clip, "a blue hat", *box, mask=torch.zeros(1, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="expected a non-empty region, it covers no pixel"):
        apply(empty)
    sliver = torch.zeros(1, HEIGHT, WIDTH)
    sliver[:, :, 3] = 1  # one pixel wide, off every latent pixel's centre
    (thin,) = EliGenEntity().add(clip, "a pole", *box, mask=sliver)
    with pytest.raises(ValueError, match="covers no token of the 8x6 token grid"):
        apply(thin)
    (fraction_as_px,) = EliGenEntity().add(clip, "a red cup", 0, 0, 0.5, 1.0, "px")
    with pytest.raises(ValueError, match="add `units: fraction`"):
        apply(fraction_as_px)
    (outside,) = EliGenEntity().add(clip, "a red cup", 0, 0, 1.5, 1.0, "fraction")
    with pytest.raises(ValueError, match="expected coordinates inside the canvas"):
        apply(outside)
    (ok,) = EliGenEntity().add(clip, "a red cup", *box)
    with pytest.raises(ValueError, match="multiples of 16"):
        apply(ok, width=120)
    with pytest.raises(ValueError, match="at least one entity"):
        apply(())

    import comfy.ldm.modules.diffusionmodules.openaimodel as unet

    class Sd15:  # a MODEL whose diffusion model is ComfyUI's SD1.x UNet (a family EliGen does not run on)
        model = type("BaseModel", (), {"diffusion_model": unet.UNetModel.__new__(unet.UNetModel)})()

    with pytest.raises(ValueError, match=r"EliGen Apply: the MODEL is a UNetModel; EliGen runs on FLUX\.1"):
        apply(ok, model=Sd15())

    wide = [[torch.zeros(1, 8, 64), {}]]  # another CLIP's width
    with pytest.raises(ValueError, match="encoded \\[32, 64\\] wide"):
        EliGenApply().apply(flux, wide, glob, ok, WIDTH, HEIGHT, False)


def test_a_latent_of_another_size_is_a_clear_error_at_sampling(tiny_pipe, flux, clip) -> None:
    glob = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled("a photo of a table")]
    (entities,) = EliGenEntity().add(clip, "a red cup", 0, 0, 0.5, 1, "fraction")
    pos_c, neg_c = EliGenApply().apply(flux, glob, glob, entities, WIDTH, HEIGHT, False)
    with pytest.raises(ValueError, match="placed on a 128x96 image, the sampler runs a 96x96 latent"):
        comfy_velocity(flux, pos_c, neg_c, torch.zeros(1, 16, 12, 12))


def test_attention_that_bypasses_comfyui_s_override_is_a_clear_error(flux, clip) -> None:
    """A patch that runs a block without ComfyUI's transformer_options (so without its attention override) would
    leave that block unmasked: the sampler call stops with a message instead."""
    glob = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled("a photo of a table")]
    (entities,) = EliGenEntity().add(clip, "a red cup", 0, 0, 0.5, 1, "fraction")
    pos_c, neg_c = EliGenApply().apply(flux, glob, glob, entities, WIDTH, HEIGHT, False)

    def without_options(args, extra):
        return extra["original_block"]({**args, "transformer_options": {}})

    model = flux.clone()
    model.set_model_patch_replace(without_options, "dit", "double_block", 0)
    with pytest.raises(RuntimeError, match="3 of the model's 4 joint attentions took the regional mask"):
        comfy_velocity(model, pos_c, neg_c, torch.zeros(1, 16, HEIGHT // 8, WIDTH // 8))


def test_load_eligen_layout_gives_the_layout_s_entities_prompts_and_size(tiny_pipe, flux, clip, tmp_path,
                                                                        one_thread) -> None:
    """A layout file through Load EliGen layout -> EliGen Apply runs like the same entities given one by one."""
    import yaml
    from PIL import Image

    from eligen.pipeline.outputs import save_png

    data = {"size": [WIDTH, HEIGHT], "prompt": "a photo of a table", "negative_prompt": "dark, blurry",
            "regions_on_negative": True, "entities": [e for e, _ in ENTITIES[:3]]}
    (tmp_path / "table.yaml").write_text(yaml.safe_dump(data))
    save_png(Image.new("RGB", (WIDTH, HEIGHT)), tmp_path / "table.png", {"layout": data})
    x = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(1))
    by_hand = EliGenApply().apply(flux, clip.encode_from_tokens_scheduled(data["prompt"]),
                                  clip.encode_from_tokens_scheduled(data["negative_prompt"]),
                                  node_entities(clip, 3), WIDTH, HEIGHT, True)
    expected = comfy_velocity(flux, *by_hand, x)
    for name in ("table.yaml", "table.png"):
        entities, positive, negative, width, height, on_negative = LoadEliGenLayout().load(clip, str(tmp_path / name))
        assert [e.prompt for e in entities] == [e["prompt"] for e, _ in ENTITIES[:3]]
        assert (width, height, on_negative) == (WIDTH, HEIGHT, True)
        got = comfy_velocity(flux, *EliGenApply().apply(flux, positive, negative, entities, width, height, on_negative),
                             x)
        assert torch.equal(got, expected)

    with pytest.raises(ValueError, match="expected an existing layout file"):
        LoadEliGenLayout().load(clip, str(tmp_path / "missing.yaml"))
    save_png(Image.new("RGB", (WIDTH, HEIGHT)), tmp_path / "plain.png")
    with pytest.raises(ValueError, match=r"plain\.png: \(metadata\): expected a PNG written by `eligen generate`"):
        LoadEliGenLayout().load(clip, str(tmp_path / "plain.png"))


@pytest.mark.parametrize("family", ["flux", "qwen_image"])
@pytest.mark.parametrize("entity_tokens", ["auto", "N"])
def test_a_layout_s_entity_tokens_run_in_comfyui_as_in_eligen(request, family: str, entity_tokens: str,
                                                               tmp_path: Path, one_thread) -> None:
    """Load EliGen layout keeps the tokens of each entity prompt that the layout's `entity_tokens` keeps in eligen
    (FLUX: T5's own tokens with the end token, or the first N of the padded encoding; the negative prompt too when
    the regions are on the negative branch): one denoiser call equals eligen's velocity for the same layout."""
    import yaml

    flux = family == "flux"
    pipe = request.getfixturevalue("tiny_pipe" if flux else "tiny_qwen_pipe")
    model = request.getfixturevalue("flux" if flux else "qwen")
    whole = parse_layout(layout_data(3, True))
    encode = pipe.prompt_encoder(pipe.max_sequence_length(whole))
    counts = [encode.token_count(p) for p in [e.prompt for e in whole.entities] + [whole.negative_prompt]]
    budget = "auto" if entity_tokens == "auto" else max(counts) + 2
    data = layout_data(3, True, budget)
    (tmp_path / "layout.yaml").write_text(yaml.safe_dump(data))
    lay = parse_layout(data)
    x = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(8))
    guidance = GUIDANCE if flux else None
    positive, negative = pipe.conditionings(lay, pipe.token_regions(lay, Path(".")))
    expected = eligen_velocity(pipe, positive, negative, x, guidance)
    with_whole = eligen_velocity(pipe, *pipe.conditionings(whole, pipe.token_regions(whole, Path("."))), x, guidance)

    clip = EncoderAsClip(encode)
    entities, pos, neg, width, height, on_negative = LoadEliGenLayout().load(clip, str(tmp_path / "layout.yaml"))
    if flux:
        pos, neg = ([[c[0], {**c[1], "guidance": GUIDANCE}] for c in cond] for cond in (pos, neg))
    pos_c, neg_c = EliGenApply().apply(model, pos, neg, entities, width, height, on_negative)
    assert pos_c[0][0].shape[1] == positive.prompt_embeds.shape[1]
    assert neg_c[0][0].shape[1] == negative.prompt_embeds.shape[1]
    x_in = x if flux else x[:, :, None]
    got = comfy_velocity(model, pos_c, neg_c, x_in)
    got = got if flux else got[:, :, 0]

    err = (got - expected).abs().max().item()
    print(f"{family} entity_tokens {budget} (counts {counts}): text {pos_c[0][0].shape[1]} tokens, max err {err:.2e}, "
          f"off entity_tokens max by {(with_whole - expected).abs().max():.2e}")
    assert err < TOLERANCE  # as the denoiser-call tests above
    if flux:  # T5 pads each group to its length: keeping fewer tokens changes the result
        assert (with_whole - expected).abs().max() > 100 * TOLERANCE
    else:  # Qwen-Image's groups are at the prompt's own length already: nothing left out, as in eligen
        assert positive.prompt_embeds.shape == pipe.conditionings(whole, pipe.token_regions(whole, Path(".")))[
            0].prompt_embeds.shape

    (tmp_path / "short.yaml").write_text(yaml.safe_dump(layout_data(3, True, min(counts) - 1)))
    with pytest.raises(ValueError, match=r"short\.yaml: entities\[\d\]\.prompt: expected at most \d+ text tokens"):
        LoadEliGenLayout().load(clip, str(tmp_path / "short.yaml"))
    if not flux:  # 1024 tokens, the most a layout takes
        return
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(layout_data(3, True, encode.max_sequence_length + 1)))
    with pytest.raises(ValueError, match=r"long\.yaml: entity_tokens: expected at most"):
        LoadEliGenLayout().load(clip, str(tmp_path / "long.yaml"))


def test_the_own_tokens_of_a_prompt_in_comfyui_s_flux_tokenizer_are_eligen_s_count() -> None:
    """`entity_tokens: auto` counts a FLUX prompt's T5 tokens before the padding. Read from ComfyUI's own FLUX
    tokenizer (its T5 pads to 256), the count is eligen's (`PromptEncoder.token_count`) on the same T5 tokenizer
    files, for prompts without ComfyUI's `(text:weight)` syntax."""
    from comfy.text_encoders.flux import FluxTokenizer
    from transformers import T5TokenizerFast

    from eligen.pipeline.families.flux.encode import PromptEncoder
    from eligen_comfyui.entities import own_tokens

    comfy_tokenizer = FluxTokenizer()
    clip = SimpleNamespace(tokenizer=comfy_tokenizer)
    t5 = T5TokenizerFast.from_pretrained(str(Path(COMFYUI) / "comfy" / "text_encoders" / "t5_tokenizer"))
    eligen_count = PromptEncoder(SimpleNamespace(tokenizer_2=t5), 512).token_count
    for prompt in [e["prompt"] for e, _ in ENTITIES] + ["an old leather-bound book, lying open on a wooden table", ""]:
        tokens = comfy_tokenizer.tokenize_with_weights(prompt)
        assert len(tokens["t5xxl"][0]) == 256  # padded, as ComfyUI encodes it
        assert own_tokens(clip, tokens, 256) == (eligen_count(prompt), True)


def native_flux_lora(comfy_model, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LoRA on every linear layer, with the reference's (DiffSynth's) key names, as the EliGen LoRA."""
    from eligen.pipeline.families.flux.names import DOUBLE_BLOCK_LINEARS, GLOBAL_LINEARS, SINGLE_BLOCK_LINEARS

    weights = comfy_model.model.diffusion_model.state_dict()
    layers = [(f"double_blocks.{i}.{bfl}", f"blocks.{i}.{native}") for i in range(2)
              for bfl, native, _ in DOUBLE_BLOCK_LINEARS]
    layers += [(f"single_blocks.{j}.{bfl}", f"single_blocks.{j}.{native}") for j in range(2)
               for bfl, native, _ in SINGLE_BLOCK_LINEARS]
    layers += [(bfl, native) for bfl, native, _ in GLOBAL_LINEARS]
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for bfl, native in layers:
        out_features, in_features = weights[f"{bfl}.weight"].shape
        lora[f"{native}.lora_A.default.weight"] = torch.randn(rank, in_features, generator=generator) * 0.1
        lora[f"{native}.lora_B.default.weight"] = torch.randn(out_features, rank, generator=generator) * 0.1
    return lora


def test_the_reference_s_flux_lora_loads_in_comfyui_after_eligen_lora_convert(tiny_pipe, flux, tmp_path,
                                                                             one_thread) -> None:
    """ComfyUI's LoRA loader skips the reference's key names; `eligen lora convert` writes names it maps, and the
    LoRA then acts in ComfyUI exactly as in eligen (a denoiser call with entities, through ComfyUI's LoRA patch)."""
    import comfy.lora
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from eligen.main import app
    from eligen.pipeline.lora import apply_loras, remove_loras

    native = native_flux_lora(flux)
    save_file(native, tmp_path / "native.safetensors")
    key_map = comfy.lora.model_lora_keys_unet(flux.model, {})
    assert comfy.lora.load_lora(native, key_map) == {}  # not one layer mapped: ComfyUI ignores the file

    result = CliRunner().invoke(app, ["lora", "convert", str(tmp_path / "native.safetensors"),
                                      "-o", str(tmp_path / "comfy.safetensors")])
    assert result.exit_code == 0, result.output
    converted = load_file(tmp_path / "comfy.safetensors")
    patches = comfy.lora.load_lora(converted, key_map)
    assert len(patches) == len(native) // 2  # every layer mapped
    with_lora = flux.clone()
    assert len(with_lora.add_patches(patches, 1.0)) == len(patches)

    lay = layout(3, True)
    positive, negative = tiny_pipe.conditionings(lay, tiny_pipe.token_regions(lay, Path(".")))
    x = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(5))
    before = eligen_velocity(tiny_pipe, positive, negative, x, GUIDANCE)
    apply_loras(tiny_pipe.transformer, [(tiny_pipe.family.load_lora(tmp_path / "native.safetensors"), 1.0)])
    try:
        expected = eligen_velocity(tiny_pipe, positive, negative, x, GUIDANCE)
    finally:
        remove_loras(tiny_pipe.transformer)

    clip = EncoderAsClip(tiny_pipe.prompt_encoder(tiny_pipe.max_sequence_length(lay)))
    glob = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.prompt)]
    neg = [[c[0], {**c[1], "guidance": GUIDANCE}] for c in clip.encode_from_tokens_scheduled(lay.negative_prompt)]
    conditioning = EliGenApply().apply(flux, glob, neg, node_entities(clip, 3), WIDTH, HEIGHT, True)
    got = comfy_velocity(with_lora, *conditioning, x)  # a LoRA loaded after EliGen Apply: the hook still applies
    err = (got - expected).abs().max().item()
    moved = (expected - before).abs().max()
    print(f"FLUX with the converted LoRA: max err {err:.2e}, the LoRA moves v by {moved:.2e}")
    assert err < TOLERANCE
    assert moved > 100 * TOLERANCE


def test_a_qwen_image_eligen_lora_loads_in_comfyui_as_it_is(tiny_qwen_pipe, qwen, tmp_path, one_thread) -> None:
    """The reference's Qwen-Image LoRAs name diffusers' modules (peft keys with `.default`), which ComfyUI's loader
    maps for Qwen-Image: the same file acts in ComfyUI as in eligen (a denoiser call with entities)."""
    import comfy.lora
    from safetensors.torch import save_file

    from eligen.pipeline.lora import apply_loras, remove_loras

    pipe = tiny_qwen_pipe
    targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
               "attn.to_out.0", "attn.to_add_out", "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1")
    weights = qwen.model.diffusion_model.state_dict()
    generator = torch.Generator().manual_seed(3)
    lora = {}
    for i in range(len(qwen.model.diffusion_model.transformer_blocks)):
        for target in targets:
            out_features, in_features = weights[f"transformer_blocks.{i}.{target}.weight"].shape
            key = f"transformer_blocks.{i}.{target}"
            lora[f"{key}.lora_A.default.weight"] = torch.randn(4, in_features, generator=generator) * 0.1
            lora[f"{key}.lora_B.default.weight"] = torch.randn(out_features, 4, generator=generator) * 0.1
    save_file(lora, tmp_path / "qwen-lora.safetensors")
    patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(qwen.model, {}))
    assert len(patches) == len(lora) // 2  # every layer mapped, no conversion
    with_lora = qwen.clone()
    with_lora.add_patches(patches, 1.0)

    lay = layout(3)
    positive, negative = pipe.conditionings(lay, pipe.token_regions(lay, Path(".")))
    x = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(6))
    before = eligen_velocity(pipe, positive, negative, x, None)
    apply_loras(pipe.transformer, [(pipe.family.load_lora(tmp_path / "qwen-lora.safetensors"), 1.0)])
    try:
        expected = eligen_velocity(pipe, positive, negative, x, None)
    finally:
        remove_loras(pipe.transformer)
    clip = EncoderAsClip(pipe.prompt_encoder(pipe.max_sequence_length(lay)))
    pos_c, neg_c = EliGenApply().apply(with_lora, clip.encode_from_tokens_scheduled(lay.prompt),
                                       clip.encode_from_tokens_scheduled(lay.negative_prompt),
                                       node_entities(clip, 3), WIDTH, HEIGHT, False)
    got = comfy_velocity(with_lora, pos_c, neg_c, x[:, :, None])[:, :, 0]
    err, moved = (got - expected).abs().max().item(), (expected - before).abs().max()
    print(f"Qwen-Image with a LoRA: max err {err:.2e}, the LoRA moves v by {moved:.2e}")
    assert err < TOLERANCE
    assert moved > 100 * TOLERANCE


def test_lora_convert_refuses_files_comfyui_reads_already_and_unknown_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from eligen.main import app

    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(24, 2)},
              tmp_path / "k.safetensors")
    save_file({"blocks.0.attn.a_to_qkv.lora_A.weight": torch.zeros(2, 8),
               "blocks.0.attn.a_to_qkv.lora_B.weight": torch.zeros(24, 2),
               "blocks.0.attn.nonsense.lora_A.weight": torch.zeros(2, 8)}, tmp_path / "bad.safetensors")
    runner = CliRunner()

    def convert(name: str):
        return runner.invoke(app, ["lora", "convert", str(tmp_path / name), "-o", str(tmp_path / "o.safetensors")])

    kohya = convert("k.safetensors")
    assert kohya.exit_code == 2 and "kohya names, which ComfyUI's LoRA loader reads as they are" in kohya.output
    bad = convert("bad.safetensors")
    assert bad.exit_code == 2 and "blocks.0.attn.nonsense.lora_A.weight" in bad.output
    missing = convert("none.safetensors")
    assert missing.exit_code == 2 and "no such LoRA file" in missing.output
    assert not (tmp_path / "o.safetensors").exists()
    (tmp_path / "o.safetensors").write_bytes(b"mine")
    save_file({"blocks.0.attn.a_to_qkv.lora_A.weight": torch.zeros(2, 8),
               "blocks.0.attn.a_to_qkv.lora_B.weight": torch.zeros(24, 2)}, tmp_path / "n.safetensors")
    kept = convert("n.safetensors")
    assert kept.exit_code == 1 and "exists" in kept.output and (tmp_path / "o.safetensors").read_bytes() == b"mine"


@pytest.mark.parametrize("workflow", ["eligen-flux.json", "eligen-qwen-image.json"])
def test_example_workflows_pass_comfyui_s_prompt_validation(comfy_nodes, workflow: str, tmp_path: Path) -> None:
    """The example workflows (API format) through ComfyUI's own validator: every node exists, every link joins an
    output to an input of the same type, every value fits its input. The model files are empty placeholders with
    the workflows' names (nothing is loaded or run)."""
    import json

    import execution
    import folder_paths

    graph = json.loads((ROOT / "comfyui-workflows" / workflow).read_text())
    names = {"unet_name": "diffusion_models", "clip_name": "text_encoders", "clip_name1": "text_encoders",
             "clip_name2": "text_encoders", "vae_name": "vae", "lora_name": "loras"}
    for node in graph.values():
        for key, folder in names.items():
            if key in node["inputs"]:
                (tmp_path / folder).mkdir(exist_ok=True)
                (tmp_path / folder / node["inputs"][key]).touch()
                folder_paths.add_model_folder_path(folder, str(tmp_path / folder))
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", graph, None))
    assert valid, (error, node_errors)
    assert outputs == [max(graph, key=int)]  # the SaveImage node
