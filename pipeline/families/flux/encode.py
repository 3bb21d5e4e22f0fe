"""FLUX prompt encoding: T5 sequence embeddings and the CLIP pooled vector of a prompt, each prompt once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import FluxPipeline

from ..base import TokenLimit


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

    def entity(self, prompt: str) -> torch.Tensor:
        """T5 embeddings of an entity prompt: the same as the global prompt's (one length for every group)."""
        return self(prompt)[0]

    def token_count(self, prompt: str) -> int:
        """T5 tokens of `prompt` before the padding: its own tokens and the end token, at most max_sequence_length."""
        tokens = self.pipe.tokenizer_2(prompt, padding="max_length", max_length=self.max_sequence_length,
                                       truncation=True, return_tensors="pt")
        return int(tokens.attention_mask.sum())

    def token_limits(self) -> list[TokenLimit]:
        """T5 reads max_sequence_length tokens of every prompt group; CLIP reads 77 of the global prompt."""
        return [TokenLimit("T5", self.untruncated_count, self.max_sequence_length),
                TokenLimit("CLIP", self.clip_untruncated_count, self.pipe.tokenizer_max_length, ("prompt",))]

    def untruncated_count(self, prompt: str) -> int:
        """T5 tokens of `prompt` with its end token, before truncation to max_sequence_length."""
        return len(self.pipe.tokenizer_2(prompt, verbose=False).input_ids)

    def clip_untruncated_count(self, prompt: str) -> int:
        """CLIP tokens of `prompt` with its start and end tokens, before truncation."""
        return len(self.pipe.tokenizer(prompt, verbose=False).input_ids)

    @staticmethod
    def text_ids(group_lengths: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """FLUX's text position ids: zeros over the whole text (every prompt group alike)."""
        return flux_text_ids(group_lengths, like)


def flux_text_ids(group_lengths: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Zeros (L, 3) over the text of `group_lengths`, on `like`'s device and dtype (FLUX's `txt_ids`)."""
    return torch.zeros(sum(group_lengths), 3, device=like.device, dtype=like.dtype)
