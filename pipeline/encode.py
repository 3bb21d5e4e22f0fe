"""Prompt encoding and the per-branch conditioning of the transformer (paper Eq. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import FluxPipeline

from .regional_attention import regional_attention_mask


@dataclass(frozen=True)
class Conditioning:
    """Everything one transformer pass is conditioned on, built once per generation."""

    prompt_embeds: torch.Tensor  # (1, L, D): [entity_1 | ... | entity_k | global] T5 embeddings
    pooled: torch.Tensor  # (1, D_pooled): CLIP pooled vector of the global prompt
    text_ids: torch.Tensor  # (L, 3): zeros over the whole text length
    attention_mask: torch.Tensor | None  # (1, 1, N, N) additive regional mask, None for plain FLUX


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


def conditioning(
    encode: PromptEncoder, prompt: str, entity_prompts: Sequence[str], token_regions: torch.Tensor | None
) -> Conditioning:
    """Concatenate `[entities..., global]` and build the regional mask (plain FLUX without entities).

    `token_regions` is (k, n_image) bool, one row per entity prompt, or None when k = 0.
    """
    t5, pooled = encode(prompt)
    if not entity_prompts:
        text_ids = torch.zeros(t5.shape[1], 3, device=t5.device, dtype=t5.dtype)
        return Conditioning(t5, pooled, text_ids, None)
    groups = [encode(p)[0] for p in entity_prompts] + [t5]
    embeds = torch.cat(groups, dim=1)
    text_ids = torch.zeros(embeds.shape[1], 3, device=t5.device, dtype=t5.dtype)
    assert token_regions is not None and token_regions.shape[0] == len(entity_prompts)
    mask = regional_attention_mask(token_regions, [g.shape[1] for g in groups], t5.dtype, t5.device)
    return Conditioning(embeds, pooled, text_ids, mask)
