"""LoRAs per entity: a LoRA's low-rank delta on exactly the tokens of the entities that name it (docs/entity-loras.md).

Every per-token Linear a LoRA targets gets one forward hook holding the factors of each distinct entity LoRA file on
it. A pass gathers, for each file, the rows (batch x token) it acts on, computes ``B (A x)`` for those rows only,
scales each row by its weight (the sum of the user scales of the entities that name the file and own the token,
times the file's ``alpha / rank``) and adds the result back at the same rows (`index_add`). The rows and weights of
each stream are found once per generation (`LoraTokens`), not in every layer. Every other row of the output is left
exactly as the base layer computed it. Gathering was measured faster than a per-token mask on the low-rank output of
all tokens (all files stacked in one pair of matmuls) on every Linear measured: `benchmarks/entity_lora.py`.

Which tokens a Linear maps is told by its diffusers name (`token_stream`): the image stream, the text stream, or the
joint ``[text | image]`` sequence of FLUX's single blocks. Linears that map one vector per sample (the adaLN
modulations, the timestep and pooled-text embedders) cannot act on some tokens only; an entity LoRA's deltas on them
are left out, with a warning.

The token weights of a pass (`LoraTokens`) ride on its `Conditioning` and are made active around each transformer
call (`active_tokens`, a context variable read by the hooks).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .hub import lora_file
from .layout import Layout, LayoutError
from .layout_warnings import LayoutWarning
from .lora import LoraDelta, LoraError, lora_targets

if TYPE_CHECKING:
    from .conditioning import Conditioning

Stream = Literal["image", "text", "joint"]

# What the hook attaches to a Linear (the factors as non-persistent buffers: state_dict() is unchanged).
_STREAM_ATTR = "_eligen_entity_stream"
_HANDLE_ATTR = "_eligen_entity_handle"
_FILES_ATTR = "_eligen_entity_files"  # [(file slot, alpha / rank)] of the factors held, in buffer order
_DOWN = "eligen_entity_down_{}"
_UP = "eligen_entity_up_{}"

_STREAMS: tuple[tuple[re.Pattern[str], Stream], ...] = tuple((re.compile(p), s) for p, s in (
    # FLUX's single blocks run one joint [text | image] sequence through every Linear but the modulation
    (r"single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp|proj_out)$", "joint"),
    # dual blocks (FLUX and Qwen-Image): the image stream and the text stream
    (r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0)|(ff|img_mlp)\.net\.\d+(\.proj)?)$", "image"),
    (r"transformer_blocks\.\d+\.(attn\.(add_[qkv]_proj|to_add_out)|(ff_context|txt_mlp)\.net\.\d+(\.proj)?)$", "text"),
    (r"(x_embedder|img_in|proj_out)$", "image"),
    (r"(context_embedder|txt_in)$", "text"),
))


def token_stream(module: str) -> Stream | None:
    """Which tokens a Linear of a FLUX or Qwen-Image transformer maps, from its diffusers name; None for one vector
    per sample (modulations, timestep and pooled embedders, the final norm)."""
    return next((stream for pattern, stream in _STREAMS if pattern.fullmatch(module)), None)


@dataclass(frozen=True)
class StreamRows:
    """The rows of one stream's (B * S) flattened tokens each file acts on, and their weights."""

    shape: tuple[int, int]  # (B, S) of the stream
    index: tuple[torch.Tensor, ...]  # per file: (n_f,) long row indices
    weight: tuple[torch.Tensor, ...]  # per file: (n_f, 1) float32 weights of those rows

    @classmethod
    def of(cls, weights: torch.Tensor) -> StreamRows:
        flat = weights.reshape(-1, weights.shape[-1])
        index = tuple(flat[:, f].nonzero().squeeze(1) for f in range(flat.shape[1]))
        return cls((weights.shape[0], weights.shape[1]), index, tuple(flat[i, f][:, None] for f, i in enumerate(index)))


@dataclass(frozen=True)
class LoraTokens:
    """Each token's weight of each entity LoRA file in one pass, (B, n_text, F) and (B, n_image, F) float32, and the
    rows each file acts on in each stream (the joint one is FLUX's single blocks' [text | image])."""

    text: torch.Tensor
    image: torch.Tensor
    rows: dict[Stream, StreamRows]

    @classmethod
    def of(cls, text: torch.Tensor, image: torch.Tensor) -> LoraTokens:
        joint = torch.cat([text, image], dim=1)
        return cls(text, image, {"text": StreamRows.of(text), "image": StreamRows.of(image),
                                 "joint": StreamRows.of(joint)})


_ACTIVE: ContextVar[LoraTokens | None] = ContextVar("eligen_entity_lora_tokens", default=None)


@contextmanager
def active_tokens(tokens: LoraTokens | None) -> Iterator[None]:
    """Make `tokens` the entity LoRAs' token weights of the transformer calls inside (None: no entity delta)."""
    reset = _ACTIVE.set(tokens)
    try:
        yield
    finally:
        _ACTIVE.reset(reset)


def _entity_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor
                 ) -> torch.Tensor:
    """Add each file's ``weight * B (A x)`` to the rows of the Linear's output that the file acts on.

    Both products run in the activations' dtype (float32 accumulation), the row weights in float32; the gathered
    rows' results are added back with one rounding (`index_add_`). Rows no file acts on are the base output exactly.
    """
    tokens = _ACTIVE.get()
    if tokens is None:
        return output
    x = args[0] if args else kwargs["input"]
    rows = tokens.rows[getattr(module, _STREAM_ATTR)]
    if rows.shape != (x.shape[0], x.shape[1]):
        raise ValueError(f"entity LoRA token weights {rows.shape} do not match the {getattr(module, _STREAM_ATTR)} "
                         f"tokens {tuple(x.shape[:2])} of this pass")
    flat_x = x.reshape(-1, x.shape[-1])
    result = None
    for k, (slot, scale) in enumerate(getattr(module, _FILES_ATTR)):
        index = rows.index[slot]
        if index.numel() == 0:
            continue
        down, up = getattr(module, _DOWN.format(k)), getattr(module, _UP.format(k))
        low = F.linear(flat_x.index_select(0, index), down.to(x.dtype)).float() * (rows.weight[slot] * scale)
        if result is None:
            result = output.reshape(-1, output.shape[-1]).clone()
        result.index_add_(0, index, F.linear(low.to(output.dtype), up.to(output.dtype)))
    return output if result is None else result.view_as(output)


def attach_entity_loras(transformer: nn.Module, files: Sequence[list[LoraDelta]]) -> list[str]:
    """Hook the entity LoRA files (file f is slot f of `LoraTokens`) onto the transformer, replacing any attached.

    Returns the modules left out because they map one vector per sample (see the module docstring). Raises
    :class:`LoraError` for a delta that fits no Linear, before anything changes.
    """
    targets = lora_targets(transformer, [delta for deltas in files for delta in deltas])
    per_module: dict[str, list[tuple[int, LoraDelta]]] = {}
    left_out: set[str] = set()
    for slot, deltas in enumerate(files):
        for delta in deltas:
            if token_stream(delta.module) is None:
                left_out.add(delta.module)
            else:
                per_module.setdefault(delta.module, []).append((slot, delta))
    detach_entity_loras(transformer)
    with torch.no_grad():
        for name, entries in per_module.items():
            module = targets[name]
            weight = module.weight
            for k, (_, delta) in enumerate(entries):
                dtype = torch.promote_types(torch.promote_types(delta.down.dtype, delta.up.dtype), weight.dtype)
                module.register_buffer(_DOWN.format(k), delta.down.to(weight.device, dtype), persistent=False)
                module.register_buffer(_UP.format(k), delta.up.to(weight.device, dtype), persistent=False)
            setattr(module, _FILES_ATTR, [(slot, delta.scale) for slot, delta in entries])
            setattr(module, _STREAM_ATTR, token_stream(name))
            setattr(module, _HANDLE_ATTR, module.register_forward_hook(_entity_hook, with_kwargs=True))
    return sorted(left_out)


def detach_entity_loras(transformer: nn.Module) -> int:
    """Remove every entity LoRA hook; returns how many modules were restored."""
    restored = 0
    for module in transformer.modules():
        if hasattr(module, _HANDLE_ATTR):
            getattr(module, _HANDLE_ATTR).remove()
            for k in range(len(getattr(module, _FILES_ATTR))):
                delattr(module, _DOWN.format(k))
                delattr(module, _UP.format(k))
            for name in (_HANDLE_ATTR, _STREAM_ATTR, _FILES_ATTR):
                delattr(module, name)
            restored += 1
    return restored


def branch_tokens(weights: torch.Tensor, regions: torch.Tensor, group_lengths: Sequence[int] | None, text_length: int
                  ) -> LoraTokens:
    """The token weights of one CFG branch: every image token of entity e's region and, where the branch has entity
    prompt groups (`group_lengths`: k entity groups then the global one), the tokens of e's group get row e of
    `weights` (k, F); overlapping regions add up. A branch without entity groups (the negative) gets the image
    tokens only. The weights are made on `regions`' device."""
    k, files = weights.shape
    weights = weights.to(regions.device)
    image = (regions.float().T @ weights)[None]  # (1, n_image, F)
    text = torch.zeros(1, text_length, files, device=regions.device)
    if group_lengths is not None and len(group_lengths) == k + 1:
        start = 0
        for e, length in enumerate(group_lengths[:k]):
            text[0, start:start + length] = weights[e]
            start += length
    return LoraTokens.of(text, image)


def batched_tokens(branches: Sequence[LoraTokens | None], text_length: int) -> LoraTokens | None:
    """Branches' token weights as one batch, each text padded with zero-weight tokens to `text_length`."""
    found = [t for t in branches if t is not None]
    if not found:
        return None
    like = found[0].image
    texts, images = [], []
    for tokens in branches:
        if tokens is None:
            tokens = LoraTokens.of(like.new_zeros(1, 0, like.shape[2]), torch.zeros_like(like[:1]))
        texts.append(F.pad(tokens.text, (0, 0, 0, text_length - tokens.text.shape[1])))
        images.append(tokens.image)
    return LoraTokens.of(torch.cat(texts), torch.cat(images))


class EntityLoras:
    """The entity LoRAs of the layouts a pipeline renders: each distinct file loaded once and shared by the entities
    that name it; the hooks stay attached while the next layout uses the same files."""

    def __init__(self) -> None:
        self._files: tuple[str, ...] = ()

    def use(self, transformer: nn.Module, load: Any, layout: Layout, base_dir: Path, source: str, fused: bool
            ) -> torch.Tensor | None:
        """Attach the layout's entity LoRAs (`load`: the family's file reader); returns each entity's weight of each
        distinct file, (k, F), or None when no entity names a LoRA (nothing attached then)."""
        specs = [(i, j, spec) for i, entity in enumerate(layout.entities) for j, spec in enumerate(entity.loras or [])]
        if fused and specs:
            i = specs[0][0]
            raise LayoutError(source, f"entities[{i}].loras", "expected no entity LoRAs with fused LoRAs "
                              "(--fuse-loras): fusing merges a LoRA into the weights of every token",
                              "leave out --fuse-loras, or move the LoRA to the layout's global `loras`")
        paths = [str(lora_file(spec, base_dir, source, f"entities[{i}].loras[{j}]")) for i, j, spec in specs]
        files = tuple(dict.fromkeys(paths))
        if not specs:
            if self._files:
                detach_entity_loras(transformer)
                self._files = ()
            return None
        if files != self._files:
            self._attach(transformer, load, files, {path: (i, j) for (i, j, _), path in zip(specs, paths, strict=True)},
                         source)
        weights = torch.zeros(len(layout.entities), len(files))
        for (i, _, spec), path in zip(specs, paths, strict=True):
            weights[i, files.index(path)] += spec.scale
        return weights

    def _attach(self, transformer: nn.Module, load: Any, files: tuple[str, ...],
                field_of: Mapping[str, tuple[int, int]], source: str) -> None:
        loaded = []
        for path in files:
            i, j = field_of[path]
            try:
                loaded.append(load(path))
            except LoraError as error:
                raise LayoutError(source, f"entities[{i}].loras[{j}]", f"expected a LoRA for this model: {error}"
                                  ) from None
        self._files = ()
        left_out = attach_entity_loras(transformer, loaded)
        self._files = files
        if left_out:
            warnings.warn(f"{source}: entities[].loras: {len(left_out)} layer(s) of the entity LoRAs map one vector "
                          f"per image (e.g. {left_out[0]}) and cannot act on an entity's tokens only; left out",
                          LayoutWarning, stacklevel=3)


def with_entity_tokens(positive: Conditioning, negative: Conditioning | None, regions: np.ndarray,
                       weights: torch.Tensor | None) -> tuple[Conditioning, Conditioning | None]:
    """The branches with their entity LoRA token weights (`branch_tokens`; the negative's region image tokens get
    them too, so guidance does not push the LoRA's effect into the rest of the image)."""
    if weights is None:
        return positive, negative
    token_regions = torch.from_numpy(np.asarray(regions, dtype=bool)).to(positive.prompt_embeds.device)

    def tokens(cond: Conditioning) -> LoraTokens:
        return branch_tokens(weights, token_regions, cond.group_lengths, cond.prompt_embeds.shape[1])

    return (replace(positive, lora_tokens=tokens(positive)),
            None if negative is None else replace(negative, lora_tokens=tokens(negative)))
