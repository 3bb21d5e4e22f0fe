"""The per-branch conditioning of the transformer: prompt groups joined with their regional mask (paper Eq. 4)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .regional_attention import padded_text, regional_attention_mask

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from .attention_backends import SplitMask

Encode = Callable[[str], tuple[torch.Tensor, torch.Tensor]]  # prompt -> (sequence embeddings, pooled vector)


@dataclass(frozen=True)
class Conditioning:
    """Everything one transformer pass is conditioned on, built once per generation."""

    prompt_embeds: torch.Tensor  # (B, L, D): [entity_1 | ... | entity_k | global] T5 embeddings
    pooled: torch.Tensor  # (B, D_pooled): CLIP pooled vector of the global prompt
    text_ids: torch.Tensor  # (L, 3): zeros over the whole text length
    # (B, 1, N, N) additive regional mask (the sampler may turn it into a sparse form), None for plain FLUX
    attention_mask: torch.Tensor | BlockMask | SplitMask | None


def conditioning(
    encode: Encode, prompt: str, entity_prompts: Sequence[str], token_regions: torch.Tensor | None,
    entity_lengths: Sequence[int] | None = None,
) -> Conditioning:
    """Concatenate `[entities..., global]` and build the regional mask (plain FLUX without entities).

    `token_regions` is (k, n_image) bool, one row per entity prompt, or None when k = 0. `entity_lengths` keeps
    the first tokens of each entity's T5 encoding (default: all max_sequence_length of them, as the reference).
    T5 runs on the padded prompt either way (FLUX runs it without an attention mask, so the padding changes the
    embeddings of the real tokens): the tokens kept are exactly the reference's.
    """
    t5, pooled = encode(prompt)
    if not entity_prompts:
        text_ids = torch.zeros(t5.shape[1], 3, device=t5.device, dtype=t5.dtype)
        return Conditioning(t5, pooled, text_ids, None)
    lengths = entity_lengths or [t5.shape[1]] * len(entity_prompts)
    groups = [encode(p)[0][:, :n] for p, n in zip(entity_prompts, lengths, strict=True)] + [t5]
    embeds = torch.cat(groups, dim=1)
    text_ids = torch.zeros(embeds.shape[1], 3, device=t5.device, dtype=t5.dtype)
    assert token_regions is not None and token_regions.shape[0] == len(entity_prompts)
    mask = regional_attention_mask(token_regions, [g.shape[1] for g in groups], t5.dtype, t5.device)
    return Conditioning(embeds, pooled, text_ids, mask)


def batched(branches: Sequence[Conditioning], n_image: int) -> Conditioning:
    """The branches (e.g. CFG's positive and negative) as one batch: each text padded with masked tokens to the
    longest one. The padding is invisible to the real tokens, so every branch's result is unchanged."""
    length = max(c.prompt_embeds.shape[1] for c in branches)
    embeds = torch.cat([torch.nn.functional.pad(c.prompt_embeds, (0, 0, 0, length - c.prompt_embeds.shape[1]))
                        for c in branches])
    pooled = torch.cat([c.pooled for c in branches])
    text_ids = torch.zeros(length, 3, device=embeds.device, dtype=branches[0].text_ids.dtype)
    if all(c.attention_mask is None and c.prompt_embeds.shape[1] == length for c in branches):
        return Conditioning(embeds, pooled, text_ids, None)
    masks = [padded_text(c.attention_mask, c.prompt_embeds.shape[1], length, n_image, embeds.dtype, embeds.device)
             for c in branches]
    return Conditioning(embeds, pooled, text_ids, torch.cat(masks))
