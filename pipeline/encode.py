"""Prompt encoding and the per-branch conditioning of the transformer (paper Eq. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers import FluxPipeline

from .regional_attention import padded_text, regional_attention_mask

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from .attention_backends import SplitMask


@dataclass(frozen=True)
class Conditioning:
    """Everything one transformer pass is conditioned on, built once per generation."""

    prompt_embeds: torch.Tensor  # (B, L, D): [entity_1 | ... | entity_k | global] T5 embeddings
    pooled: torch.Tensor  # (B, D_pooled): CLIP pooled vector of the global prompt
    text_ids: torch.Tensor  # (L, 3): zeros over the whole text length
    # (B, 1, N, N) additive regional mask (the sampler may turn it into a sparse form), None for plain FLUX
    attention_mask: torch.Tensor | BlockMask | SplitMask | None


class PromptEncoder:
    """Encodes prompts with the pipeline's CLIP and T5, each distinct prompt once."""

    def __init__(self, pipe: FluxPipeline, max_sequence_length: int) -> None:
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 embeddings (1, max_sequence_length, D), CLIP pooled (1, D_pooled)) of one prompt."""
        if prompt not in self._cache:
            with torch.inference_mode():
                t5, pooled, _ = self.pipe.encode_prompt(
                    prompt=prompt, prompt_2=None, max_sequence_length=self.max_sequence_length
                )
            self._cache[prompt] = (t5, pooled)
        return self._cache[prompt]

    def token_count(self, prompt: str) -> int:
        """T5 tokens of `prompt` before the padding: its own tokens and the end token, at most max_sequence_length."""
        tokens = self.pipe.tokenizer_2(prompt, padding="max_length", max_length=self.max_sequence_length,
                                       truncation=True, return_tensors="pt")
        return int(tokens.attention_mask.sum())

    def untruncated_count(self, prompt: str) -> int:
        """T5 tokens of `prompt` with its end token, before truncation to max_sequence_length."""
        return len(self.pipe.tokenizer_2(prompt, verbose=False).input_ids)

    @property
    def clip_max_length(self) -> int:
        """CLIP tokens read per prompt (77 for FLUX.1-dev), start and end tokens included."""
        return self.pipe.tokenizer_max_length

    def clip_untruncated_count(self, prompt: str) -> int:
        """CLIP tokens of `prompt` with its start and end tokens, before truncation."""
        return len(self.pipe.tokenizer(prompt, verbose=False).input_ids)


def conditioning(
    encode: PromptEncoder, prompt: str, entity_prompts: Sequence[str], token_regions: torch.Tensor | None,
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
