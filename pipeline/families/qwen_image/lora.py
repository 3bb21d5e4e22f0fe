"""LoRA files for Qwen-Image transformers (diffusers `QwenImageTransformer2DModel`): keys to `LoraDelta`s.

The reference's modules carry diffusers' names exactly (its `QwenImageDiT` loads diffusers weights as they are)
and no layer is fused, so the mapping is the identity on `transformer_blocks.{i}.<path>`. Read:

* the released EliGen LoRAs' style, the reference's export: `transformer_blocks.{i}.attn.to_q.lora_A.default.weight`
  / `.lora_B.default.weight` (also without `.default`), no alpha keys, applied at scale 1;
* with an optional `transformer.` (diffusers / peft, our own training's `lora.safetensors`, whose alpha lives in
  the adapter-metadata header) or `diffusion_model.` (ComfyUI) prefix, `lora_down` / `lora_up` for A / B, and an
  optional `<module>.alpha` (scale alpha / rank, as the reference's loader applies it).

Any key that does not name a Linear of this transformer with both factors is an error listing every such key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ...lora import LoraDelta, LoraError
from ...lora_files import peft_alphas, read_lora_file

_KEY = re.compile(r"^(?:transformer\.|diffusion_model\.)?(?P<module>.+?)\."
                  r"(?:(?P<factor>lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight|alpha)$")
_DOWN = {"lora_A", "lora_down"}


def lora_deltas(state_dict: Mapping[str, torch.Tensor], linears: Mapping[str, tuple[int, int]],
                source: str | Path | None = None) -> list[LoraDelta]:
    """Deltas on the transformer's Linears `linears` (name -> (in, out)) of a LoRA state dict (from `source`)."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    unmatched: list[str] = []
    for key, tensor in state_dict.items():
        match = _KEY.match(key)
        if match is None or match["module"] not in linears:
            unmatched.append(key)
            continue
        kind = "alpha" if match["factor"] is None else "down" if match["factor"] in _DOWN else "up"
        factors.setdefault(match["module"], {})[kind] = tensor
    unmatched += [f"{module}: {'lora_B' if 'down' in parts else 'lora_A'} missing"
                  for module, parts in factors.items() if not {"down", "up"} <= set(parts)]
    if unmatched:
        raise LoraError("LoRA keys that match no Linear of this Qwen-Image transformer (expected "
                        "'transformer_blocks.N.<module>.lora_A[.default].weight' / lora_B)", keys=unmatched,
                        source=source)
    deltas = []
    for module, parts in factors.items():
        down, up = parts["down"], parts["up"]
        rank = down.shape[0]
        scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
        deltas.append(LoraDelta(module, down, up, scale))
    return deltas


def linear_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every Linear of the transformer, by module name."""
    return {name: (m.in_features, m.out_features) for name, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear)}


def load_lora(path: str | Path, transformer: torch.nn.Module) -> list[LoraDelta]:
    """Read a LoRA file as deltas on this transformer (errors name the file); the alphas a diffusers-saved file
    keeps in its header apply."""
    state_dict, metadata = read_lora_file(path)
    state_dict.update(peft_alphas(state_dict, metadata, path))
    return lora_deltas(state_dict, linear_shapes(transformer), source=path)
