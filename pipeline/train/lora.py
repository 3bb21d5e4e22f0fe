"""The trained LoRA (paper §3.4): peft adapters on the linear layers of every block, and its files.

FLUX adapts every Linear of every dual- and single-stream block (the paper); Qwen-Image the reference recipe's
modules (`FamilyDefaults.lora_targets`). `OUT_DIR/lora.safetensors` is written by diffusers' own LoRA writer (the
same for every family): diffusers/peft keys (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`) with the
adapter config, alpha included, in the `lora_adapter_metadata` header, which diffusers' `load_lora_weights` and
both families' LoRA readers read. Exports: kohya/BFL for FLUX, following the module table of
`families/flux/lora.py` (a fused source layer, img/txt qkv or single-block linear1, gets the stacked A factors and
a block-diagonal B, so every part keeps exactly its own `alpha / rank * B @ A`); for Qwen-Image the released EliGen
LoRAs' style (`transformer_blocks.0.attn.to_q.lora_A.default.weight`, no alpha: B carries `alpha / rank`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..families.flux.names import DOUBLE_BLOCK_LINEARS, SINGLE_BLOCK_LINEARS, kohya_stem
from ..lora import LoraError
from ..outputs import write_atomic

BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")
PREFIX = "transformer."  # diffusers' key prefix for the transformer's LoRA layers


def block_linears(transformer: torch.nn.Module, targets: Sequence[str] | None = None) -> list[str]:
    """The Linears inside the blocks: all of them (the attention projections before and after attention, the
    feed-forward layers and the adaptive-LayerNorm linears), or those at `targets` paths within a block."""
    names = [name for name, module in transformer.named_modules()
             if isinstance(module, torch.nn.Linear) and name.startswith(BLOCKS)]
    if targets is None:
        return names
    return [name for name in names if name.split(".", 2)[2] in targets]


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, targets: Sequence[str] | None = None) -> None:
    """Attach a trainable peft LoRA (A random, B zero: the model is unchanged at step 0) on `block_linears`; the rest
    stays frozen."""
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=block_linears(transformer, targets)))
    for parameter in transformer.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()  # fp32 factors under any weight dtype


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors by module, `<module>.lora_A.weight` / `.lora_B.weight` (no adapter name, no prefix)."""
    return get_peft_model_state_dict(transformer)


def save_lora(path: Path, transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    """Write the LoRA in diffusers/peft style with its adapter config (rank, alpha) in the header, atomically."""
    layers = {k: v.detach().to("cpu", dtype) for k, v in lora_state_dict(transformer).items()}
    metadata = transformer.peft_config["default"].to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        FluxPipeline.save_lora_weights(tmp, transformer_lora_layers=layers, weight_name=path.name,
                                       transformer_lora_adapter_metadata=metadata)
        os.replace(Path(tmp) / path.name, path)


def load_lora_into(transformer: torch.nn.Module, path: Path) -> None:
    """Load a LoRA written by `save_lora` into the transformer's peft adapter (to resume a run)."""
    state = {k.removeprefix(PREFIX): v for k, v in load_file(path).items()}
    with torch.no_grad():
        result = set_peft_model_state_dict(transformer, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in lora_state_dict(transformer) if k not in state]
    if unexpected or missing:
        raise LoraError("the checkpoint's LoRA does not fit this run's adapter", keys=unexpected + missing,
                        source=path)


def kohya_state_dict(
    lora: Mapping[str, torch.Tensor], alpha: float, config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The LoRA with kohya/BFL keys (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.lora_up.weight`,
    `.alpha`): parts of a fused layer stacked, `alpha` times the number of parts so the scale per part is unchanged."""
    result: dict[str, torch.Tensor] = {}
    blocks = (("transformer_blocks", "double_blocks", config["num_layers"], DOUBLE_BLOCK_LINEARS),
              ("single_transformer_blocks", "single_blocks", config["num_single_layers"], SINGLE_BLOCK_LINEARS))
    for ours, theirs, count, layers in blocks:
        for i in range(count):
            for bfl, _, parts in layers:
                key = f"lora_unet_{theirs}_{i}_{kohya_stem(bfl)}"
                names = [f"{ours}.{i}.{part}" for part in parts]
                result[f"{key}.lora_down.weight"] = torch.cat([lora[f"{n}.lora_A.weight"] for n in names])
                result[f"{key}.lora_up.weight"] = torch.block_diag(*[lora[f"{n}.lora_B.weight"] for n in names])
                result[f"{key}.alpha"] = torch.tensor(float(alpha * len(parts)))
    return result


def save_kohya(path: Path, transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    """Write the kohya/BFL-style copy of the LoRA, atomically."""
    config = transformer.peft_config["default"]
    lora = {k: v.detach().to("cpu", torch.float32) for k, v in lora_state_dict(transformer).items()}
    tensors = {k: v if k.endswith(".alpha") else v.to(dtype).contiguous()
               for k, v in kohya_state_dict(lora, config.lora_alpha, transformer.config).items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def save_diffsynth(path: Path, transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    """Write the Qwen-Image LoRA in the released EliGen LoRAs' key style, the reference's export (no alpha keys,
    applied at scale 1: B is multiplied by alpha / rank), atomically."""
    config = transformer.peft_config["default"]
    scale = config.lora_alpha / config.r
    tensors = {}
    for key, value in lora_state_dict(transformer).items():
        value = value.detach().to("cpu", torch.float32)
        module, factor = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        tensors[f"{module}.{factor}.default.weight"] = (value * scale if factor == "lora_B" else value).to(dtype)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


EXPORTS: dict[str, Callable[[Path, torch.nn.Module, torch.dtype], None]] = {"kohya": save_kohya,
                                                                          "diffsynth": save_diffsynth}
