"""The regional attention mask: the rule table cell by cell, and what it does inside real FLUX blocks."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

from eligen.pipeline.regional_attention import allowed_attention, regional_attention_mask


def _expected(query: tuple[str, int], key: tuple[str, int], regions: torch.Tensor) -> bool:
    """The rule table of `regional_attention` (paper Eq. 4-5), written per cell. A token is ('entity', i),
    ('global', 0) or ('image', j)."""
    (qk, qi), (kk, ki) = query, key
    if qk == "image" and kk == "image":
        return True
    if qk != "image" and kk != "image":
        return (qk, qi) == (kk, ki)  # a prompt group sees only itself
    prompt, image = ((qk, qi), ki) if kk == "image" else ((kk, ki), qi)
    return prompt[0] == "global" or bool(regions[prompt[1], image])


@pytest.mark.parametrize("lengths", [[3, 2, 4], [5, 5, 5, 5], [2, 7]])
def test_mask_follows_rule_table_cell_by_cell(lengths: list[int]) -> None:
    generator = torch.Generator().manual_seed(len(lengths))
    k, n_image = len(lengths) - 1, 12
    regions = torch.rand(k, n_image, generator=generator) > 0.5
    regions[:, 0] = True  # overlapping regions are allowed
    tokens = [("entity", i) for i, n in enumerate(lengths[:-1]) for _ in range(n)]
    tokens += [("global", 0)] * lengths[-1] + [("image", j) for j in range(n_image)]
    allowed = allowed_attention(regions, lengths)
    assert allowed.shape == (len(tokens), len(tokens))
    for r, query in enumerate(tokens):
        for c, key in enumerate(tokens):
            assert bool(allowed[r, c]) == _expected(query, key, regions), (query, key)
    assert allowed.any(dim=1).all(), "no row may be fully masked"


def test_additive_mask_is_4d_zero_or_minus_inf() -> None:
    regions = torch.tensor([[True, False, False, True]])
    mask = regional_attention_mask(regions, [2, 3], torch.float32, "cpu")
    allowed = allowed_attention(regions, [2, 3])
    assert mask.shape == (1, 1, 9, 9)
    assert torch.equal(mask[0, 0] == 0, allowed)
    assert torch.isneginf(mask[0, 0][~allowed]).all()


def test_wrong_group_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="prompt groups"):
        allowed_attention(torch.ones(2, 4, dtype=torch.bool), [3, 3])


def _tiny_transformer(single: bool) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=0 if single else 1, num_single_layers=1 if single else 0,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=False, axes_dims_rope=(4, 6, 6),
    ).eval()


@pytest.mark.parametrize("single", [False, True], ids=["dual-stream", "single-stream"])
def test_perturbing_an_entity_prompt_stays_in_its_region(single: bool) -> None:
    """In one block, entity 0's prompt reaches only region 0's image tokens and its own group."""
    model = _tiny_transformer(single)
    block = model.single_transformer_blocks[0] if single else model.transformer_blocks[0]
    lengths, n_image, dim = [4, 3, 5], 16, 32
    regions = torch.zeros(2, n_image, dtype=torch.bool)
    regions[0, :6] = True
    regions[1, 4:11] = True  # overlaps region 0 on tokens 4 and 5
    mask = regional_attention_mask(regions, lengths, torch.float32, "cpu")
    generator = torch.Generator().manual_seed(1)
    text = torch.randn(1, sum(lengths), dim, generator=generator)
    image = torch.randn(1, n_image, dim, generator=generator)
    temb = torch.randn(1, dim, generator=generator)
    ids = torch.cat([torch.zeros(sum(lengths), 3), torch.rand(n_image, 3, generator=generator) * 4])
    rotary = model.pos_embed(ids)

    def run(txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            txt_out, img_out = block(image, txt, temb, image_rotary_emb=rotary,
                                     joint_attention_kwargs={"attention_mask": mask})
        return txt_out, img_out

    base_txt, base_img = run(text)
    perturbed = text.clone()
    perturbed[:, : lengths[0]] += torch.randn(1, lengths[0], dim, generator=generator)
    new_txt, new_img = run(perturbed)

    img_change = (new_img - base_img).abs().amax(dim=-1)[0]
    assert torch.all(img_change[~regions[0]] == 0), "image tokens outside region 0 changed"
    assert torch.all(img_change[regions[0]] > 0), "image tokens inside region 0 did not change"
    txt_change = (new_txt - base_txt).abs().amax(dim=-1)[0]
    assert torch.all(txt_change[lengths[0]:] == 0), "another prompt group changed"
    assert torch.all(txt_change[: lengths[0]] > 0)
