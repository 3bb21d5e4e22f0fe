"""One Qwen-Image transformer pass: diffusers' `QwenImageTransformer2DModel` with the EliGen mask in every block.

Two things diffusers' model does not do are added by an attention processor, so the model stays a stock diffusers
model (its forward, gradient checkpointing, LoRA scale and hooks all run as they are):

* `QwenDoubleStreamAttnProcessor2_0` refuses an external `attention_mask` (it builds only a key-padding mask from
  `encoder_hidden_states_mask`); `RegionalQwenAttnProcessor` takes the (B, 1, N, N) additive EliGen mask, or its
  `split` form (`attention_backends.SplitMask`);
* the forward builds one text rotary table running over the whole text; EliGen needs every prompt group's
  positions to restart at the global prompt's offset. The positions come from `Conditioning.text_ids` (see
  `encode.py`) and reach the processor as a rotary table through `attention_kwargs`.

Without a mask, a conditioning of one prompt group goes through diffusers' own processor call for call (the
same result as `QwenImagePipeline`, bit for bit).
"""

from __future__ import annotations

import torch
from diffusers import QwenImageTransformer2DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_qwenimage import (
    QwenDoubleStreamAttnProcessor2_0,
    apply_rotary_emb_qwen,
)
from torch.nn.attention.flex_attention import BlockMask

from ...attention_backends import SplitMask, split_attention
from ...conditioning import Conditioning


def image_shapes(latent_height: int, latent_width: int, batch: int) -> list[list[tuple[int, int, int]]]:
    """diffusers' `img_shapes`: one (frame, token rows, token columns) per sample."""
    return [[(1, latent_height // 2, latent_width // 2)]] * batch


def text_rotary(transformer: QwenImageTransformer2DModel, text_ids: torch.Tensor, latent_height: int,
                latent_width: int) -> torch.Tensor:
    """Complex rotary factors of text positions `text_ids` ((L,) or (B, L)): (L, head_dim/2) or (B, L, head_dim/2).

    Position p gets row p of the model's own text table, which starts at the global prompt's offset
    max(rows/2, columns/2) of the token grid, so a group of length n gets exactly `pos_embed(..., n)`'s text part.
    """
    shape = [(1, latent_height // 2, latent_width // 2)]
    table = transformer.pos_embed(shape, device=text_ids.device, max_txt_seq_len=int(text_ids.max()) + 1)[1]
    return table[text_ids]


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """diffusers' complex rotary on (B, S, H, D) `x`, with one table (S, D/2) or one per sample (B, S, D/2)."""
    if freqs.ndim == 2:
        return apply_rotary_emb_qwen(x, freqs, use_real=False)
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs.unsqueeze(2)
    return torch.view_as_real(rotated).flatten(3).type_as(x)


class RegionalQwenAttnProcessor(QwenDoubleStreamAttnProcessor2_0):
    """diffusers' Qwen-Image joint attention that also takes the EliGen mask and per-group text rotary factors.

    Without `attention_mask` and `text_rotary` it is diffusers' processor, call for call.
    """

    def __call__(
        self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | SplitMask | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None, text_rotary: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is None and text_rotary is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, None,
                                    image_rotary_emb)
        if encoder_hidden_states_mask is not None:
            raise ValueError("the regional path runs unpadded prompt groups: pass no encoder_hidden_states_mask")
        head_dim = attn.inner_dim // attn.heads
        image = [f(hidden_states).unflatten(-1, (-1, head_dim)) for f in (attn.to_q, attn.to_k, attn.to_v)]
        text = [f(encoder_hidden_states).unflatten(-1, (-1, head_dim))
                for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]
        image[0], image[1] = attn.norm_q(image[0]), attn.norm_k(image[1])
        text[0], text[1] = attn.norm_added_q(text[0]), attn.norm_added_k(text[1])
        if image_rotary_emb is not None:
            image_freqs, text_freqs = image_rotary_emb
            text_freqs = text_freqs if text_rotary is None else text_rotary
            for i in (0, 1):
                image[i] = apply_rotary_emb_qwen(image[i], image_freqs, use_real=False)
                text[i] = _rotate(text[i], text_freqs)
        query, key, value = (torch.cat([t, m], dim=1) for t, m in zip(text, image, strict=True))
        if isinstance(attention_mask, SplitMask):
            out = split_attention(query, key, value, attention_mask, self._attention_backend)
        else:
            out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                        backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        text_out, image_out = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        image_out = attn.to_out[0](image_out.contiguous())
        if len(attn.to_out) > 1:
            image_out = attn.to_out[1](image_out)
        return image_out, attn.to_add_out(text_out.contiguous())


def use_regional_processor(transformer: QwenImageTransformer2DModel) -> None:
    """Give every attention layer a `RegionalQwenAttnProcessor` (once; plain calls run exactly as before)."""
    if not isinstance(transformer.transformer_blocks[0].attn.processor, RegionalQwenAttnProcessor):
        transformer.set_attn_processor(RegionalQwenAttnProcessor())


def predict(transformer: torch.nn.Module, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
            latent_height: int, latent_width: int) -> torch.Tensor:
    """One transformer pass: the velocity (B, n_image, 64) for packed tokens `x` at `timestep` (0..1000).

    `x` of batch 1 is repeated to the conditioning's batch. A conditioning without a mask is one prompt group
    (`conditioning.conditioning` and `batched` add a mask whenever there are several), so its text positions
    are diffusers' own and the call is diffusers' unchanged.
    """
    mask = cond.attention_mask
    if isinstance(mask, BlockMask):
        raise ValueError("attention: flex is not available for Qwen-Image; use dense or split")
    batch = cond.prompt_embeds.shape[0]
    x = x.expand(batch, -1, -1)
    kwargs = None
    if mask is not None:
        model = transformer.module if hasattr(transformer, "module") else transformer  # DDP/accelerate wrapper
        use_regional_processor(model)
        kwargs = {"attention_mask": mask,
                  "text_rotary": text_rotary(model, cond.text_ids.to(x.device), latent_height, latent_width)}
    return transformer(
        hidden_states=x,
        timestep=timestep.expand(batch).to(x.dtype) / 1000,
        encoder_hidden_states=cond.prompt_embeds,
        encoder_hidden_states_mask=None,
        img_shapes=image_shapes(latent_height, latent_width, batch),
        attention_kwargs=kwargs,
        return_dict=False,
    )[0]
