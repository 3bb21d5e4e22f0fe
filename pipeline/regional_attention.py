"""The EliGen regional attention mask (paper Eq. 4-5), as the rule table below.

The joint sequence is `[entity_1 | ... | entity_k | global | image tokens]`. One (1, 1, N, N)
additive mask (0 = attend, -inf = blocked) is built once per generation and shared by every
dual- and single-stream block at every step:

* a prompt group sees itself and never another prompt group;
* entity i's prompt and the image tokens of region i see each other;
* the global prompt and every image token see each other;
* image tokens see all image tokens.

Padding a branch's text to a longer one (to batch CFG's branches) adds a group of pad tokens that sees only
itself and that no other token sees (`padded_text`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def allowed_attention(token_regions: torch.Tensor, group_lengths: Sequence[int]) -> torch.Tensor:
    """Boolean (N, N) matrix, True where query row may attend to key column.

    `token_regions` is (k, n_image) bool, one row per entity; `group_lengths` holds the k entity
    prompt lengths followed by the global prompt length.
    """
    k, n_image = token_regions.shape
    if len(group_lengths) != k + 1:
        raise ValueError(f"expected {k + 1} prompt groups (k entities + global), got {len(group_lengths)}")
    device = token_regions.device
    lengths = torch.tensor(group_lengths, device=device)
    group_of_text = torch.repeat_interleave(torch.arange(k + 1, device=device), lengths)
    regions = torch.cat([token_regions.bool(), torch.ones(1, n_image, dtype=torch.bool, device=device)])
    text_to_image = regions[group_of_text]  # (n_text, n_image): row of the token's group
    text_to_text = group_of_text[:, None] == group_of_text[None, :]
    image_to_image = torch.ones(n_image, n_image, dtype=torch.bool, device=device)
    return torch.cat(
        [torch.cat([text_to_text, text_to_image], dim=1), torch.cat([text_to_image.T, image_to_image], dim=1)]
    )


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, N) bool -> (1, 1, N, N) float mask: 0 where allowed, -inf where blocked (4-D: no silent broadcasting)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, float("-inf"))
    return mask[None, None]


def regional_attention_mask(
    token_regions: torch.Tensor, group_lengths: Sequence[int], dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """The (1, 1, N, N) additive EliGen mask for `token_regions` (k, n_image) and prompt group lengths."""
    return additive_mask(allowed_attention(token_regions.to(device), group_lengths), dtype)


def padded_text(
    mask: torch.Tensor | None, text_length: int, padded_length: int, n_image: int, dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """A branch's (1, 1, N, N) additive mask (None: all allowed) with pad tokens inserted after its text.

    The pad tokens see each other only and no other token sees them, so the real tokens attend exactly as before.
    """
    n = text_length + n_image
    real = torch.cat([torch.arange(text_length), torch.arange(padded_length, padded_length + n_image)]).to(device)
    allowed = torch.zeros(padded_length + n_image, padded_length + n_image, dtype=torch.bool, device=device)
    allowed[text_length:padded_length, text_length:padded_length] = True
    seen = torch.ones(n, n, dtype=torch.bool, device=device) if mask is None else mask[0, 0] == 0
    allowed[real[:, None], real[None, :]] = seen
    return additive_mask(allowed, dtype)
