"""Generation on the tiny model: parity with diffusers' FluxPipeline and the effect of entities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_layout
from eligen.pipeline.render import as_recorded
from eligen.pipeline.sampler import diffsynth_schedule, flux_schedule, pack, unpack

SIZE = [128, 128]


def _layout(**fields):
    return parse_layout({"size": SIZE, "steps": 3, "prompt": "a cat on a sofa", **fields})


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_no_entities_equals_diffusers_flux_pipeline(tiny_model: Path, tiny_pipe: EligenPipeline, cfg: float) -> None:
    layout = _layout(cfg=cfg, guidance=3.5, negative_prompt="blurry, low quality", model=str(tiny_model))
    positive, negative = tiny_pipe.conditionings(layout, np.zeros((0, 64), dtype=bool))
    ours = tiny_pipe.sample(layout, positive, negative, seed=7)

    reference = FluxPipeline.from_pretrained(tiny_model, dtype=torch.float32)
    theirs = reference(
        prompt=layout.prompt, negative_prompt=layout.negative_prompt, true_cfg_scale=cfg, guidance_scale=3.5,
        height=SIZE[1], width=SIZE[0], num_inference_steps=3, max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(7), output_type="latent",
    ).images
    assert torch.equal(ours, theirs)

    image = np.asarray(tiny_pipe.decode(ours, layout))
    expected = reference(
        prompt=layout.prompt, negative_prompt=layout.negative_prompt, true_cfg_scale=cfg, guidance_scale=3.5,
        height=SIZE[1], width=SIZE[0], num_inference_steps=3, max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(7), output_type="pil",
    ).images[0]
    assert np.array_equal(image, np.asarray(expected))


def test_entities_change_the_image_and_seeds_reproduce(tiny_pipe: EligenPipeline) -> None:
    plain = _layout(seed=3)
    regional = _layout(seed=3, entities=[{"prompt": "a black cat", "box": [0, 0, 64, 128]}])
    a = np.asarray(tiny_pipe.generate(plain, [3])[0])
    b, b_again, other_seed = (np.asarray(im) for im in tiny_pipe.generate(regional, [3, 3, 4]))
    assert a.shape == (128, 128, 3)
    assert not np.array_equal(a, b)
    assert np.array_equal(b, b_again)
    assert not np.array_equal(b, other_seed)


def test_conditioning_sequence_order_and_mask(tiny_pipe: EligenPipeline) -> None:
    layout = _layout(entities=[{"prompt": "left thing", "box": [0, 0, 64, 128]},
                               {"prompt": "right thing", "box": [64, 0, 128, 128]}],
                     negative_prompt="bad")
    regions = tiny_pipe.token_regions(layout, Path("."))
    positive, negative = tiny_pipe.conditionings(layout, regions)
    with torch.no_grad():
        t5 = {p: tiny_pipe.family.pipe.encode_prompt(p, None, max_sequence_length=32)[0] for p in
              ["left thing", "right thing", "a cat on a sofa", "bad"]}
    expected = torch.cat([t5["left thing"], t5["right thing"], t5["a cat on a sofa"]], dim=1)
    assert torch.equal(positive.prompt_embeds, expected)
    assert torch.equal(positive.text_ids, torch.zeros(96, 3))
    assert positive.attention_mask.shape == (1, 1, 96 + 64, 96 + 64)
    assert negative.attention_mask is None and torch.equal(negative.prompt_embeds, t5["bad"])

    carried = tiny_pipe.conditionings(layout.model_copy(update={"regions_on_negative": True}), regions)[1]
    assert torch.equal(carried.prompt_embeds, torch.cat([t5["bad"]] * 3, dim=1))
    assert torch.equal(carried.attention_mask, positive.attention_mask)


def test_cfg_one_skips_the_negative_branch(tiny_pipe: EligenPipeline) -> None:
    _, negative = tiny_pipe.conditionings(_layout(cfg=1.0), np.zeros((0, 64), dtype=bool))
    assert negative is None


def test_model_without_embedded_guidance(tmp_path: Path) -> None:
    from eligen.pipeline.shapes.tiny_flux import build_tiny_flux

    folder = build_tiny_flux(tmp_path / "schnell-like", guidance_embeds=False)
    pipe = EligenPipeline.from_pretrained(str(folder), device="cpu", dtype="fp32")
    layout = _layout(entities=[{"prompt": "a dog", "box": [32, 32, 96, 96]}], cfg=1.0)
    image = pipe.generate(layout, [0])[0]
    assert image.size == (128, 128)


def test_schedules() -> None:
    sigmas, timesteps = diffsynth_schedule(50)
    assert sigmas.shape == (51,) and timesteps.shape == (50,)
    s = torch.linspace(1.0, 0.003 / 1.002, 50)
    assert torch.allclose(sigmas[:-1], 3 * s / (1 + 2 * s)) and sigmas[-1] == 0
    config = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
              "base_image_seq_len": 256, "max_image_seq_len": 4096}
    flux_sigmas, _ = flux_schedule(50, 4096, config)
    assert flux_sigmas[0] == 1.0 and flux_sigmas[-1] == 0
    # at 1024^2 (4096 tokens) the two schedules stay close (measured max gap 0.052)
    assert (flux_sigmas - sigmas).abs().max() < 0.06


def test_pack_unpack_roundtrip() -> None:
    latents = torch.randn(1, 16, 8, 12)
    tokens = pack(latents)
    assert tokens.shape == (1, 24, 64)
    assert torch.equal(unpack(tokens, 8, 12), latents)
    assert torch.equal(tokens[0, 1, :4], latents[0, 0, 0:2, 2:4].reshape(-1))


@pytest.mark.parametrize("config", [
    {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
     "max_image_seq_len": 4096, "shift": 3.0},  # FLUX.1-dev
    {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 0.9, "base_image_seq_len": 256,
     "max_image_seq_len": 8192, "shift": 1.0, "shift_terminal": 0.02, "time_shift_type": "exponential"},  # Qwen-Image
    {"use_dynamic_shifting": True, "time_shift_type": "linear", "base_shift": 0.5, "max_shift": 1.15},
    {"use_dynamic_shifting": False, "shift": 3.0},
])
@pytest.mark.parametrize(("steps", "tokens"), [(2, 16), (28, 1024), (50, 4096), (40, 6000)])
def test_the_model_schedule_is_diffusers_bit_for_bit(config: dict, steps: int, tokens: int) -> None:
    """`flux_schedule` computes the scheduler's sigmas itself; they equal diffusers' FlowMatchEulerDiscreteScheduler
    given the same sigmas and mu, as FluxPipeline and QwenImagePipeline call it."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    mu = calculate_shift(tokens, scheduler.config.base_image_seq_len, scheduler.config.max_image_seq_len,
                         scheduler.config.base_shift, scheduler.config.max_shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    sigmas, timesteps = flux_schedule(steps, tokens, dict(scheduler.config))
    assert torch.equal(sigmas, scheduler.sigmas) and torch.equal(timesteps, scheduler.timesteps)


@pytest.mark.parametrize(("schedule", "flux", "qwen"), [("scheduler", "scheduler", "scheduler"),
                                                         ("shift3", "shift3", "shift3"),
                                                         ("reference", "shift3", "scheduler"),
                                                         ("flux", "scheduler", "scheduler"),
                                                         ("diffsynth", "shift3", "scheduler")])
def test_a_layout_schedule_is_the_samplers_per_family(tiny_pipe, tiny_qwen_pipe, schedule: str, flux: str,
                                                      qwen: str) -> None:
    """`reference` (older name `diffsynth`) is the family's reference schedule; the others are what they name."""
    layout = parse_layout({"prompt": "a", "schedule": schedule})
    assert (tiny_pipe.schedule(layout), tiny_qwen_pipe.schedule(layout)) == (flux, qwen)


@pytest.mark.parametrize(("schedule", "recorded"), [("scheduler", "flux"), ("reference", "diffsynth"),
                                                    ("shift3", "shift3")])
def test_png_metadata_records_a_schedule_under_its_older_name(schedule: str, recorded: str) -> None:
    """Older eligen reads the metadata (it knows `flux` and `diffsynth`), and this one reads it back unchanged."""
    layout = parse_layout({"prompt": "a", "schedule": schedule})
    data = as_recorded(layout)
    assert data["schedule"] == recorded
    assert parse_layout(data) == layout
