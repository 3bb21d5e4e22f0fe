"""How the regional mask is run: dense, block-sparse (FlexAttention) or split into unmasked pieces.

The dense additive mask (`regional_attention`) gives the reference's result bit for bit, but it makes every
query meet every key and keeps attention off the kernels that take no mask (flash attention). The two sparse
forms compute only the allowed query/key pairs and equal the dense form within float tolerance (they sum in
another order):

* `flex`: a FlexAttention `BlockMask` (128 x 128 blocks; blocks with nothing allowed are skipped), run by
  `flex_attention` compiled once per shape (CUDA; on the CPU forward only, and it needs a C++ compiler);
* `split`: the rows grouped by the set of keys they may see (for EliGen: each prompt group, and the image tokens
  by the set of regions that cover them), each group one unmasked attention call over exactly its keys, through
  diffusers' attention dispatch (so a backend that takes no mask, such as flash attention, runs it). On the CPU
  the rows that see the largest group's keys (the global prompt and all image tokens) attend to those in one
  call, and each group adds only its other keys (its entities' prompts), merged by log-sum-exp.

diffusers' own flex backend accepts a `BlockMask` as `attention_mask` but calls `flex_attention` uncompiled (the
unfused fallback that materialises every score), so each family's regional attention processor (FLUX:
`families/flux/attention.py`) calls a compiled one itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

Attention = Literal["auto", "dense", "flex", "split"]
Form = Literal["dense", "flex", "split"]  # what `auto` resolves to
# `auto` runs `split` from this many joint tokens (text + image) on; below it fixed per-call costs make the one dense
# call as fast or faster (measured on the CPU, docs/performance.md "Choosing the form")
AUTO_SPLIT_MIN_TOKENS = 1024
SHAPES_COMPILED = 64  # FlexAttention kernels compiled per process (torch's default of 8 then falls back to eager)
Index = slice | torch.Tensor  # token positions: a contiguous run, or a gather


@dataclass(frozen=True)
class Pieces:
    """One batch element of a SplitMask. Each row sees exactly the keys of its piece, or, for rows of the `core`
    run, the core's keys plus those of its piece (`merge`), combined by log-sum-exp."""

    core: tuple[slice, Index] | None  # (rows, keys): a run of rows that all see these keys, attended in one call
    pieces: tuple[tuple[Index, Index, bool], ...]  # (rows, keys, merge into the core's result)


@dataclass(frozen=True)
class SplitMask:
    """A mask as groups of rows that see the same keys, one `Pieces` per batch element."""

    elements: tuple[Pieces, ...]


def _index(positions: torch.Tensor) -> Index:
    """Sorted positions as a slice when they are one contiguous run (a view instead of a copy)."""
    first, last = int(positions[0]), int(positions[-1])
    return slice(first, last + 1) if last - first + 1 == len(positions) else positions


def _row_patterns(allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of an (N, N) bool mask in order of first appearance, and each row's pattern index: rows
    packed to bytes and grouped by a dict (about 40x faster than `torch.unique(dim=0)` at N = 8704)."""
    packed = np.packbits(allowed.cpu().numpy(), axis=1)
    first: dict[bytes, int] = {}
    group = np.fromiter((first.setdefault(row.tobytes(), len(first)) for row in packed), np.int64, len(packed))
    representatives = np.unique(group, return_index=True)[1]
    return allowed[torch.from_numpy(representatives).to(allowed.device)], torch.from_numpy(group).to(allowed.device)


def _pieces(allowed: torch.Tensor, with_core: bool) -> Pieces:
    """Group the rows of one (N, N) bool mask by the keys they see; with a core, the largest group's keys are
    attended once for every row that sees them all, and the groups keep only their other keys."""
    patterns, group = _row_patterns(allowed)
    rows = [torch.nonzero(group == g)[:, 0] for g in range(len(patterns))]
    in_core = torch.zeros(len(patterns), dtype=torch.bool, device=allowed.device)
    core = None
    if with_core and len(patterns) > 1:
        core_keys = patterns[max(range(len(patterns)), key=lambda g: len(rows[g]))]
        covers = (patterns | ~core_keys).all(dim=1)  # groups that see every core key
        core_rows = _index(torch.nonzero(covers[group])[:, 0])
        if isinstance(core_rows, slice):
            core, in_core = (core_rows, _index(torch.nonzero(core_keys)[:, 0])), covers
            patterns = torch.where(covers[:, None], patterns & ~core_keys, patterns)
    return Pieces(core, tuple((_index(rows[g]), _index(torch.nonzero(patterns[g])[:, 0]), bool(in_core[g]))
                              for g in range(len(patterns)) if patterns[g].any()))


def split_mask(allowed: torch.Tensor, core: bool | None = None) -> SplitMask:
    """(B, N, N) bool -> SplitMask. A core (one large call, the rest merged) needs the log-sum-exp that torch's
    CPU attention kernel returns: by default there is one on the CPU only, elsewhere each group is its own call."""
    core = allowed.device.type == "cpu" if core is None else core
    return SplitMask(tuple(_pieces(a, core) for a in allowed))


def _take(tokens: torch.Tensor, index: Index) -> torch.Tensor:
    """Rows of (N, H, D) `tokens`: a view for a slice, one contiguous copy for a gather."""
    return tokens[index] if isinstance(index, slice) else tokens.index_select(0, index)


def _attention_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, H, D) attention and its (n, H) float32 log-sum-exp, from torch's CPU flash-attention kernel."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query.transpose(0, 1)[None], key.transpose(0, 1)[None], value.transpose(0, 1)[None])
    return out[0].transpose(0, 1), lse[0].transpose(0, 1)


def _put(out: torch.Tensor, rows: Index, values: torch.Tensor) -> None:
    if isinstance(rows, slice):
        out[rows] = values
    else:
        out.index_copy_(0, rows, values)


def _from(index: Index, start: int) -> Index:
    """Positions counted from `start` instead of 0."""
    return slice(index.start - start, index.stop - start) if isinstance(index, slice) else index - start


def split_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: SplitMask, backend: str | None = None
) -> torch.Tensor:
    """Attention of (B, N, H, D) tensors under a SplitMask: unmasked calls over each group's keys only.

    A core row with keys of its own combines its two results `o1`, `o2` by their log-sum-exps `l1`, `l2`:
    `o = o1 exp(l1 - l) + o2 exp(l2 - l)` with `l = log(exp(l1) + exp(l2))`.
    """
    out = torch.empty_like(query)
    for b, element in enumerate(mask.elements):
        q, k, v = query[b], key[b], value[b]
        if element.core is not None:
            core_rows, core_keys = element.core
            out[b, core_rows], core_lse = _attention_lse(q[core_rows], _take(k, core_keys), _take(v, core_keys))
        for rows, keys, merge in element.pieces:
            q_rows, k_keys, v_keys = _take(q, rows), _take(k, keys), _take(v, keys)
            if merge:
                o2, l2 = _attention_lse(q_rows, k_keys, v_keys)
                l1 = _take(core_lse, _from(rows, core_rows.start))
                total = torch.logaddexp(l1, l2)
                result = _take(out[b], rows) * (l1 - total).exp()[..., None] + o2 * (l2 - total).exp()[..., None]
            else:
                result = dispatch_attention_fn(q_rows[None], k_keys[None], v_keys[None], backend=backend)[0]
            _put(out[b], rows, result.to(out.dtype))
    return out


def block_mask(allowed: torch.Tensor) -> BlockMask:
    """(B, N, N) bool -> a FlexAttention BlockMask of the same mask."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return allowed[b, q, kv]

    batch, n, _ = allowed.shape
    return create_block_mask(mask_mod, batch, None, n, n, device=allowed.device)


def chosen_form(attention: Attention, tokens: int, device: torch.device) -> Form:
    """The form `attention` runs as for a joint sequence of `tokens` on `device`: `auto` is `split` on the CPU and
    CUDA from AUTO_SPLIT_MIN_TOKENS tokens on (it agrees with `dense` within float tolerance and never compiles),
    else `dense`; the other values are themselves."""
    if attention != "auto":
        return attention
    return "split" if device.type in ("cpu", "cuda") and tokens >= AUTO_SPLIT_MIN_TOKENS else "dense"


def attention_form(mask: torch.Tensor | None, attention: Attention) -> torch.Tensor | BlockMask | SplitMask | None:
    """The additive (B, 1, N, N) mask in the form `attention` runs (None, plain FLUX, stays None)."""
    if mask is None:
        return None
    form = chosen_form(attention, mask.shape[-1], mask.device)
    if form == "dense":
        return mask
    allowed = mask[:, 0] == 0
    return block_mask(allowed) if form == "flex" else split_mask(allowed)
