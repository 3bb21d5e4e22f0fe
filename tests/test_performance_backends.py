"""The sparse forms of the regional mask (split, flex) and batched CFG give the dense, unbatched result."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from eligen.pipeline.attention_backends import (
    AUTO_SPLIT_MIN_TOKENS,
    SplitMask,
    attention_form,
    block_mask,
    chosen_form,
    split_attention,
    split_mask,
)
from eligen.pipeline.conditioning import Conditioning, batched
from eligen.pipeline.families.flux import family as flux_family
from eligen.pipeline.families.flux.attention import RegionalAttnProcessor, use_regional_processor
from eligen.pipeline.families.flux.family import FluxFamily
from eligen.pipeline.families.flux.transformer import RotaryCache, image_ids, predict
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_layout
from eligen.pipeline.regional_attention import padded_text, regional_attention_mask
from eligen.pipeline.sampler import get_noise, pack

WIDTH, HEIGHT = 192, 128
N_IMAGE = (WIDTH // 16) * (HEIGHT // 16)
ENTITIES = [{"prompt": "a red cup", "box": [0, 0, 100, 100]},
            {"prompt": "an old book on the table", "polygon": [[60, 20], [190, 30], [150, 120]]},
            {"prompt": "a blue hat", "box": [120, 0, 192, 64]}]


def _layout(**fields: object):
    return parse_layout({"size": [WIDTH, HEIGHT], "prompt": "a photo of a table with a cup, a book and a hat",
                         "negative_prompt": "dark, low quality", "steps": 3, "cfg": 3.0, "schedule": "diffsynth",
                         "seed": 1, "entities": ENTITIES, **fields})


@pytest.fixture(scope="module")
def pipe(tiny_pipe: EligenPipeline) -> EligenPipeline:
    """The tiny pipeline with every transformer weight perturbed (no constant norm scale hides a mistake)."""
    transformer = copy.deepcopy(tiny_pipe.transformer)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return EligenPipeline(FluxFamily(FluxPipeline(**{**tiny_pipe.family.pipe.components, "transformer": transformer})),
                          tiny_pipe.model)


def _random_allowed(generator: torch.Generator, n: int, groups: int) -> torch.Tensor:
    """An arbitrary (N, N) mask with rows drawn from a few patterns, some rows fully random; no empty row."""
    patterns = torch.rand(groups, n, generator=generator) < 0.4
    allowed = patterns[torch.randint(groups, (n,), generator=generator)]
    allowed[:: n // 5] = torch.rand(len(allowed[:: n // 5]), n, generator=generator) < 0.5
    allowed[torch.arange(n), torch.randint(n, (n,), generator=generator)] = True
    return allowed


def _rebuilt(pieces, n: int) -> torch.Tensor:
    """The (N, N) mask a `Pieces` stands for, checking that every row is covered once (core rows may add keys)."""
    positions = torch.arange(n)
    rebuilt = torch.zeros(n, n, dtype=torch.bool)
    in_core = torch.zeros(n, dtype=torch.bool)
    if pieces.core is not None:
        rows, keys = pieces.core
        in_core[rows] = True
        rebuilt[positions[rows][:, None], positions[keys][None, :]] = True
    covered = in_core.long()
    for rows, keys, merge in pieces.pieces:
        assert bool(in_core[rows].all()) == merge and bool(in_core[rows].any()) == merge
        covered[rows] += 0 if merge else 1
        rebuilt[positions[rows][:, None], positions[keys][None, :]] = True
    assert (covered == 1).all()
    return rebuilt


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("core", [True, False])
def test_split_mask_stands_for_exactly_the_mask(seed: int, core: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    n = 96
    allowed = torch.stack([_random_allowed(generator, n, 3 + seed) for _ in range(2)])
    form = split_mask(allowed, core=core)
    assert len(form.elements) == 2
    for element, expected in zip(form.elements, allowed, strict=True):
        assert (element.core is not None) <= core
        assert torch.equal(_rebuilt(element, n), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_attention_equals_masked_sdpa(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    regions = torch.rand(3, 64, generator=generator) < 0.4
    regions[:, 0] = True
    mask = regional_attention_mask(regions, [5, 9, 3, 7], torch.float32, "cpu")
    allowed = torch.cat([mask[:, 0] == 0, _random_allowed(generator, mask.shape[-1], 4)[None]])
    n = allowed.shape[-1]
    query, key, value = (torch.randn(2, n, 2, 16, generator=generator).to(dtype) for _ in range(3))
    additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))[:, None]
    dense = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=additive).transpose(1, 2)
    form = split_mask(allowed)
    assert form.elements[0].core is not None  # the image tokens and the global prompt: one call, the rest merged
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert (split_attention(query, key, value, form) - dense).abs().max().item() <= tolerance


def _velocity(pipe: EligenPipeline, cond: Conditioning, attention: str) -> torch.Tensor:
    transformer = pipe.transformer
    x = pack(get_noise(5, 16, HEIGHT // 8, WIDTH // 8, torch.float32))
    ids = image_ids(HEIGHT // 8, WIDTH // 8, x.device, x.dtype)
    sparse = replace(cond, attention_mask=attention_form(cond.attention_mask, attention))
    with torch.inference_mode():
        return predict(transformer, x, torch.tensor(417.0), sparse, ids, torch.full((1,), 3.5))


@pytest.mark.parametrize("entity_tokens", ["max", "auto"])
def test_split_forward_equals_dense(pipe: EligenPipeline, entity_tokens: str) -> None:
    layout = _layout(entity_tokens=entity_tokens)
    positive, _ = pipe.conditionings(layout, pipe.token_regions(layout, Path(".")))
    dense = _velocity(pipe, positive, "dense")
    assert (_velocity(pipe, positive, "split") - dense).abs().max().item() <= 1e-5 * dense.abs().max().item()
    plain = replace(positive, attention_mask=None)
    assert (_velocity(pipe, plain, "dense") - dense).abs().max().item() > 1e-3  # the mask does act


def test_dense_masks_run_unchanged_under_the_regional_processor(pipe: EligenPipeline) -> None:
    layout = _layout()
    positive, negative = pipe.conditionings(layout, pipe.token_regions(layout, Path(".")))
    before = [_velocity(pipe, c, "dense") for c in (positive, negative)]
    transformer = copy.deepcopy(pipe.transformer)
    use_regional_processor(transformer)
    assert all(isinstance(p, RegionalAttnProcessor) for p in transformer.attn_processors.values())
    swapped = EligenPipeline(FluxFamily(FluxPipeline(**{**pipe.family.pipe.components, "transformer": transformer})),
                          pipe.model)
    after = [_velocity(swapped, c, "dense") for c in (positive, negative)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_padded_text_hides_the_padding_and_keeps_the_rest() -> None:
    regions = torch.tensor([[True, False, True, False, False, True]])
    mask = regional_attention_mask(regions, [2, 3], torch.float32, "cpu")
    padded = padded_text(mask, 5, 8, 6, torch.float32, "cpu")[0, 0] == 0
    real = torch.tensor([0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13])
    assert torch.equal(padded[real[:, None], real[None, :]], mask[0, 0] == 0)
    assert not padded[:, 5:8][real].any()  # no real token sees a pad
    assert padded[5:8, 5:8].all() and not padded[5:8][:, real].any()  # pads see each other only
    plain = padded_text(None, 5, 8, 6, torch.float32, "cpu")[0, 0] == 0
    assert plain[real[:, None], real[None, :]].all()


@pytest.mark.parametrize("on_negative", [False, True], ids=["plain_negative", "regions_on_negative"])
@pytest.mark.parametrize("entity_tokens", ["max", "auto"])
def test_batched_cfg_equals_two_passes(pipe: EligenPipeline, on_negative: bool, entity_tokens: str) -> None:
    """One batched call equals the two calls it replaces up to the rounding of the (B, D) modulation GEMMs (a
    batch of one takes a matrix-vector kernel); every (B, N, D) product and the attention give the same bits."""
    layout = _layout(regions_on_negative=on_negative, entity_tokens=entity_tokens)
    positive, negative = pipe.prepare(layout)
    assert negative is not None
    separate = pipe.sample(layout, positive, negative, 1)
    together = pipe.sample(layout, positive, negative, 1, batch_cfg=True)
    assert (together - separate).abs().max().item() <= 1e-5 * separate.abs().max().item()
    both = batched([positive, negative], N_IMAGE)
    assert both.prompt_embeds.shape[0] == 2 and both.attention_mask is not None
    assert both.attention_mask.shape[0] == 2
    for attention in ("split", "dense"):
        split = pipe.sample(layout, positive, negative, 1, attention=attention, batch_cfg=True)
        assert (split - separate).abs().max().item() <= 1e-5 * separate.abs().max().item()


def test_batched_plain_branches_need_no_mask(pipe: EligenPipeline) -> None:
    layout = _layout(entities=[])
    positive, negative = pipe.conditionings(layout, np.zeros((0, N_IMAGE), dtype=bool))
    assert negative is not None
    assert batched([positive, negative], N_IMAGE).attention_mask is None
    separate = pipe.sample(layout, positive, negative, 2)
    together = pipe.sample(layout, positive, negative, 2, batch_cfg=True)
    assert (together - separate).abs().max().item() <= 1e-5 * separate.abs().max().item()


def test_inpainting_fusion_with_split_and_batched_cfg(pipe: EligenPipeline) -> None:
    layout = _layout()
    positive, negative = pipe.prepare(layout)
    z_init = pack(get_noise(9, 16, HEIGHT // 8, WIDTH // 8, torch.float32))

    def fuse(v: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.where(torch.arange(x.shape[1])[None, :, None] < 20, v, (x - z_init) / sigma)

    separate = pipe.sample(layout, positive, negative, 1, fuse_positive=fuse, fuse_negative=fuse)
    together = pipe.sample(layout, positive, negative, 1, fuse_positive=fuse, fuse_negative=fuse,
                           attention="split", batch_cfg=True)
    assert (together - separate).abs().max().item() <= 1e-5 * separate.abs().max().item()


def test_flex_compiles_once_per_shape_and_equals_dense(pipe: EligenPipeline) -> None:
    """FlexAttention compiled on the CPU (forward only): a second layout of the same shape reuses the kernel."""
    layout = _layout(entity_tokens="auto")
    regions = pipe.token_regions(layout, Path("."))
    positive, _ = pipe.conditionings(layout, regions)
    dense = _velocity(pipe, positive, "dense")
    assert (_velocity(pipe, positive, "flex") - dense).abs().max().item() <= 1e-5 * dense.abs().max().item()
    moved = np.roll(regions, 7, axis=1)  # other regions, the same token counts
    other, _ = pipe.conditionings(layout, moved)
    with torch._dynamo.config.patch(error_on_recompile=True):
        flex = _velocity(pipe, other, "flex")
    assert (flex - _velocity(pipe, other, "dense")).abs().max().item() <= 1e-5 * dense.abs().max().item()


def test_a_backend_without_masks_still_runs_split(pipe: EligenPipeline) -> None:
    """diffusers' math backend stands in for a backend chosen with `set_attention_backend`: split passes no mask."""
    layout = _layout()
    positive, _ = pipe.conditionings(layout, pipe.token_regions(layout, Path(".")))
    transformer: FluxTransformer2DModel = copy.deepcopy(pipe.transformer)
    use_regional_processor(transformer)
    for processor in transformer.attn_processors.values():
        processor._attention_backend = "_native_math"
    swapped = EligenPipeline(FluxFamily(FluxPipeline(**{**pipe.family.pipe.components, "transformer": transformer})),
                          pipe.model)
    dense = _velocity(pipe, positive, "dense")
    assert (_velocity(swapped, positive, "split") - dense).abs().max().item() <= 1e-5 * dense.abs().max().item()


def test_flex_that_cannot_compile_names_the_alternative() -> None:
    allowed = torch.ones(1, 136, 136, dtype=torch.bool)
    query = torch.randn(1, 136, 2, 8)
    no_compiler = torch._inductor.config.patch({"cpp.cxx": ("/nonexistent-compiler",), "fx_graph_cache": False})
    with no_compiler, pytest.raises(RuntimeError, match=r"could not be compiled for cpu.*attention: split"):
        RegionalAttnProcessor().flex_attention(query, query, query, block_mask(allowed))


def test_auto_runs_split_from_the_threshold_on_and_dense_below() -> None:
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert chosen_form("auto", AUTO_SPLIT_MIN_TOKENS, cpu) == "split"
    assert chosen_form("auto", AUTO_SPLIT_MIN_TOKENS, cuda) == "split"
    assert chosen_form("auto", AUTO_SPLIT_MIN_TOKENS - 1, cpu) == "dense"  # tiny shapes: one dense call is faster
    assert chosen_form("auto", 10**6, mps) == "dense"  # not measured there: the exact form
    assert [chosen_form(a, 10, cpu) for a in ("dense", "split", "flex")] == ["dense", "split", "flex"]
    assert parse_layout({"prompt": "p"}).attention == "auto"  # the default
    mask = regional_attention_mask(torch.ones(1, AUTO_SPLIT_MIN_TOKENS, dtype=torch.bool), [4, 4], torch.float32, "cpu")
    assert isinstance(attention_form(mask, "auto"), SplitMask)
    small = regional_attention_mask(torch.ones(1, 16, dtype=torch.bool), [4, 4], torch.float32, "cpu")
    assert attention_form(small, "auto") is small


def test_rotary_tables_are_computed_once_per_generation(pipe: EligenPipeline, monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    layout = _layout()
    positive, negative = pipe.conditionings(layout, pipe.token_regions(layout, Path(".")))
    transformer = pipe.transformer
    if isinstance(transformer.pos_embed, RotaryCache):
        transformer.pos_embed = transformer.pos_embed.pos_embed
    calls = []
    original = type(transformer.pos_embed).forward

    def counting(module: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(ids.shape)
        return original(module, ids)

    monkeypatch.setattr(type(transformer.pos_embed), "forward", counting)
    with monkeypatch.context() as uncached:
        uncached.setattr(flux_family, "use_rotary_cache", lambda transformer: None)
        every_forward = pipe.sample(layout, positive, negative, 3)
    assert len(calls) == 2 * layout.steps  # diffusers: once in every forward (CFG: two per step)
    calls.clear()
    assert torch.equal(pipe.sample(layout, positive, negative, 3), every_forward)  # the same tables, bit for bit
    assert isinstance(transformer.pos_embed, RotaryCache) and len(calls) == 2  # once per branch's text length
