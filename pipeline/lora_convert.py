"""LoRA files rewritten for other tools: the reference's (DiffSynth's) FLUX key names -> the names ComfyUI maps.

ComfyUI's LoRA loader (comfy/lora.py, `model_lora_keys_unet`) maps, for FLUX, kohya names
(`lora_unet_double_blocks_0_img_attn_qkv`), its own BFL names (`diffusion_model.double_blocks.0.img_attn.qkv`)
and diffusers names (`transformer.transformer_blocks.0.attn.to_q`), but not the reference's own
(`blocks.0.attn.a_to_qkv`), the style of the released EliGen LoRA for FLUX.1-dev: such keys are skipped there.
Each reference layer is one BFL layer with the same rows (names.py), so the conversion renames keys and keeps
every tensor as it is: `diffusion_model.<BFL name>.lora_A.weight` / `.lora_B.weight` (and `.alpha` where the file
has one; without it ComfyUI applies B@A at scale 1, as the reference does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .families.flux.lora import detect_style
from .families.flux.names import DOUBLE_BLOCK_LINEARS, GLOBAL_LINEARS, SINGLE_BLOCK_LINEARS
from .lora import LoraError

_KEY = re.compile(r"^(?P<module>.+?)\.(?:(?P<factor>lora_A|lora_B)(?:\.default)?\.weight|alpha)$")
_BLOCK = re.compile(r"^(?P<kind>blocks|single_blocks)\.(?P<index>\d+)\.(?P<layer>.+)$")
_DOUBLE = {native: bfl for bfl, native, _ in DOUBLE_BLOCK_LINEARS}
_SINGLE = {native: bfl for bfl, native, _ in SINGLE_BLOCK_LINEARS}
_GLOBAL = {native: bfl for bfl, native, _ in GLOBAL_LINEARS}


def _bfl_module(native: str) -> str | None:
    """The BFL name of a reference layer name (`blocks.3.attn.a_to_qkv` -> `double_blocks.3.img_attn.qkv`)."""
    block = _BLOCK.match(native)
    if block is None:
        return _GLOBAL.get(native)
    table, prefix = (_DOUBLE, "double_blocks") if block["kind"] == "blocks" else (_SINGLE, "single_blocks")
    bfl = table.get(block["layer"])
    return None if bfl is None else f"{prefix}.{block['index']}.{bfl}"


def comfyui_flux_lora(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FLUX LoRA in the reference's key style with the key names ComfyUI's loader maps (tensors unchanged).

    Raises LoraError for a file in another style (ComfyUI reads kohya and diffusers files as they are) or with
    keys that are no reference FLUX layer, listing them.
    """
    style = detect_style(state_dict.keys())
    if style != "native":
        raise LoraError(f"expected a LoRA with the reference's key names (blocks.N.attn.a_to_qkv...), this one has "
                        f"{style} names, which ComfyUI's LoRA loader reads as they are: load the file directly")
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        match = _KEY.match(key)
        bfl = None if match is None else _bfl_module(match["module"])
        if bfl is None:
            unknown.append(key)
            continue
        suffix = "alpha" if match["factor"] is None else f"{match['factor']}.weight"
        out[f"diffusion_model.{bfl}.{suffix}"] = tensor
    if unknown:
        raise LoraError("keys that are no layer of a FLUX transformer in the reference's names", keys=unknown)
    return out
