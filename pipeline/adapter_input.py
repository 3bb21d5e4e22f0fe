"""What an image-prompt adapter (IP-Adapter) adds to one transformer pass, in a form every family reads alike.

Each reference image becomes, per adapter layer, keys and values (B, H, L, D) that the image tokens' queries attend
to; the result is added to the layer's attention output times a per-token weight: the reference's scale where it
applies and 0 elsewhere. A global reference applies to every token outside the regions of the entities that have a
reference of their own (and, where a family's layer runs on the joint `[text | image]` sequence, to the text
tokens too); an entity's reference applies to the image tokens of its region only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


class IPAdapterError(ValueError):
    """An adapter file that cannot be used: not of a known format, or not fitting the model."""


@dataclass(frozen=True)
class ReferenceAttention:
    """One reference image's keys and values in every adapter layer, and where (and how strongly) they act."""

    keys: tuple[torch.Tensor, ...]  # per adapter layer (B, H, L, D)
    values: tuple[torch.Tensor, ...]
    image_weight: torch.Tensor  # (B, n_image) float32: the scale at image tokens it acts on, else 0
    text_weight: torch.Tensor  # (B,) float32: the scale at the text tokens (0 for an entity's reference)

    def weights(self, text_length: int) -> torch.Tensor:
        """(B, text_length + n_image) weights of a joint sequence, or (B, n_image) when `text_length` is 0."""
        if text_length == 0:
            return self.image_weight
        text = self.text_weight[:, None].expand(-1, text_length)
        return torch.cat([text, self.image_weight], dim=1)


@dataclass(frozen=True)
class AdapterInput:
    """Every reference of one CFG branch (or of a batch of branches)."""

    references: tuple[ReferenceAttention, ...]

    @property
    def image_tokens(self) -> int:
        """The number of image tokens the weights cover."""
        return self.references[0].image_weight.shape[1]

    def contribution(self, query: torch.Tensor, layer: int, text_length: int) -> torch.Tensor:
        """The adapter's output (B, N, H * D) for queries (B, H, N, D): each reference's attention times its
        weights, summed over the references."""
        total = None
        for ref in self.references:
            out = torch.nn.functional.scaled_dot_product_attention(query, ref.keys[layer], ref.values[layer])
            out = out.transpose(1, 2).reshape(query.shape[0], query.shape[2], -1)
            weighted = out * ref.weights(text_length).to(out.dtype)[..., None]
            total = weighted if total is None else total + weighted
        assert total is not None
        return total


def reference_weights(
    scale: float, n_image: int, region: torch.Tensor | None, on_text: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image weights (1, n_image), text weight (1,)) of one reference: `scale` at the image tokens of `region`
    (None: all of them) and, when `on_text`, at the text tokens; 0 elsewhere."""
    if region is None:
        image = torch.full((1, n_image), scale, dtype=torch.float32, device=device)
    else:
        image = torch.where(region.to(device), scale, 0.0).to(torch.float32)[None]
    return image, torch.full((1,), scale if on_text else 0.0, dtype=torch.float32, device=device)


def batched_adapter_input(inputs: Sequence[AdapterInput | None], n_image: int) -> AdapterInput | None:
    """The branches' adapter inputs as one batch: a branch with fewer references gets references of zero keys,
    values and weights, which add exactly 0 (the attention of zero values is 0)."""
    if all(i is None for i in inputs):
        return None
    count = max(len(i.references) for i in inputs if i is not None)
    like = next(i for i in inputs if i is not None).references[0]
    device = like.image_weight.device

    def padded(i: AdapterInput | None) -> list[ReferenceAttention]:
        refs = list(i.references) if i is not None else []
        blank = ReferenceAttention(tuple(torch.zeros_like(k) for k in like.keys),
                                   tuple(torch.zeros_like(v) for v in like.values),
                                   torch.zeros(1, n_image, device=device), torch.zeros(1, device=device))
        return refs + [blank] * (count - len(refs))

    columns = list(zip(*(padded(i) for i in inputs), strict=True))
    return AdapterInput(tuple(
        ReferenceAttention(tuple(torch.cat(ks) for ks in zip(*(r.keys for r in refs), strict=True)),
                           tuple(torch.cat(vs) for vs in zip(*(r.values for r in refs), strict=True)),
                           torch.cat([r.image_weight for r in refs]), torch.cat([r.text_weight for r in refs]))
        for refs in columns))
