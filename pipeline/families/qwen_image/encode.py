"""Qwen-Image prompt encoding: Qwen2.5-VL hidden states under QwenImagePipeline's chat template, each prompt once.

Each prompt group is encoded alone, at its true length (no padding), exactly as the reference encodes every entity
prompt and the global prompt: the template's system turn and `<|im_start|>user\\n` (34 tokens) are dropped, so a
group holds the prompt's tokens and the template's 5 closing tokens. Qwen-Image has no pooled vector.

Text position ids (`Conditioning.text_ids`) are, for Qwen-Image, each text token's position within its own group:
`[0 .. n_1-1, 0 .. n_2-1, ..., 0 .. n_g-1]` (long, shape (L,)). The transformer turns them into rotary angles from
the offset the global prompt starts at (`transformer.text_rotary`), so every group's positions restart there, as
the reference's `process_entity_masks` builds them. When branches of different positions share a batch (CFG's two
branches, a training batch) the ids are one row per sample, (B, L).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..base import TokenLimit

if TYPE_CHECKING:  # diffusers stays unimported: ComfyUI's nodes read `qwen_text_ids` without it
    from diffusers import QwenImagePipeline


class PromptEncoder:
    """Encodes prompts with the pipeline's Qwen2.5-VL under its template, each distinct prompt once."""

    def __init__(self, pipe: QwenImagePipeline, max_sequence_length: int) -> None:
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompt: str) -> tuple[torch.Tensor, None]:
        """(hidden states (1, n, D) of the prompt's tokens and the template's closing tokens, None)."""
        if prompt not in self._cache:
            with torch.inference_mode():
                embeds, mask = self.pipe.encode_prompt(prompt, max_sequence_length=self.max_sequence_length)
            if mask is not None:  # one prompt is never padded: the pipeline returns None for an all-ones mask
                raise AssertionError("a single Qwen-Image prompt came back with padding")
            self._cache[prompt] = embeds
        return self._cache[prompt], None

    def token_count(self, prompt: str) -> int:
        """Tokens the group of `prompt` holds: its own and the template's 5 closing tokens, at most
        max_sequence_length (the pipeline's tokenizer limit of 1024 + 34 applies first)."""
        pipe = self.pipe
        text = pipe.prompt_template_encode.format(prompt)
        ids = pipe.tokenizer(text, max_length=pipe.tokenizer_max_length + pipe.prompt_template_encode_start_idx,
                             truncation=True).input_ids
        return min(len(ids) - pipe.prompt_template_encode_start_idx, self.max_sequence_length)

    def token_limits(self) -> list[TokenLimit]:
        """Qwen2.5-VL reads max_sequence_length tokens of every prompt group (its own and the template's closing
        tokens)."""
        return [TokenLimit("Qwen2.5-VL", self.untruncated_count, self.max_sequence_length)]

    def untruncated_count(self, prompt: str) -> int:
        """Tokens the group of `prompt` would hold without any limit."""
        pipe = self.pipe
        ids = pipe.tokenizer(pipe.prompt_template_encode.format(prompt), verbose=False).input_ids
        return len(ids) - pipe.prompt_template_encode_start_idx

    @staticmethod
    def text_ids(group_lengths: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        return qwen_text_ids(group_lengths, like)


def qwen_text_ids(group_lengths: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(L,) long: each text token's position within its group (every group restarts at 0), on `like`'s device."""
    return torch.cat([torch.arange(n, device=like.device) for n in group_lengths])
