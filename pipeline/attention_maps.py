"""Where each entity looks (paper D.2, Fig. 13): an entity prompt's attention over the image tokens.

One extra sampling pass with the same seed and conditioning (so the same trajectory) records, in one chosen
transformer block at chosen steps, the attention probabilities from each entity prompt's text tokens to the image
tokens, averaged over the heads and over the prompt's tokens. It runs the regional mask densely, so an entity's
map is exactly zero outside its region: the mask forbids those keys and `exp(-inf)` is 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .conditioning import Conditioning
from .entity_tokens import entity_lengths
from .generate import EligenPipeline
from .layout import Layout
from .regions import PATCH

if TYPE_CHECKING:
    from collections.abc import Callable

    from diffusers.models.transformers.transformer_flux import FluxAttention

    from .sampler import Fuse, StepCallback

Stream = Literal["dual", "single"]
MIN_CELL = 128  # px: small images are enlarged in the grid so the cells stay visible


@dataclass(frozen=True)
class Block:
    """A transformer block: `dual` (FLUX's double-stream blocks) or `single`, and its index (negative from the end)."""

    stream: Stream = "dual"
    index: int = -1

    @classmethod
    def parse(cls, spec: str) -> Block:
        """`dual:-1`, `single:3`, ... (the default, `dual:-1`, is the last dual-stream block)."""
        stream, _, index = spec.partition(":")
        if stream not in ("dual", "single") or not index.lstrip("-").isdigit():
            raise ValueError(f"expected a block as dual:N or single:N (N an index, negative from the end), "
                             f"got {spec!r}")
        return cls(stream, int(index))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.stream}:{self.index}"


@dataclass(frozen=True)
class AttentionMaps:
    """Per entity and chosen step, its prompt's mean attention on each image token, on the token grid."""

    block: Block
    steps: list[int]  # 1-based sampling steps, in order
    maps: np.ndarray  # (k entities, len(steps), grid_h, grid_w) float32; each value in [0, 1]


def default_steps(total: int) -> list[int]:
    """A few steps spread over the run: a quarter, half, three quarters and the last."""
    return sorted({max(1, round(total * f)) for f in (0.25, 0.5, 0.75, 1.0)})


def block_attention(transformer: torch.nn.Module, block: Block) -> FluxAttention:
    """The attention layer of the chosen block."""
    blocks = transformer.transformer_blocks if block.stream == "dual" else transformer.single_transformer_blocks
    if not -len(blocks) <= block.index < len(blocks):
        raise ValueError(f"expected a {block.stream} block index from {-len(blocks)} to {len(blocks) - 1}, "
                         f"got {block.index}")
    return blocks[block.index].attn


class _Recorder:
    """An attention processor that runs the layer's own processor unchanged and, at the first call of each chosen
    step (the positive CFG branch: the sampler runs it first), records the entity prompts' attention to the image."""

    def __init__(self, inner: object, groups: list[slice], n_text: int, steps: Sequence[int],
                 joint_qkv: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.inner, self.groups, self.n_text, self.steps = inner, groups, n_text, set(steps)
        self.joint_qkv = joint_qkv
        self.step, self.calls = 1, 0  # the step now running, and calls of this layer within it
        self.records: dict[int, torch.Tensor] = {}  # step -> (k, n_image)

    def next_step(self) -> None:
        self.step, self.calls = self.step + 1, 0

    def __call__(
        self, attn: FluxAttention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ip_adapter: object = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.step in self.steps and self.calls == 0:
            query, key, _ = self.joint_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
            self.records[self.step] = self._entity_attention(query[0], key[0], attention_mask)
        self.calls += 1
        extra = {} if ip_adapter is None else {"ip_adapter": ip_adapter}  # an IP-Adapter's references, passed on
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **extra)

    def _entity_attention(self, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Softmax attention of each group's (n, H, D) queries over all keys, under the additive mask of the positive
        branch, kept on the image keys and averaged over heads and the group's tokens: (k, n_image)."""
        rows = []
        for group in self.groups:
            scores = torch.einsum("nhd,mhd->hnm", query[group].float(), key.float()) * query.shape[-1] ** -0.5
            if mask is not None:
                scores = scores + mask[0, 0, group].float()
            rows.append(scores.softmax(dim=-1)[..., self.n_text:].mean(dim=(0, 1)))
        return torch.stack(rows)


def entity_groups(pipe: EligenPipeline, layout: Layout, source: str = "<layout>") -> list[slice]:
    """Positions of each entity prompt's tokens in the text sequence `[entity_1 | ... | entity_k | global]`."""
    encode = pipe.prompt_encoder(pipe.max_sequence_length(layout, source))
    lengths = entity_lengths(encode, layout.entity_tokens, [e.prompt for e in layout.entities], source=source)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(np.cumsum([0, *lengths]))]


def unsupported_reason(pipe: EligenPipeline) -> str | None:
    """Why `pipe`'s model has no attention maps, or None when it has them (FLUX)."""
    if pipe.family.attention_qkv is not None:
        return None
    return f"attention maps are implemented for FLUX models, not yet for {pipe.family.defaults.name}"


def attention_maps(
    pipe: EligenPipeline, layout: Layout, positive: Conditioning, negative: Conditioning | None, seed: int,
    steps: Sequence[int], block: Block = Block(), on_step: StepCallback | None = None,
    fuse_positive: Fuse | None = None, fuse_negative: Fuse | None = None, source: str = "<layout>",
) -> AttentionMaps:
    """Re-run the sampling of `seed` (the conditioning `pipe.prepare` gave) and record, in `block` at `steps`
    (1-based), each entity prompt's attention over the image tokens."""
    if not layout.entities:
        raise ValueError("a layout without entities has no entity attention to show")
    wanted = sorted(set(steps))
    if not wanted or wanted[0] < 1 or wanted[-1] > layout.steps:
        raise ValueError(f"expected steps from 1 to {layout.steps}, got {list(steps)}")
    qkv = pipe.family.attention_qkv
    if qkv is None:
        raise ValueError(unsupported_reason(pipe))
    layer = block_attention(pipe.transformer, block)
    recorder = _Recorder(layer.processor, entity_groups(pipe, layout, source), positive.prompt_embeds.shape[1], wanted,
                         qkv)

    def step_done(done: int, total: int) -> None:
        recorder.next_step()
        if on_step is not None:
            on_step(done, total)

    layer.processor = recorder
    try:
        pipe.sample(layout, positive, negative, seed, step_done, fuse_positive, fuse_negative, attention="dense")
    finally:
        layer.processor = recorder.inner
    grid_h, grid_w = layout.height // (pipe.scale_factor * PATCH), layout.width // (pipe.scale_factor * PATCH)
    maps = torch.stack([recorder.records[s] for s in wanted], dim=1)  # (k, steps, n_image)
    return AttentionMaps(block, wanted, maps.reshape(len(layout.entities), len(wanted), grid_h, grid_w).cpu().numpy())


def _heat(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB from dark blue through red to yellow."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    dark, red, yellow = np.array([20, 20, 90.0]), np.array([220, 40, 30.0]), np.array([255, 235, 80.0])
    return np.where(v < 0.5, dark + (red - dark) * (v * 2), red + (yellow - red) * (v * 2 - 1))


def draw_attention_grid(image: Image.Image, layout: Layout, result: AttentionMaps) -> Image.Image:
    """One row per entity, one column per step: each map (scaled to its own maximum) over the image."""
    scale = max(1, -(-MIN_CELL // max(image.size)))
    width, height = image.width * scale, image.height * scale
    base = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.NEAREST), dtype=np.float32)
    font = ImageFont.load_default(size=12)
    label_w, head_h = 180, 18
    k, n_steps = result.maps.shape[:2]
    grid = Image.new("RGB", (label_w + n_steps * (width + 4), head_h + k * (height + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, step in enumerate(result.steps):
        draw.text((label_w + j * (width + 4), 2), f"step {step} ({result.block})", fill=(0, 0, 0), font=font)
    for i, entity in enumerate(layout.entities):
        draw.text((4, head_h + i * (height + 4) + 2), f"{i + 1}: {entity.prompt[:26]}", fill=(0, 0, 0), font=font)
        for j in range(n_steps):
            values = result.maps[i, j]
            peak = float(values.max())
            cells = values / peak if peak > 0 else values
            heat = Image.fromarray(np.uint8(np.round(cells * 255))).resize((width, height), Image.Resampling.NEAREST)
            alpha = 0.65
            blended = base * (1 - alpha) + _heat(np.asarray(heat, dtype=np.float32) / 255) * alpha
            grid.paste(Image.fromarray(blended.round().astype(np.uint8)),
                       (label_w + j * (width + 4), head_h + i * (height + 4)))
    return grid
