"""Qwen-Image prompt encoding: Qwen2.5-VL hidden states under QwenImagePipeline's chat template, each prompt once.

Each prompt group is encoded alone, at its true length (no padding), exactly as the reference encodes every entity
prompt and the global prompt: the template's system turn and `<|im_start|>user\\n` (34 tokens) are dropped, so a
group holds the prompt's tokens and the template's 5 closing tokens. Qwen-Image has no pooled vector.

Lengths, as the reference's units: the tokenizer cuts the templated text at the limit plus the 34 dropped tokens, so
an entity prompt's group holds at most 1024 tokens (the entity unit; diffusers' `tokenizer_max_length`) and the
global and negative prompt's at most 4096 (the prompt embedder; diffusers' own pipeline cuts it at 1024 too). A
prompt cut short loses its last tokens and the template's closing ones with them.

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
    """Encodes prompts with the pipeline's Qwen2.5-VL under its template, each distinct token sequence once.

    `max_sequence_length` caps an entity prompt's group (at most the entity unit's 1024), `prompt_sequence_length`
    the global and negative prompt's.
    """

    def __init__(self, pipe: QwenImagePipeline, max_sequence_length: int, prompt_sequence_length: int) -> None:
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self.prompt_sequence_length = prompt_sequence_length
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, prompt: str) -> tuple[torch.Tensor, None]:
        """(hidden states (1, n, D) of the global prompt's tokens and the template's closing tokens, None)."""
        return self._encode(prompt, self.prompt_sequence_length), None

    def entity(self, prompt: str) -> torch.Tensor:
        """Hidden states (1, n, D) of an entity prompt's group: cut as the entity unit cuts it, then at
        max_sequence_length."""
        return self._encode(prompt, self.pipe.tokenizer_max_length)[:, :self.max_sequence_length]

    def _encode(self, prompt: str, limit: int) -> torch.Tensor:
        """The last hidden states of the templated prompt cut at `limit` + the dropped tokens, less those tokens (the
        calls of diffusers' `_get_qwen_prompt_embeds`, with the limit the caller's)."""
        pipe = self.pipe
        drop = pipe.prompt_template_encode_start_idx
        tokens = pipe.tokenizer([pipe.prompt_template_encode.format(prompt)], max_length=limit + drop,
                                truncation=True, return_tensors="pt").to(pipe._execution_device)
        key = tuple(tokens.input_ids[0].tolist())
        if key not in self._cache:
            with torch.inference_mode():
                hidden = pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                           output_hidden_states=True).hidden_states[-1]
            self._cache[key] = hidden[:, drop:].to(pipe.text_encoder.dtype)
        return self._cache[key]

    def token_count(self, prompt: str) -> int:
        """Tokens an entity prompt's group holds: its own and the template's 5 closing tokens, at most
        max_sequence_length (the entity unit's limit of 1024 applies first)."""
        return min(self.untruncated_count(prompt), self.pipe.tokenizer_max_length, self.max_sequence_length)

    def token_limits(self) -> list[TokenLimit]:
        """Qwen2.5-VL reads prompt_sequence_length tokens of the global and negative prompt's group (its own tokens
        and the template's closing ones), max_sequence_length of each entity prompt's."""
        return [TokenLimit("Qwen2.5-VL", self.untruncated_count, self.prompt_sequence_length,
                           ("prompt", "negative_prompt")),
                TokenLimit("Qwen2.5-VL", self.untruncated_count,
                           min(self.pipe.tokenizer_max_length, self.max_sequence_length), ("entities",))]

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
