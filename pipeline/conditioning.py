"""The per-branch conditioning of the transformer: prompt groups joined with their regional mask (paper Eq. 4)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .adapter_input import AdapterInput, batched_adapter_input
from .entity_lora import LoraTokens, batched_tokens
from .regional_attention import padded_text, regional_attention_mask

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from .attention_backends import SplitMask
    from .families.base import PromptEncoder


@dataclass(frozen=True)
class Conditioning:
    """Everything one transformer pass is conditioned on, built once per generation."""

    prompt_embeds: torch.Tensor  # (B, L, D): [entity_1 | ... | entity_k | global] text embeddings
    pooled: torch.Tensor | None  # (B, D_pooled): the global prompt's pooled vector (FLUX: CLIP), None if none
    text_ids: torch.Tensor  # the family's text position ids (FLUX: zeros (L, 3)), shared by the batch
    # (B, 1, N, N) additive regional mask (the sampler may turn it into a sparse form), None without regions
    attention_mask: torch.Tensor | BlockMask | SplitMask | None
    ip_adapter: AdapterInput | None = None  # an image-prompt adapter's references (`adapter_input`), None without
    group_lengths: tuple[int, ...] | None = None  # tokens of each prompt group, [entity_1, ..., entity_k, global]
    lora_tokens: LoraTokens | None = None  # each token's weight of each entity LoRA (`entity_lora`), None without


@dataclass(frozen=True)
class PromptTable:
    """Prompts encoded beforehand (a training cache), read like a family's `PromptEncoder`."""

    embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]  # as global prompts
    positions: Callable[[Sequence[int], torch.Tensor], torch.Tensor]  # the family's `text_ids`
    # as entity prompts, where that differs from the global prompt's sequence embeddings (Qwen-Image's long prompts)
    entity_embeddings: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.embeddings[prompt]

    def entity(self, prompt: str) -> torch.Tensor:
        return self.entity_embeddings.get(prompt, self.embeddings[prompt][0])

    def text_ids(self, group_lengths: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        return self.positions(group_lengths, like)


def conditioning(
    encode: PromptEncoder | PromptTable, prompt: str, entity_prompts: Sequence[str], token_regions: torch.Tensor | None,
    entity_lengths: Sequence[int] | None = None,
) -> Conditioning:
    """Concatenate `[entities..., global]` and build the regional mask (plain FLUX without entities).

    `token_regions` is (k, n_image) bool, one row per entity prompt, or None when k = 0. `entity_lengths` keeps
    the first tokens of each entity's encoding (default: the whole encoding, as the reference: FLUX's T5 padded to
    max_sequence_length, Qwen-Image's prompt at its own length).
    T5 runs on the padded prompt either way (FLUX runs it without an attention mask, so the padding changes the
    embeddings of the real tokens): the tokens kept are exactly the reference's.
    """
    global_embeds, pooled = encode(prompt)
    if not entity_prompts:
        return Conditioning(global_embeds, pooled, encode.text_ids([global_embeds.shape[1]], global_embeds), None)
    if token_regions is None or token_regions.shape[0] != len(entity_prompts):
        got = "none" if token_regions is None else f"{token_regions.shape[0]}"
        raise ValueError(f"expected one token region per entity prompt ({len(entity_prompts)}), got {got}")
    lengths = entity_lengths or [None] * len(entity_prompts)
    groups = [encode.entity(p)[:, :n] for p, n in zip(entity_prompts, lengths, strict=True)] + [global_embeds]
    embeds = torch.cat(groups, dim=1)
    text_ids = encode.text_ids([g.shape[1] for g in groups], global_embeds)
    mask = regional_attention_mask(token_regions, [g.shape[1] for g in groups], global_embeds.dtype,
                                   global_embeds.device)
    return Conditioning(embeds, pooled, text_ids, mask, group_lengths=tuple(g.shape[1] for g in groups))


def padded_ids(branches: Sequence[Conditioning], length: int) -> torch.Tensor:
    """The branches' text ids for a text of `length` tokens, each padded with its last id (the pad tokens are
    masked, so their positions never matter): shared when the branches agree (FLUX's zeros always do), else one
    row per branch (Qwen-Image's per-group positions, (B, L); its transformer takes them so)."""
    padded = [torch.cat([c.text_ids, c.text_ids[-1:].expand(length - len(c.text_ids), *c.text_ids.shape[1:])])
              for c in branches]
    if all(torch.equal(padded[0], ids) for ids in padded[1:]):
        return padded[0]
    if padded[0].ndim != 1:
        raise ValueError("these branches have different text positions and cannot share one batch")
    return torch.stack(padded)


def batched(branches: Sequence[Conditioning], n_image: int) -> Conditioning:
    """The branches (e.g. CFG's positive and negative) as one batch: each text padded with masked tokens to the
    longest one. The padding is invisible to the real tokens, so every branch's result is unchanged."""
    length = max(c.prompt_embeds.shape[1] for c in branches)
    embeds = torch.cat([torch.nn.functional.pad(c.prompt_embeds, (0, 0, 0, length - c.prompt_embeds.shape[1]))
                        for c in branches])
    pooled = None if branches[0].pooled is None else torch.cat([c.pooled for c in branches])
    text_ids = padded_ids(branches, length)
    adapter = batched_adapter_input([c.ip_adapter for c in branches], n_image)
    tokens = batched_tokens([c.lora_tokens for c in branches], length)
    if all(c.attention_mask is None and c.prompt_embeds.shape[1] == length for c in branches):
        return Conditioning(embeds, pooled, text_ids, None, adapter, lora_tokens=tokens)
    masks = [padded_text(c.attention_mask, c.prompt_embeds.shape[1], length, n_image, embeds.dtype, embeds.device)
             for c in branches]
    return Conditioning(embeds, pooled, text_ids, torch.cat(masks), adapter, lora_tokens=tokens)
