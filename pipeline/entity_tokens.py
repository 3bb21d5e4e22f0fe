"""A layout's `entity_tokens`: how many text tokens of each entity prompt's encoding the transformer sees."""

from __future__ import annotations

from typing import Literal, Protocol

from .layout import LayoutError

EntityTokens = Literal["max", "auto"] | int  # a layout's `entity_tokens`


class TokenCounter(Protocol):
    """What the rule reads of a prompt encoder: each prompt group's length and a prompt's own token count."""

    max_sequence_length: int

    def token_count(self, prompt: str) -> int: ...


def entity_lengths(
    encode: TokenCounter, budget: EntityTokens, prompts: list[str], field: str | None = None,
    source: str = "<layout>",
) -> list[int]:
    """Text tokens kept of each entity prompt's encoding: all (`max`, the reference: FLUX's T5 padded to the
    length, Qwen-Image's prompt at its own length), the prompt's own with its end token (`auto`), or N, which must
    hold every prompt and be at most the encoder's length per group (FLUX 512, Qwen-Image 1024)."""
    if budget == "max":
        return [encode.max_sequence_length] * len(prompts)
    counts = [encode.token_count(p) for p in prompts]
    if budget == "auto":
        return counts
    if budget > encode.max_sequence_length:
        raise LayoutError(source, "entity_tokens", f"expected at most this model's text tokens per prompt group "
                          f"(max_sequence_length {encode.max_sequence_length}), got {budget}")
    for i, n in enumerate(counts):
        if n > budget:
            raise LayoutError(source, field or f"entities[{i}].prompt",
                              f"expected at most {budget} text tokens (entity_tokens), got {n} with the end token",
                              "shorten the prompt, or raise entity_tokens (or use auto)")
    return [budget] * len(prompts)
