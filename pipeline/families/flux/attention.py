"""FLUX attention layers that run the sparse forms of the regional mask (`attention_backends`): FlexAttention's
`BlockMask` and the `SplitMask`; a dense mask (or none) goes to diffusers' `FluxAttnProcessor` unchanged."""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor, _get_qkv_projections
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ...attention_backends import SHAPES_COMPILED, SplitMask, split_attention


def joint_qkv(
    attn: FluxAttention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (B, N, H, D) of the joint `[text | image]` sequence, as `FluxAttnProcessor`."""
    query, key, value = unrotated_qkv(attn, hidden_states, encoder_hidden_states)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query, key, value


def unrotated_qkv(
    attn: FluxAttention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`joint_qkv` before the rotary embedding (normalised queries and keys)."""
    query, key, value, text_query, text_key, text_value = _get_qkv_projections(
        attn, hidden_states, encoder_hidden_states)
    query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
    query, key = attn.norm_q(query), attn.norm_k(key)
    if attn.added_kv_proj_dim is not None:
        text_query, text_key, text_value = (t.unflatten(-1, (-1, attn.head_dim))
                                            for t in (text_query, text_key, text_value))
        query = torch.cat([attn.norm_added_q(text_query), query], dim=1)
        key = torch.cat([attn.norm_added_k(text_key), key], dim=1)
        value = torch.cat([text_value, value], dim=1)
    return query, key, value


class RegionalAttnProcessor(FluxAttnProcessor):
    """diffusers' `FluxAttnProcessor` that also runs a `BlockMask` (compiled FlexAttention) or a `SplitMask`.

    Any other mask (a tensor, None) goes to `FluxAttnProcessor` unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flex = torch.compile(flex_attention, dynamic=False)  # one compiled kernel per shape, shared by all blocks

    def __call__(
        self, attn: FluxAttention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | BlockMask | SplitMask | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(attention_mask, BlockMask | SplitMask):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value = joint_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        if isinstance(attention_mask, SplitMask):
            out = split_attention(query, key, value, attention_mask, self._attention_backend)
        else:
            out = self.flex_attention(query, key, value, attention_mask)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        return attn.to_out[1](attn.to_out[0](image.contiguous())), attn.to_add_out(text.contiguous())

    def flex_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: BlockMask
                       ) -> torch.Tensor:
        """Compiled FlexAttention of (B, N, H, D) tensors (one kernel per shape, up to SHAPES_COMPILED of them); a
        failed compilation says what to use instead."""
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        try:
            with torch._dynamo.config.patch(recompile_limit=SHAPES_COMPILED):
                return self.flex(q, k, v, block_mask=mask).transpose(1, 2)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            raise RuntimeError(f"FlexAttention could not be compiled for {query.device.type} ({exc.__class__.__name__}"
                               "); `attention: split` runs the same sparse mask without compiling") from exc


def use_regional_processor(transformer: FluxTransformer2DModel) -> None:
    """Give every attention layer a `RegionalAttnProcessor` (dense masks still run exactly as before). They are
    installed all at once, so the first layer tells (a check of microseconds, not a walk over every layer)."""
    first = next(m for m in transformer.modules() if isinstance(m, FluxAttention))
    if not isinstance(first.processor, RegionalAttnProcessor):
        transformer.set_attn_processor(RegionalAttnProcessor())
