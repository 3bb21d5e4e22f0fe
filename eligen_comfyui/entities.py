"""Entities as the nodes pass them: an encoded prompt and a region, turned into token regions by eligen's rules.

The region rules (box and mask rasterising, the latent and token rule, the checks and their messages) are
`eligen.pipeline.regions`; a region is handed to it as a one-entity layout, so a box or a MASK means here exactly
what it means in a layout file.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from eligen.pipeline.entity_tokens import EntityTokens, entity_lengths
from eligen.pipeline.layout import DATA_URL_PREFIX, LayoutError, parse_layout
from eligen.pipeline.regions import entity_masks, mask_data_url, token_masks

SCALE_FACTOR = 8  # pixels per latent pixel of the FLUX.1 and Qwen-Image VAEs
T5_KEY = "t5xxl"  # FLUX.1's sequence encoder in ComfyUI's tokenizer output


@dataclass(frozen=True)
class Entity:
    """One entity: its prompt encoded by the connected CLIP, and its region as a layout entity's fields."""

    prompt: str
    embedding: torch.Tensor  # (1, L, D): the CLIP's sequence output for the prompt alone
    region: dict[str, Any]  # {"box": [x1, y1, x2, y2]} or {"mask": PNG data URL}
    tokens: int  # the prompt's own tokens with its end token (`own_tokens`)
    padded: bool  # whether the CLIP padded the encoding past them (FLUX's T5)
    units: str = "px"  # the box's units: px or fraction

    @property
    def label(self) -> str:
        short = self.prompt if len(self.prompt) <= 40 else self.prompt[:37] + "..."
        return f"EliGen entity {short!r}"


def own_tokens(clip: Any, tokens: Any, encoded_length: int) -> tuple[int, bool]:
    """The prompt's own tokens with its end token, as eligen's `entity_tokens: auto` counts them, and whether the
    encoding is padded past them: for FLUX.1, T5's tokens before its padding in the CLIP's tokenizer output; an
    encoder that does not pad (Qwen-Image's Qwen2.5-VL, ComfyUI giving each prompt at its own length) has encoded
    exactly those."""
    batches = tokens.get(T5_KEY) if isinstance(tokens, dict) else None
    if not batches:
        return encoded_length, False
    pad = clip.tokenizer.t5xxl.pad_token
    return sum(1 for batch in batches for token in batch if not (isinstance(token[0], int) and token[0] == pad)), True


@dataclass(frozen=True)
class _EncodedGroups:
    """The CLIP's encodings as `eligen.pipeline.entity_tokens` reads an encoder: each prompt's own token count, and
    the length of a padded prompt group (the shortest, so that N tokens are in every group)."""

    counts: dict[str, int]
    max_sequence_length: int

    def token_count(self, prompt: str) -> int:
        return self.counts[prompt]


def group_lengths(encoded: list[tuple[str, torch.Tensor, int, bool]], budget: EntityTokens, field: str | None,
                  source: str) -> list[int]:
    """Tokens kept of each (prompt, embedding, own tokens, padded) under a layout's `entity_tokens` (eligen's rule:
    all, the prompt's own with its end token, or the first N, an error where a prompt needs more, or where N is
    longer than a padded group; an unpadded group holds all of its prompt's tokens, as the layout's N at most)."""
    lengths = [embedding.shape[1] for _, embedding, _, _ in encoded]
    if budget == "max":
        return lengths
    padded = [n for n, (_, _, _, pads) in zip(lengths, encoded, strict=True) if pads]
    limit = min(padded) if padded else budget if isinstance(budget, int) else max(lengths)
    groups = _EncodedGroups({p: n for p, _, n, _ in encoded}, limit)
    kept = entity_lengths(groups, budget, [p for p, _, _, _ in encoded], field, source)
    return [min(n, length) for n, length in zip(kept, lengths, strict=True)]


def with_entity_tokens(entities: list[Entity], budget: EntityTokens, source: str) -> list[Entity]:
    """The entities with only the first tokens of their embeddings that `entity_tokens` keeps."""
    if not entities:
        return entities
    lengths = group_lengths([(e.prompt, e.embedding, e.tokens, e.padded) for e in entities], budget, None, source)
    return [replace(e, embedding=e.embedding[:, :n]) for e, n in zip(entities, lengths, strict=True)]


def mask_region(mask: torch.Tensor, label: str) -> dict[str, Any]:
    """A ComfyUI MASK (H, W) or (1, H, W), values 0..1, as a layout mask (a grey PNG: a pixel is in above half)."""
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"{label}: expected one MASK (height x width), got a batch of shape {list(mask.shape)}")
    grey = (mask.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG")
    return {"mask": DATA_URL_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")}


def pixel_mask(entity: Entity, size: tuple[int, int]) -> np.ndarray:
    """The entity's region as a boolean (height, width) mask on a `size` = (width, height) canvas."""
    layout = parse_layout({"size": list(size), "units": entity.units, "prompt": entity.prompt,
                           "entities": [{"prompt": entity.prompt, **entity.region}]}, entity.label)
    return entity_masks(layout, Path("."), entity.label, same_size=True)[0]


def token_regions(entities: list[Entity], width: int, height: int) -> torch.Tensor:
    """(k, n_tokens) bool regions on the token grid of a width x height image, as `eligen generate` builds them.

    Raises ValueError with the pipeline's message (which entity, which field, what was expected) on a region
    outside the canvas, a MASK of another size, an empty region or one that covers no token.
    """
    try:
        if not entities:
            raise LayoutError("EliGen Apply", "entities", "expected at least one entity")
        size = (width, height)
        masks = [pixel_mask(e, size) for e in entities]
        layout = parse_layout({"size": list(size), "prompt": "regions", "entities": [
            {"prompt": e.prompt, "mask": mask_data_url(m)} for e, m in zip(entities, masks, strict=True)]},
            "EliGen Apply")
        return torch.from_numpy(token_masks(masks, SCALE_FACTOR, layout, "EliGen Apply"))
    except LayoutError as exc:
        raise ValueError(str(exc)) from None
