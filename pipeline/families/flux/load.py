"""Loading FLUX components through diffusers: config checks, single-file transformers, quantised loading."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FluxPipeline

from ...devices import Offload, Quantize, place, quantization
from ...model_info import ModelLoadError, model_folder
from ..diffusers_family import transformer_config

FULL_SIZE_LAYERS = 19  # FLUX.1-dev/schnell: 19 double-stream blocks, 12B parameters


def check_device(model: str, config: dict[str, Any], device: torch.device, explicit: bool) -> None:
    """Refuse to run a full-size model on the CPU unless the CPU was asked for by name."""
    if device.type != "cpu" or explicit or config.get("num_layers", 0) < FULL_SIZE_LAYERS:
        return
    width = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = 2 * config["num_layers"] + config["num_single_layers"]
    billions = 12 * (width / 3072) ** 2 * blocks / (2 * 19 + 38)
    raise ModelLoadError(
        f"{model} is a full-size model (about {billions:.0f}B parameters) and no CUDA or MPS device was found; "
        f"on the CPU it needs about {billions * 4:.0f} GB of memory in fp32 and minutes per step. "
        f"Pass --device cpu to run it there anyway"
    )


def load_flux(
    model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none", quantize: Quantize = "none",
    explicit_device: bool = True, transformer: str | None = None,
) -> FluxPipeline:
    """A FluxPipeline from a diffusers folder, built-in name or hub id, placed on `device` or offloaded to it.

    `transformer`, a single-file checkpoint (local or `repo-id/path/in/repo.safetensors`), replaces the model's own
    transformer; its config and every other component still come from `model`.
    """
    model = model_folder(model)
    config = transformer_config(model, "FLUX")
    check_device(model, config, device, explicit_device)
    components = {}
    if transformer is not None:
        from .single_file import load_single_file_transformer

        components["transformer"] = load_single_file_transformer(transformer, model, config, dtype, quantize)
    try:
        pipe = FluxPipeline.from_pretrained(
            model, dtype=dtype, quantization_config=None if components else quantization(quantize, dtype), **components
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the FLUX model {model!r}: {exc}") from exc
    return place(pipe, device, offload)
