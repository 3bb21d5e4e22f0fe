"""One FLUX transformer pass: diffusers' `FluxTransformer2DModel` with the regional mask in every block."""

from __future__ import annotations

import torch

from ...conditioning import Conditioning
from .attention import use_regional_processor


class RotaryCache(torch.nn.Module):
    """FLUX's rotary tables computed once per set of position ids, not in every forward: the ids are the same at
    every step of a generation (one set per CFG branch; diffusers recomputes them inside each transformer call).

    Holds no weights (the state dict is unchanged); keeps the tables of the last KEPT sets of ids, those made in
    inference mode apart from those made for training (which autograd may save).
    """

    KEPT = 4

    def __init__(self, pos_embed: torch.nn.Module) -> None:
        super().__init__()
        self.pos_embed = pos_embed
        self._tables: list[tuple[torch.Tensor, bool, tuple[torch.Tensor, torch.Tensor]]] = []

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inference = torch.is_inference_mode_enabled()
        for kept, mode, tables in self._tables:
            if (mode == inference and kept.shape == ids.shape and kept.dtype == ids.dtype
                    and kept.device == ids.device and torch.equal(kept, ids)):
                return tables
        tables = self.pos_embed(ids)
        self._tables = [(ids.clone(), inference, tables), *self._tables[: self.KEPT - 1]]
        return tables


def use_rotary_cache(transformer: torch.nn.Module) -> None:
    """Give a FluxTransformer2DModel a `RotaryCache` (once)."""
    if not isinstance(transformer.pos_embed, RotaryCache):
        transformer.pos_embed = RotaryCache(transformer.pos_embed)


def image_ids(latent_height: int, latent_width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rotary position ids (n, 3) of the image tokens: (0, row, column)."""
    ids = torch.zeros(latent_height // 2, latent_width // 2, 3)
    ids[..., 1] = torch.arange(latent_height // 2)[:, None]
    ids[..., 2] = torch.arange(latent_width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def predict(
    transformer: torch.nn.Module, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
    img_ids: torch.Tensor, guidance: torch.Tensor | None,
) -> torch.Tensor:
    """One transformer pass: the velocity for tokens `x` at `timestep` (0..1000) under `cond`.

    `cond.attention_mask` may be in any form of `attention_backends` (a dense additive mask, a BlockMask, a
    SplitMask); `x` of batch 1 is repeated to the conditioning's batch.
    """
    mask = cond.attention_mask
    if mask is not None and not isinstance(mask, torch.Tensor):
        use_regional_processor(transformer)
    x = x.expand(cond.prompt_embeds.shape[0], -1, -1)
    return transformer(
        hidden_states=x,
        timestep=timestep.expand(x.shape[0]).to(x.dtype) / 1000,
        guidance=guidance.expand(x.shape[0]) if guidance is not None else None,
        pooled_projections=cond.pooled,
        encoder_hidden_states=cond.prompt_embeds,
        txt_ids=cond.text_ids,
        img_ids=img_ids,
        joint_attention_kwargs=attention_kwargs(mask, cond),
        return_dict=False,
    )[0]


def attention_kwargs(mask: object, cond: Conditioning) -> dict[str, object] | None:
    """What every attention layer of the pass is given: the regional mask and an IP-Adapter's references (the
    layers with an adapter's processor read them, `ip_adapter.py`)."""
    kwargs: dict[str, object] = {}
    if mask is not None:
        kwargs["attention_mask"] = mask
    if cond.ip_adapter is not None:
        kwargs["ip_adapter"] = cond.ip_adapter
    return kwargs or None
