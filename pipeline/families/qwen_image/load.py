"""Loading Qwen-Image through diffusers' `QwenImagePipeline`: config check, device check, quantised loading."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import QwenImagePipeline

from ...devices import Offload, Quantize, place, quantization
from ...model_info import ModelLoadError, model_folder
from ..diffusers_family import transformer_config

FULL_SIZE_LAYERS = 60  # Qwen-Image: 60 dual-stream blocks of width 3072, about 20B parameters


def check_device(model: str, config: dict[str, Any], device: torch.device, explicit: bool) -> None:
    """Refuse to run a full-size model on the CPU unless the CPU was asked for by name."""
    if device.type != "cpu" or explicit or config.get("num_layers", 0) < FULL_SIZE_LAYERS:
        return
    width = config["num_attention_heads"] * config["attention_head_dim"]
    billions = 20 * (width / 3072) ** 2 * config["num_layers"] / FULL_SIZE_LAYERS
    raise ModelLoadError(
        f"{model} is a full-size model (about {billions:.0f}B parameters, with a 7B text encoder) and no CUDA or "
        f"MPS device was found; on the CPU it needs about {billions * 4 + 30:.0f} GB of memory in fp32 and minutes "
        f"per step. Pass --device cpu to run it there anyway"
    )


def load_qwen_image(model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none",
                    quantize: Quantize = "none", explicit_device: bool = True) -> QwenImagePipeline:
    """A QwenImagePipeline from a diffusers folder or hub id, placed on `device` or offloaded to it."""
    model = model_folder(model)
    check_device(model, transformer_config(model, "Qwen-Image"), device, explicit_device)
    try:
        pipe = QwenImagePipeline.from_pretrained(model, dtype=dtype, quantization_config=quantization(quantize, dtype))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the Qwen-Image model {model!r}: {exc}") from exc
    return place(pipe, device, offload)
